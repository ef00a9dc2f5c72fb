"""What every strategy shares: the common-seed population and the per-direction weights.

A strategy is a frozen object of hyperparameters plus three pure functions of an
explicit state (a flat dict name -> numpy array, "mean" among them):

    state = strategy.init(mean)
    rows = strategy.ask(state, generation, members)       # those members' parameters
    state, info = strategy.tell(state, generation, fitness)  # a new dict; the old one is untouched

`tell(state, generation, fitness, part)` computes only the dimensions of `part`
(a range of them, see dims.py) and lets the part put the ranges together: the MPI
layer splits a node's update over its ranks that way, with the same bits.

Member m of generation g evaluates mean + sign_m * sigma * eps_k(m), where
eps_k is a slice of the shared noise table at an offset drawn from (seed, g),
so every rank builds any member without communication. With antithetic
(symmetric) sampling members 2k and 2k+1 share eps_k with signs + and -.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..dims import Whole
from ..noise import NoiseTable
from ..optimizers import Optimizer
from ..shaping import replace_nonfinite

State = dict  # name -> np.ndarray
Shaping = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class UpdateInfo:
    grad_norm: float
    n_failed: int
    update_norm: float
    sigma_mean: float


@dataclass(frozen=True)
class Sampling:
    """The population layout: how many directions, which member uses which with what sign."""

    noise: NoiseTable
    dim: int
    population: int
    antithetic: bool = True

    def __post_init__(self):
        if self.population < 2:
            raise ValueError("population must be at least 2")
        if self.antithetic and self.population % 2:
            raise ValueError(f"population must be even with antithetic pairs (got {self.population})")

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

    def perturbed(self, mean: np.ndarray, sigma, generation: int, members) -> np.ndarray:
        """mean + sign * sigma * eps for the given members, one float32 row each (sigma: scalar or vector)."""
        offsets = self.directions(generation)
        members = list(members)
        out = np.empty((len(members), self.dim), dtype=np.float32)
        for row, m in enumerate(members):
            k, sign = self.member_direction(m)
            eps = self.noise.get(int(offsets[k]), self.dim)
            np.multiply(eps, sigma if sign > 0 else -sigma, out=out[row])
            out[row] += mean
        return out

    def direction_weights(self, utilities: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per direction: sum of sign * u over its members, and sum of u (both float64)."""
        if self.antithetic:
            return utilities[0::2] - utilities[1::2], utilities[0::2] + utilities[1::2]
        return utilities.copy(), utilities.copy()


def step_mean(optimizer: Optimizer, state: State, grad: np.ndarray, weight_decay: float, part) -> tuple[State, np.ndarray]:
    """Move the mean along grad (minus the L2 term) with the optimizer kept in the state's opt_* entries,
    on the part's range of the dimensions (grad is given on that range).

    Returns the entries that changed (the mean's and the moments' ranges, opt_t) and the gradient followed.
    """
    lo, hi = part.lo, part.hi
    mean = state["mean"][lo:hi]
    if weight_decay:
        grad = grad - weight_decay * mean.astype(np.float64)
    opt = {k[4:]: (v[lo:hi] if np.ndim(v) else v) for k, v in state.items() if k.startswith("opt_")}
    new_mean, new_opt = optimizer.step(opt, mean, grad, part.total)
    return {"mean": new_mean, **{f"opt_{k}": v for k, v in new_opt.items()}}, grad


def init_optimizer(optimizer: Optimizer, dim: int) -> State:
    return {f"opt_{k}": v for k, v in optimizer.init(dim).items()}


def check_state(expected: State, state: State) -> State:
    """The given state, if it has the keys and shapes `expected` has; a one-line ValueError otherwise."""
    if set(state) != set(expected):
        raise ValueError(f"strategy state has entries {sorted(state)}, expected {sorted(expected)}")
    out = {}
    for k, ref in expected.items():
        v = np.asarray(state[k])
        if v.shape != np.shape(ref):
            raise ValueError(f"strategy state '{k}' has shape {v.shape}, expected {np.shape(ref)}")
        out[k] = v.astype(np.asarray(ref).dtype, copy=False)
    return out


