"""PGPE (Sehnke et al., Neural Networks 2010) with symmetric sampling, as EvoTorch runs it with ClipUp.

Members mean +- eps_k, eps_k = sigma * s_k (per-parameter sigma), u the shaped fitnesses
(centered ranks by default), n the number of directions:

    grad_mean  = 1/n sum_k (u_k+ - u_k-) / 2 * eps_k
    grad_sigma = 1/n sum_k (u_k+ + u_k-) / 2 * (eps_k^2 - sigma^2) / sigma

The mean follows grad_mean through the optimizer (ClipUp by default); sigma takes the
plain step sigma + sigma_lr * grad_sigma, limited to a relative change of
sigma_max_change per generation (0.1 and 0.2 by default, EvoTorch's recommendation).
State: mean, sigma (per parameter) and the optimizer's state.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..dims import Whole
from ..shaping import centered_ranks
from .base import GaussianStrategy, Shaping, State, UpdateInfo, step_mean

DEFAULT_SIGMA_LR = 0.1


@dataclass(frozen=True)
class PGPE(GaussianStrategy):
    sigma_lr: float = 0.0  # 0: DEFAULT_SIGMA_LR
    sigma_max_change: float = 0.2
    shaping: Shaping = centered_ranks
    name = "pgpe"
    adapts_sigma = True

    def __post_init__(self):
        if not self.sampling.antithetic:
            raise ValueError("PGPE samples symmetric pairs: it needs antithetic sampling")
        if not 0 < self.sigma_max_change < 1:
            raise ValueError("sigma_max_change must be in (0, 1)")

    def tell(self, state: State, generation: int, fitness: np.ndarray, part=None) -> tuple[State, UpdateInfo]:
        part = part or Whole(self.sampling.dim)
        g_mu, g_sig, n_failed = self.shaped_sums(generation, fitness, part)
        if g_mu is None:
            return self.no_step(state, n_failed)
        sigma = state["sigma"][part.lo : part.hi].astype(np.float64)
        scale = sigma / (2 * self.sampling.n_directions)
        changed, grad = step_mean(self.optimizer, state, scale * g_mu, self.weight_decay, part)
        stepped = sigma + (self.sigma_lr or DEFAULT_SIGMA_LR) * scale * g_sig
        c = self.sigma_max_change
        changed["sigma"] = np.clip(stepped, sigma * (1 - c), sigma * (1 + c)).astype(np.float32)
        return self.finish(state, part, changed, grad, n_failed)
