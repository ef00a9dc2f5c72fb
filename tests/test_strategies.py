"""The strategies on their own (pure numpy): closed-form checks written from the papers' formulas.

Each expected value is computed here by hand from the members' parameters (what `ask`
returns) and the papers' update rules, not by calling the strategy's own gradient code.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

from nes_mpi.noise import NoiseTable, make_table
from nes_mpi.optimizers import GD, Adam, ClipUp
from nes_mpi.shaping import SHAPINGS, centered_ranks, nes_utilities, standardized
from nes_mpi.strategies import PGPE, SNES, OpenAIES, Sampling

TABLE = NoiseTable(make_table(1 << 18, 5), 5)


def sampling(dim, pop, antithetic=True):
    return Sampling(TABLE, dim, pop, antithetic)


def population(strategy, state, g):
    return strategy.ask(state, g, range(strategy.sampling.population)).astype(np.float64)


def test_nes_utilities_are_the_papers_values():
    # n = 4: ranks 1..4 get max(0, ln 3 - ln k) = ln 3, ln 1.5, 0, 0, normalised, minus 1/4
    a, b = math.log(3), math.log(1.5)
    by_rank = [a / (a + b) - 0.25, b / (a + b) - 0.25, -0.25, -0.25]
    fitness = np.array([2.0, 10.0, -1.0, 5.0])  # ranks: 3, 1, 4, 2
    np.testing.assert_allclose(nes_utilities(fitness), [by_rank[2], by_rank[0], by_rank[3], by_rank[1]], rtol=1e-12)
    assert nes_utilities(np.array([3.0, 1.0, 3.0, 0.0])).tolist() == pytest.approx(
        [(by_rank[0] + by_rank[1]) / 2, by_rank[2], (by_rank[0] + by_rank[1]) / 2, by_rank[3]])  # ties share
    assert abs(nes_utilities(np.random.default_rng(0).standard_normal(37)).sum()) < 1e-12


@pytest.mark.parametrize("antithetic", [False, True])
def test_snes_update_matches_the_paper_by_hand(antithetic):
    """mean += eta_mu sigma sum u_k s_k ; sigma *= exp(eta_sigma / 2 sum u_k (s_k^2 - 1)), u the NES utilities."""
    dim, pop, eta_sigma = 3, 4, 0.3
    snes = SNES(sampling(dim, pop, antithetic), 0.5, GD(1.0), sigma_lr=eta_sigma)
    mean0 = np.array([0.1, -0.2, 0.3], np.float32)
    state = snes.init(mean0)
    state["sigma"] = np.array([0.5, 1.0, 2.0], np.float32)
    x = population(snes, state, 7)
    s = (x - mean0) / state["sigma"]  # each member's standard normal sample
    fitness = -np.sum(x**2, axis=1)
    a, b = math.log(3), math.log(1.5)
    by_rank = np.array([a / (a + b) - 0.25, b / (a + b) - 0.25, -0.25, -0.25])
    u = np.empty(4)
    u[np.argsort(-fitness)] = by_rank
    new, info = snes.tell(state, 7, fitness)
    np.testing.assert_allclose(new["mean"], mean0 + state["sigma"] * (u @ s), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(new["sigma"], state["sigma"] * np.exp(eta_sigma / 2 * (u @ (s**2 - 1))), rtol=1e-5)
    assert info.sigma_mean == pytest.approx(float(new["sigma"].mean()))
    assert np.array_equal(state["mean"], mean0)  # tell is pure: the old state is untouched


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_snes_sigma_grows_along_rewarded_spread_and_shrinks_against_it(sign):
    """F = sign * x_0^2: the larger |s_0|, the better (sign +1) or worse; sum u (s^2 - 1) then has that sign."""
    snes = SNES(sampling(4, 8, antithetic=False), 1.0, GD(1.0))
    state = snes.init(np.zeros(4, np.float32))
    x = population(snes, state, 3)
    new, _ = snes.tell(state, 3, sign * x[:, 0] ** 2)
    assert (new["sigma"][0] - 1.0) * sign > 0
    assert snes.eta_sigma == pytest.approx((3 + math.log(4)) / (5 * math.sqrt(4)))  # the paper's default


@pytest.mark.parametrize("antithetic", [False, True])
def test_snes_solves_a_separable_quadratic_and_shrinks_sigma(antithetic):
    dim = 10
    c = np.linspace(-2, 2, dim)
    snes = SNES(sampling(dim, 20, antithetic), 1.0, GD(1.0))
    state = snes.init(np.zeros(dim, np.float32))
    for g in range(400):
        x = population(snes, state, g)
        state, _ = snes.tell(state, g, -np.sum((x - c) ** 2, axis=1))
    assert np.max(np.abs(state["mean"] - c)) < 1e-2
    assert np.all(state["sigma"] < 1e-2)  # from 1.0: the distribution contracts onto the optimum


def test_pgpe_gradients_match_sehnkes_symmetric_sampling_by_hand():
    """grad_mu = 1/n sum (r+ - r-)/2 eps ; grad_sigma = 1/n sum (r+ + r-)/2 (eps^2 - sigma^2)/sigma; injected shaping."""
    dim, pop, eta_sigma = 3, 6, 0.05
    raw = lambda f: f - f.mean()  # an injected fitness shaping: raw fitness minus the baseline
    pgpe = PGPE(sampling(dim, pop), 0.3, GD(1.0), sigma_lr=eta_sigma, sigma_max_change=0.9, shaping=raw)
    mean0 = np.array([1.0, 0.0, -1.0], np.float32)
    state = pgpe.init(mean0)
    sigma = np.array([0.3, 0.6, 0.1])
    state["sigma"] = sigma.astype(np.float32)
    x = population(pgpe, state, 11)
    eps = x[0::2] - mean0
    np.testing.assert_allclose(x[1::2] - mean0, -eps, atol=1e-6)  # symmetric pairs
    fitness = np.array([1.0, 4.0, -2.0, 0.5, 3.0, 3.5])
    r = fitness - fitness.mean()
    rp, rm = r[0::2], r[1::2]
    n = pop // 2
    grad_mu = ((rp - rm) / 2) @ eps / n
    grad_sigma = ((rp + rm) / 2) @ ((eps**2 - sigma**2) / sigma) / n
    new, _ = pgpe.tell(state, 11, fitness)
    np.testing.assert_allclose(new["mean"], mean0 + grad_mu, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(new["sigma"], sigma + eta_sigma * grad_sigma, rtol=1e-5)


def test_pgpe_sigma_change_is_capped_at_the_relative_limit():
    pgpe = PGPE(sampling(5, 8), 0.2, ClipUp(0.01), sigma_lr=1000.0)  # a huge step: the 0.2 cap must bind
    state = pgpe.init(np.zeros(5, np.float32))
    x = population(pgpe, state, 0)
    new, _ = pgpe.tell(state, 0, -np.sum(x**2, axis=1))
    ratio = new["sigma"] / state["sigma"]
    assert np.all((np.abs(ratio - 0.8) < 1e-6) | (np.abs(ratio - 1.2) < 1e-6)), ratio


@pytest.mark.parametrize("make", [
    lambda: OpenAIES(sampling(6, 8), 0.1, Adam(0.01), weight_decay=0.01),
    lambda: SNES(sampling(6, 8), 0.1, GD(1.0)),
    lambda: PGPE(sampling(6, 8), 0.1, ClipUp(0.01)),
], ids=["openai", "snes", "pgpe"])
def test_every_strategy_is_pure_and_member_subsets_are_bitwise_rows(make):
    strategy = make()
    state = strategy.init(np.linspace(-1, 1, 6).astype(np.float32))
    for g in range(3):
        x = strategy.ask(state, g, range(8))
        assert np.array_equal(strategy.ask(state, g, [5, 2]), x[[5, 2]])
        fitness = -np.sum(x.astype(np.float64) ** 2, axis=1)
        frozen = {k: np.copy(v) for k, v in state.items()}
        new, _ = strategy.tell(state, g, fitness)
        assert all(np.array_equal(state[k], frozen[k]) for k in state)
        again, _ = strategy.tell(frozen, g, fitness)
        assert new.keys() == again.keys() and all(np.array_equal(new[k], again[k]) for k in new)
        state = new
    assert int(state["opt_t"]) == 3
    tied, info = strategy.tell(state, 3, np.full(8, 500.0))  # every member tied: no information, no step
    assert tied.keys() == state.keys() and all(np.array_equal(tied[k], state[k]) for k in state)
    assert info.update_norm == 0.0
    assert set(strategy.restore({k: np.copy(v) for k, v in state.items()})) == set(state)
    with pytest.raises(ValueError, match="expected"):
        strategy.restore({k: v for k, v in state.items() if k != "opt_t"})
    with pytest.raises(ValueError, match="shape"):
        strategy.restore({**state, "mean": np.zeros(7, np.float32)})


def test_shaping_is_injectable():
    base = OpenAIES(sampling(6, 8), 0.1, GD(1.0))
    alt = OpenAIES(sampling(6, 8), 0.1, GD(1.0), shaping=lambda f: np.sign(f - np.median(f)))
    f = np.array([0.0, 1.0, 5.0, 2.0, 9.0, -3.0, 4.0, 4.5])
    assert not np.array_equal(base.gradient(0, f)[0], alt.gradient(0, f)[0])
    np.testing.assert_array_equal(base.gradient(0, f)[0], OpenAIES(sampling(6, 8), 0.1, GD(1.0),
                                                                    shaping=centered_ranks).gradient(0, f)[0])


def test_standardized_returns_are_z_scores_invariant_to_affine_maps_only():
    f = np.array([3.0, -1.0, 10.0, 2.0, 2.0, 7.5])
    z = standardized(f)
    assert z.mean() == pytest.approx(0.0, abs=1e-12) and np.sqrt(np.mean(z**2)) == pytest.approx(1.0)
    np.testing.assert_allclose(standardized(4.0 * f - 30.0), z, rtol=1e-12, atol=1e-12)
    assert z[3] == z[4]  # ties share a utility
    assert not np.allclose(standardized(np.exp(f / 5)), z)  # a monotone but not affine map changes them
    assert np.array_equal(standardized(np.full(5, 7.0)), np.zeros(5)) and standardized(np.array([1.0])).tolist() == [0.0]
    assert set(SHAPINGS) == {"ranks", "utilities", "zscore"}


def test_openai_with_zscore_shaping_takes_the_ars_step_by_hand():
    """ARS (Mania et al. 2018, V1 with b = N): theta += alpha / (N sigma_R) sum_k (r+_k - r-_k) delta_k, sigma_R the
    std of the 2N returns. With --shaping zscore and a plain step, lr = 2 sigma alpha gives exactly that step."""
    dim, pairs, sigma, alpha = 5, 4, 0.05, 0.02
    es = OpenAIES(sampling(dim, 2 * pairs), sigma, GD(2 * sigma * alpha), shaping=standardized)
    mean0 = np.array([0.3, -0.1, 0.0, 0.2, -0.4], np.float32)
    state = es.init(mean0)
    x = population(es, state, 3)
    delta = (x[0::2] - x[1::2]) / (2 * sigma)  # each pair's direction, the sign of its first member
    r = -np.sum((x - 1.0) ** 2, axis=1) * 100.0  # returns on a scale of hundreds, as on MuJoCo
    expected = mean0 + alpha / (pairs * r.std()) * ((r[0::2] - r[1::2]) @ delta)
    new, _ = es.tell(state, 3, r)
    np.testing.assert_allclose(new["mean"], expected, rtol=1e-4, atol=1e-6)
    assert not np.allclose(new["mean"], OpenAIES(sampling(dim, 2 * pairs), sigma, GD(2 * sigma * alpha)).tell(state, 3, r)[0]["mean"])
