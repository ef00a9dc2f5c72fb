"""OpenAI ES (Salimans et al. 2017): a fixed sigma, centered ranks, the mean moved by an optimizer.

    grad = 1 / (n sigma) * sum_i u_i eps_i  - weight_decay * mean

with u the shaped fitnesses (centered ranks by default; tied fitnesses share their
average rank) and n the number of members whose utilities enter the sum: the
population, or the 2b members of the b directions kept by `top_directions` < 1
(ARS, Mania et al. 2018: the directions whose better member did best). The decay is
applied after the 1/sigma scaling, so weight_decay equals the OpenAI ES starter's
l2coeff divided by sigma. State: mean and the optimizer's state (opt_t, opt_m, ...).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..dims import Whole
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

    def direction_weights(self, fitness: np.ndarray) -> tuple[np.ndarray, int]:
        """Weight of each noise direction from cleaned fitnesses, and how many members they summarise."""
        s = self.sampling
        weights, _ = s.direction_weights(self.shaping(fitness))
        if self.top_directions == 1:
            return weights, s.population
        best = np.maximum(fitness[0::2], fitness[1::2])
        keep = max(1, int(round(self.top_directions * weights.size)))
        order = np.argsort(-best, kind="stable")
        weights[order[keep:]] = 0.0
        return weights, 2 * keep

    def estimate(self, generation: int, weights: np.ndarray, n_used: int, part=None) -> np.ndarray:
        """1 / (n_used sigma) * sum_k weights[k] eps_k: the ES gradient estimate from per-direction weights,
        on the part's range of the dimensions (default: all)."""
        s = self.sampling
        part = part or Whole(s.dim)
        grad = s.noise.weighted_sum_over(weights, s.directions(generation), part.lo, part.hi)
        grad /= n_used * self.sigma
        return grad

    def gradient(self, generation: int, fitness: np.ndarray) -> tuple[np.ndarray, int]:
        """The estimate of d E[F] / d mean from the whole population's fitnesses."""
        fitness, n_failed = replace_nonfinite(fitness)
        weights, n_used = self.direction_weights(fitness)
        return self.estimate(generation, weights, n_used), n_failed

    def tell(self, state: State, generation: int, fitness: np.ndarray, part=None) -> tuple[State, UpdateInfo]:
        part = part or Whole(self.sampling.dim)
        fitness, n_failed = replace_nonfinite(fitness)
        weights, n_used = self.direction_weights(fitness)
        if not weights.any():  # every member tied: no ranking information, no step (see GaussianStrategy.no_step)
            return self.no_step(state, n_failed)
        grad = self.estimate(generation, weights, n_used, part)
        changed, grad = step_mean(self.optimizer, state, grad, self.weight_decay, part)
        return self.finish(state, part, changed, grad, n_failed)
