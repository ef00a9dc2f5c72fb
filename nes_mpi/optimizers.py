"""Gradient-ascent optimizers with explicit, checkpointable state.

Each optimizer is a small object whose whole state is `state_dict()` (numpy
arrays and a step counter), so a checkpoint can restore it bit for bit.
All of them *ascend*: `step(theta, grad)` returns theta moved along +grad.
"""
from __future__ import annotations

import numpy as np


class Optimizer:
    name = "base"

    def __init__(self, dim: int, lr: float):
        self.dim = dim
        self.lr = float(lr)
        self.t = 0

    def step(self, theta: np.ndarray, grad: np.ndarray) -> np.ndarray:
        self.t += 1
        return (theta + self._update(grad)).astype(theta.dtype, copy=False)

    def _update(self, grad: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def state_dict(self) -> dict[str, np.ndarray]:
        return {"t": np.int64(self.t)}

    def load_state_dict(self, state: dict) -> None:
        self.t = int(state["t"])
        for key, value in state.items():
            if key != "t":
                current = getattr(self, key)
                if current.shape != np.shape(value):
                    raise ValueError(f"optimizer state '{key}' has shape {np.shape(value)}, expected {current.shape}")
                setattr(self, key, np.array(value, dtype=current.dtype))


class SGD(Optimizer):
    """SGD with momentum, as in the OpenAI ES starter: v <- m v + (1-m) g."""

    name = "sgd"

    def __init__(self, dim: int, lr: float, momentum: float = 0.9):
        super().__init__(dim, lr)
        self.momentum = float(momentum)
        self.v = np.zeros(dim, dtype=np.float32)

    def _update(self, grad):
        self.v = self.momentum * self.v + (1.0 - self.momentum) * grad.astype(np.float32)
        return self.lr * self.v

    def state_dict(self):
        return {**super().state_dict(), "v": self.v}


class Adam(Optimizer):
    """Adam (Kingma & Ba 2015) with bias correction."""

    name = "adam"

    def __init__(self, dim: int, lr: float, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8):
        super().__init__(dim, lr)
        self.beta1, self.beta2, self.eps = float(beta1), float(beta2), float(eps)
        self.m = np.zeros(dim, dtype=np.float32)
        self.v = np.zeros(dim, dtype=np.float32)

    def _update(self, grad):
        g = grad.astype(np.float32)
        t = self.t
        self.m = self.beta1 * self.m + (1.0 - self.beta1) * g
        self.v = self.beta2 * self.v + (1.0 - self.beta2) * (g * g)
        a = self.lr * np.sqrt(1.0 - self.beta2**t) / (1.0 - self.beta1**t)
        return (a * self.m / (np.sqrt(self.v) + self.eps)).astype(np.float32)

    def state_dict(self):
        return {**super().state_dict(), "m": self.m, "v": self.v}


class ClipUp(Optimizer):
    """ClipUp (Toklu et al. 2020): normalised gradient, momentum, and a speed cap.

    The step length is set by `lr` and bounded by `max_speed` regardless of the
    gradient's scale, which makes one learning rate work across tasks.
    """

    name = "clipup"

    def __init__(self, dim: int, lr: float, momentum: float = 0.9, max_speed: float | None = None):
        super().__init__(dim, lr)
        self.momentum = float(momentum)
        self.max_speed = float(max_speed) if max_speed else 2.0 * self.lr
        self.v = np.zeros(dim, dtype=np.float32)

    def _update(self, grad):
        g = grad.astype(np.float32)
        norm = float(np.linalg.norm(g))
        step = self.lr * g / norm if norm > 0 else np.zeros_like(g)
        self.v = self.momentum * self.v + step
        speed = float(np.linalg.norm(self.v))
        if speed > self.max_speed:
            self.v = self.v * np.float32(self.max_speed / speed)
        return self.v

    def state_dict(self):
        return {**super().state_dict(), "v": self.v}


OPTIMIZERS = {cls.name: cls for cls in (Adam, SGD, ClipUp)}


def make_optimizer(name: str, dim: int, lr: float, momentum: float = 0.9) -> Optimizer:
    if name == "adam":
        return Adam(dim, lr)
    if name == "sgd":
        return SGD(dim, lr, momentum)
    if name == "clipup":
        return ClipUp(dim, lr, momentum)
    raise ValueError(f"unknown optimizer {name!r} (choose from {', '.join(OPTIMIZERS)})")
