"""The NES strategy: ask for perturbed parameters, tell the fitnesses, update.

Pure numpy; knows nothing of MPI or environments. The whole population of a
generation is a function of (theta, generation, noise table), so every rank can
build any member's parameters and every rank applies the identical update:

    grad = 1 / (n sigma) * sum_i u_i eps_i  - weight_decay * theta

with u the centered ranks of the fitnesses, n the number of members whose
utilities enter the sum (the population, or the 2b members of the b directions
kept by --top-directions) and, with antithetic sampling, members 2k and 2k+1
evaluating theta + sigma eps_k and theta - sigma eps_k. The decay is applied
after the 1/sigma scaling, so weight_decay equals the OpenAI ES starter's
l2coeff divided by sigma. A generation whose utilities are all zero (every
member tied) carries no information and leaves theta and the optimizer as
they are.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .noise import NoiseTable
from .optimizers import Optimizer
from .shaping import centered_ranks, replace_nonfinite


@dataclass
class UpdateInfo:
    grad_norm: float
    n_failed: int
    update_norm: float


class NES:
    def __init__(self, noise: NoiseTable, dim: int, population: int, sigma: float,
                 optimizer: Optimizer, antithetic: bool = True, weight_decay: float = 0.0,
                 top_directions: float = 1.0):
        if population < 2:
            raise ValueError("population must be at least 2")
        if antithetic and population % 2:
            raise ValueError(f"population must be even with antithetic pairs (got {population})")
        self.noise = noise
        self.dim = dim
        self.population = population
        self.sigma = float(sigma)
        self.optimizer = optimizer
        self.antithetic = antithetic
        self.weight_decay = float(weight_decay)
        if not 0 < top_directions <= 1:
            raise ValueError("top_directions must be in (0, 1]")
        if top_directions < 1 and not antithetic:
            raise ValueError("top_directions < 1 needs antithetic pairs")
        self.top_directions = float(top_directions)

    @property
    def n_directions(self) -> int:
        return self.population // 2 if self.antithetic else self.population

    def directions(self, generation: int) -> np.ndarray:
        return self.noise.offsets(generation, self.n_directions, self.dim)

    def member_direction(self, member: int) -> tuple[int, float]:
        """(direction index, sign) of a population member."""
        if self.antithetic:
            return member // 2, (1.0 if member % 2 == 0 else -1.0)
        return member, 1.0

    def ask(self, theta: np.ndarray, generation: int, members) -> np.ndarray:
        """Parameters of the given members, one row each (float32)."""
        offsets = self.directions(generation)
        members = list(members)
        out = np.empty((len(members), self.dim), dtype=np.float32)
        for row, m in enumerate(members):
            k, sign = self.member_direction(m)
            eps = self.noise.get(int(offsets[k]), self.dim)
            np.multiply(eps, np.float32(sign * self.sigma), out=out[row])
            out[row] += theta
        return out

    def direction_weights(self, fitness: np.ndarray) -> tuple[np.ndarray, int]:
        """Weight of each noise direction from cleaned fitnesses, and how many members they summarise."""
        utilities = centered_ranks(fitness)
        if not self.antithetic:
            return utilities, self.population
        weights = utilities[0::2] - utilities[1::2]
        if self.top_directions == 1:
            return weights, self.population
        # ARS: keep the b directions whose better member did best; the estimate averages over those 2b members
        best = np.maximum(fitness[0::2], fitness[1::2])
        keep = max(1, int(round(self.top_directions * weights.size)))
        order = np.argsort(-best, kind="stable")
        weights[order[keep:]] = 0.0
        return weights, 2 * keep

    def gradient(self, generation: int, fitness: np.ndarray) -> tuple[np.ndarray, int]:
        """The NES estimate of d E[F] / d theta from the whole population's fitnesses."""
        fitness, n_failed = replace_nonfinite(fitness)
        weights, n_used = self.direction_weights(fitness)
        return self.estimate(generation, weights, n_used), n_failed

    def estimate(self, generation: int, weights: np.ndarray, n_used: int) -> np.ndarray:
        """1 / (n_used sigma) * sum_k weights[k] eps_k: the ES gradient estimate from per-direction weights."""
        grad = self.noise.weighted_sum(weights, self.directions(generation), self.dim)
        grad /= n_used * self.sigma
        return grad

    def tell(self, theta: np.ndarray, generation: int, fitness: np.ndarray) -> tuple[np.ndarray, UpdateInfo]:
        fitness, n_failed = replace_nonfinite(fitness)
        weights, n_used = self.direction_weights(fitness)
        if not weights.any():
            # Every member tied (all solved the task, or all failed): no ranking, no step. Weight decay is
            # skipped too, since Adam would turn the decay term alone into a full lr-sized step toward zero.
            return theta, UpdateInfo(0.0, n_failed, 0.0)
        grad = self.estimate(generation, weights, n_used)
        if self.weight_decay:
            grad = grad - self.weight_decay * theta.astype(np.float64)
        new_theta = self.optimizer.step(theta, grad)
        info = UpdateInfo(float(np.linalg.norm(grad)), n_failed, float(np.linalg.norm(new_theta - theta)))
        return new_theta, info
