"""Separable NES (Schaul et al. 2011; Wierstra et al., JMLR 2014, Algorithm 6).

Search distribution N(mean, diag(sigma^2)) with members mean + sigma * s_k and, per
member, the utility u_k (the paper's NES utilities by default). The natural gradients

    g_mean  = sum_k u_k s_k                 g_sigma = sum_k u_k (s_k^2 - 1)

give  mean <- mean + eta_mean * sigma * g_mean  (the optimizer: `gd` with lr eta_mean = 1
is the paper's update) and  sigma <- sigma * exp(eta_sigma / 2 * g_sigma)  with
eta_sigma = (3 + ln d) / (5 sqrt d) unless set. A mirrored pair +-s_k adds its two
utilities' difference to g_mean and their sum to g_sigma.
State: mean, sigma (per parameter) and the optimizer's state.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..dims import Whole
from ..shaping import nes_utilities
from .base import GaussianStrategy, Shaping, State, UpdateInfo, step_mean


def default_sigma_lr(dim: int) -> float:
    return (3 + math.log(dim)) / (5 * math.sqrt(dim))


@dataclass(frozen=True)
class SNES(GaussianStrategy):
    sigma_lr: float = 0.0  # 0: the paper's (3 + ln d) / (5 sqrt d)
    shaping: Shaping = nes_utilities
    name = "snes"
    adapts_sigma = True

    @property
    def eta_sigma(self) -> float:
        return self.sigma_lr or default_sigma_lr(self.sampling.dim)

    def tell(self, state: State, generation: int, fitness: np.ndarray, part=None) -> tuple[State, UpdateInfo]:
        part = part or Whole(self.sampling.dim)
        g_mu, g_sig, n_failed = self.shaped_sums(generation, fitness, part)
        if g_mu is None:
            return self.no_step(state, n_failed)
        sigma = state["sigma"][part.lo : part.hi]
        changed, grad = step_mean(self.optimizer, state, sigma * g_mu, self.weight_decay, part)
        changed["sigma"] = (sigma * np.exp(0.5 * self.eta_sigma * g_sig)).astype(np.float32)
        return self.finish(state, part, changed, grad, n_failed)