@dataclass(frozen=True)
class GaussianStrategy:
    """init/restore/ask of a Gaussian search distribution with mean and (fixed or per-parameter) sigma."""

    sampling: Sampling
    sigma: float  # the fixed scale, or the initial value of every entry of the sigma vector
    optimizer: Optimizer
    weight_decay: float = 0.0
    adapts_sigma = False  # True: "sigma" is a per-parameter vector in the state

    def init(self, mean: np.ndarray) -> State:
        dim = self.sampling.dim
        state = {"mean": np.array(mean, dtype=np.float32), **init_optimizer(self.optimizer, dim)}
        if self.adapts_sigma:
            state["sigma"] = np.full(dim, self.sigma, dtype=np.float32)
        return state

    def restore(self, state: State) -> State:
        """A state read back from a checkpoint, checked against what init() makes."""
        return check_state(self.init(np.zeros(self.sampling.dim)), state)

    def sigma_of(self, state: State):
        return state["sigma"] if self.adapts_sigma else np.float32(self.sigma)

    def ask(self, state: State, generation: int, members) -> np.ndarray:
        return self.sampling.perturbed(state["mean"], self.sigma_of(state), generation, members)

    def no_step(self, state: State, n_failed: int) -> tuple[State, UpdateInfo]:
        """A generation whose utilities are all zero (every member tied: all solved the task, or all failed)
        carries no information: the state stays as it is. Weight decay is skipped too, since Adam or ClipUp
        would turn the decay term alone into a full lr-sized step toward zero."""
        return state, UpdateInfo(0.0, n_failed, 0.0, float(np.mean(self.sigma_of(state))))

    def finish(self, state: State, part, changed: State, grad: np.ndarray, n_failed: int) -> tuple[State, UpdateInfo]:
        """The new state from the ranges of the changed entries (`part.join`), with the norms of the
        gradient followed and of the step, and the mean sigma, summed over all dimensions."""
        step = changed["mean"] - state["mean"][part.lo : part.hi]
        sums = [np.square(grad), np.square(step, dtype=np.float64)]
        if self.adapts_sigma:
            sums.append(changed["sigma"])
        vectors = {k: v for k, v in changed.items() if np.ndim(v)}
        joined, totals = part.join(vectors, tuple(sums))
        new = {**state, **changed, **joined}
        sigma_mean = totals[2] / self.sampling.dim if self.adapts_sigma else float(self.sigma)
        return new, UpdateInfo(float(np.sqrt(totals[0])), n_failed, float(np.sqrt(totals[1])), sigma_mean)

    def shaped_sums(self, generation: int, fitness: np.ndarray, part):
        """(g_mu, g_sig, n_failed) of `variance_sums` on the shaped, cleaned fitnesses, on the part's range;
        g_mu and g_sig are None when every utility is zero (then `no_step`)."""
        fitness, n_failed = replace_nonfinite(fitness)
        utilities = self.shaping(fitness)
        if not np.any(utilities):
            return None, None, n_failed
        return (*self.variance_sums(generation, utilities, part), n_failed)

    def variance_sums(self, generation: int, utilities: np.ndarray, part=None) -> tuple[np.ndarray, np.ndarray]:
        """sum_k a_k eps_k and sum_k b_k (eps_k^2 - 1), with a_k, b_k the per-direction weights of the utilities,
        on the part's range of the dimensions (default: all)."""
        s = self.sampling
        part = part or Whole(s.dim)
        wmu, wsig = s.direction_weights(utilities)
        offsets = s.directions(generation)
        g_mu = s.noise.weighted_sum_over(wmu, offsets, part.lo, part.hi)
        g_sig = s.noise.weighted_sum_over(wsig, offsets, part.lo, part.hi, squared=True)
        g_sig -= float(np.asarray(wsig, dtype=np.float32).sum(dtype=np.float64))
        return g_mu, g_sig
