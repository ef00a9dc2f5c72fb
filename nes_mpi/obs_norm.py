"""Running observation statistics (count, sum, sum of squares) in float64.

Each member accumulates its own sums during its rollout; the MPI layer gathers
them and adds them in member order, so the statistics, and hence every rank's
normalisation, are identical whatever the number of ranks.
"""
from __future__ import annotations

import numpy as np


class ObsNorm:
    def __init__(self, dim: int, clip: float = 5.0, enabled: bool = True, eps: float = 1e-2):
        self.dim = dim
        self.enabled = enabled
        self.clip = float(clip) if enabled else float("inf")  # disabled: the policy sees raw observations
        self.eps = eps
        self.count = 0
        self.sum = np.zeros(dim, dtype=np.float64)
        self.sumsq = np.zeros(dim, dtype=np.float64)

    def update(self, count: int, total: np.ndarray, total_sq: np.ndarray) -> None:
        self.count += int(count)
        self.sum += total
        self.sumsq += total_sq

    def mean_std(self) -> tuple[np.ndarray, np.ndarray]:
        """Float32 mean and std (std floored at eps; identity before any data)."""
        if not self.enabled or self.count == 0:
            return np.zeros(self.dim, np.float32), np.ones(self.dim, np.float32)
        mean = self.sum / self.count
        var = np.maximum(self.sumsq / self.count - mean * mean, self.eps**2)
        return mean.astype(np.float32), np.sqrt(var).astype(np.float32)

    def state_dict(self) -> dict:
        return {"count": np.int64(self.count), "sum": self.sum, "sumsq": self.sumsq}

    def load_state_dict(self, state: dict) -> None:
        if np.shape(state["sum"]) != (self.dim,):
            raise ValueError(f"observation statistics have shape {np.shape(state['sum'])}, expected ({self.dim},)")
        self.count = int(state["count"])
        self.sum = np.array(state["sum"], dtype=np.float64)
        self.sumsq = np.array(state["sumsq"], dtype=np.float64)
