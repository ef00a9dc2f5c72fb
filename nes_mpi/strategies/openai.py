"""OpenAI ES (Salimans et al. 2017): a fixed sigma, centered ranks, the mean moved by an optimizer.

    grad = 1 / (n sigma) * sum_i u_i eps_i  - weight_decay * mean

with u the shaped fitnesses (centered ranks by default). With `top_directions` < 1
only the antithetic directions whose better member did best count (ARS, Mania et al. 2018).
State: mean and the optimizer's state (opt_t, opt_m, ...).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..shaping import centered_ranks, replace_nonfinite
from .base import GaussianStrategy, Shaping, State, UpdateInfo, step_mean


@dataclass(frozen=True)
class OpenAIES(GaussianStrategy):
    top_directions: float = 1.0
    shaping: Shaping = centered_ranks
    name = "openai"

    def __post_init__(self):
        if not 0 < self.top_directions <= 1:
            raise ValueError("top_directions must be in (0, 1]")
        if self.top_directions < 1 and not self.sampling.antithetic:
            raise ValueError("top_directions < 1 needs antithetic pairs")

    def gradient(self, generation: int, fitness: np.ndarray) -> tuple[np.ndarray, int]:
        """The estimate of d E[F] / d mean from the whole population's fitnesses."""
        s = self.sampling
        fitness, n_failed = replace_nonfinite(fitness)
        weights, _ = s.direction_weights(self.shaping(fitness))
        if self.top_directions < 1:
            best = np.maximum(fitness[0::2], fitness[1::2])
            keep = max(1, int(round(self.top_directions * weights.size)))
            order = np.argsort(-best, kind="stable")
            weights[order[keep:]] = 0.0
        grad = s.noise.weighted_sum(weights, s.directions(generation), s.dim)
        grad /= s.population * self.sigma
        return grad, n_failed

    def tell(self, state: State, generation: int, fitness: np.ndarray) -> tuple[State, UpdateInfo]:
        grad, n_failed = self.gradient(generation, fitness)
        changed, grad_norm, step_norm = step_mean(self.optimizer, state, grad, self.weight_decay)
        return {**state, **changed}, UpdateInfo(grad_norm, n_failed, step_norm, float(self.sigma))
