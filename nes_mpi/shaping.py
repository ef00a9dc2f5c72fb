"""Fitness shaping: turn a generation's returns into the utilities the update weighs noise by.

Centered ranks (Salimans et al. 2017) make the update invariant to any monotone
transform of the returns, so one outlier episode cannot dominate a generation.
Standardised returns (ARS, Mania et al. 2018) keep the size of return differences.
"""
from __future__ import annotations

import numpy as np


def centered_ranks(fitness: np.ndarray) -> np.ndarray:
    """Map fitnesses to ranks scaled into [-0.5, 0.5]; tied fitnesses share their average rank.

    Equal fitnesses carry no ordering information, so they must get equal
    utilities: a tied antithetic pair then contributes nothing, and a
    generation where every member ties gives all-zero utilities. Average
    ranks are a pure function of the fitness vector, identical on every rank.
    """
    fitness = np.asarray(fitness, dtype=np.float64).ravel()
    n = fitness.size
    if n < 2:
        return np.zeros(n)
    order = np.argsort(fitness, kind="stable")
    ordered = fitness[order]
    starts_group = np.concatenate(([True], ordered[1:] != ordered[:-1]))
    group = np.cumsum(starts_group) - 1
    first = np.flatnonzero(starts_group)
    last = np.concatenate((first[1:], [n])) - 1
    ranks = np.empty(n, dtype=np.float64)
    ranks[order] = ((first + last) / 2.0)[group]
    return ranks / (n - 1) - 0.5


def replace_nonfinite(fitness: np.ndarray) -> tuple[np.ndarray, int]:
    """Give members with a non-finite fitness the worst finite fitness of the generation.

    Returns the cleaned copy and how many members were replaced. If every
    member failed, all get 0: they tie, so their utilities are all zero and
    every strategy's `tell` leaves its state untouched (no NaN, no step).
    """
    fitness = np.array(fitness, dtype=np.float64)
    bad = ~np.isfinite(fitness)
    n_bad = int(bad.sum())
    if n_bad:
        worst = fitness[~bad].min() if n_bad < fitness.size else 0.0
        fitness[bad] = worst
    return fitness, n_bad


def nes_utilities(fitness: np.ndarray) -> np.ndarray:
    """The NES utility values (Wierstra et al. 2014, section 3.1), summing to zero.

    The member of rank k (1 = best) of n gets max(0, ln(n/2 + 1) - ln k), normalised
    to sum to one, minus 1/n: only the better half pulls, the rest push equally.
    Tied fitnesses share the mean of their utilities, so the result does not depend
    on the members' order.
    """
    fitness = np.asarray(fitness, dtype=np.float64).ravel()
    n = fitness.size
    values, inverse = np.unique(fitness, return_inverse=True)
    if values.size < 2:  # all tied: exactly zero (the average of the utilities is zero only up to rounding)
        return np.zeros(n)
    raw = np.maximum(0.0, np.log(n / 2 + 1) - np.log(np.arange(1, n + 1)))
    by_rank = raw / raw.sum() - 1.0 / n
    order = np.argsort(-fitness, kind="stable")
    u = np.empty(n)
    u[order] = by_rank
    if values.size < n:  # average over ties
        u = (np.bincount(inverse, weights=u) / np.bincount(inverse))[inverse]
    return u


def standardized(fitness: np.ndarray) -> np.ndarray:
    """The returns as z-scores, (F - mean) / std over the generation (population std).

    With antithetic pairs a direction's weight is then (F+ - F-) / std: ARS's step
    (Mania et al. 2018), which divides each return difference by the returns' standard
    deviation. Unlike ranks, a member twice as far ahead pulls twice as hard; the update
    is invariant only to affine transforms of the returns. All tied: all zero.
    """
    fitness = np.asarray(fitness, dtype=np.float64).ravel()
    if fitness.size < 2:
        return np.zeros(fitness.size)
    centered = fitness - fitness.mean()
    std = float(np.sqrt(np.mean(centered**2)))
    if not std > 0 or not np.isfinite(std):
        return np.zeros(fitness.size)
    return centered / std


# --shaping: the name a config uses for each shaping.
SHAPINGS = {"ranks": centered_ranks, "utilities": nes_utilities, "zscore": standardized}
