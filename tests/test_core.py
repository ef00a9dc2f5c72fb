"""The pure core (shaping, noise, gradient estimate, optimizers, policy, config) without MPI."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from nes_mpi.config import Config, ConfigError, load_toml
from nes_mpi.noise import CHUNK, NoiseTable, fill_chunks, make_table, n_chunks
from nes_mpi.optimizers import SGD, Adam, ClipUp, make_optimizer
from nes_mpi.policy import BatchPolicy, PolicySpec, initial_params
from nes_mpi.torch_policy import build_torch
from nes_mpi.shaping import centered_ranks, replace_nonfinite
from nes_mpi.strategy import NES


def test_centered_ranks_range_order_and_ties():
    u = centered_ranks(np.array([3.0, -1.0, 10.0, 0.5]))
    assert u.tolist() == pytest.approx([1 / 6, -0.5, 0.5, -1 / 6])
    assert u.sum() == pytest.approx(0.0)
    ties = centered_ranks(np.array([1.0, 1.0, 1.0]))
    assert ties.tolist() == [0.0, 0.0, 0.0]  # equal fitness, equal utility: ties share their average rank
    assert centered_ranks(np.array([3.0, 1.0, 1.0, 0.0])).tolist() == [0.5, 0.0, 0.0, -0.5]
    assert centered_ranks(np.array([2.0, 7.0, 2.0, 5.0, -1.0])).tolist() == [-0.125, 0.5, -0.125, 0.25, -0.5]
    assert np.array_equal(centered_ranks(np.array([1.0, 5.0, 2.0])), centered_ranks(np.array([-7.0, 1e9, 0.0])))


def test_nonfinite_fitness_gets_the_worst():
    f, n = replace_nonfinite(np.array([1.0, np.nan, -3.0, np.inf]))
    assert n == 2 and f.tolist() == [1.0, -3.0, -3.0, -3.0]
    f, n = replace_nonfinite(np.array([np.nan, np.nan]))
    assert n == 2 and f.tolist() == [0.0, 0.0]


def test_noise_table_is_deterministic_and_independent_of_who_fills_it():
    size = 3 * CHUNK + 123
    whole = make_table(size, seed=7)
    parts = np.empty(size, dtype=np.float32)
    for j in reversed(range(n_chunks(size))):  # any order, any split
        fill_chunks(parts, 7, [j])
    assert np.array_equal(whole, parts)
    assert not np.array_equal(whole, make_table(size, seed=8))
    assert abs(whole.mean()) < 0.01 and abs(whole.std() - 1) < 0.01


def test_offsets_regenerate_from_seed_and_generation():
    t = NoiseTable(make_table(1 << 18, 1), 1)
    a = t.offsets(5, 64, 1000)
    assert np.array_equal(a, NoiseTable(t.table, 1).offsets(5, 64, 1000))
    assert not np.array_equal(a, t.offsets(6, 64, 1000))
    assert a.min() >= 0 and a.max() <= t.size - 1000


def test_weighted_sum_matches_dense_computation():
    t = NoiseTable(make_table(1 << 18, 3), 3)
    dim = 777
    offsets = t.offsets(0, 50, dim)
    w = np.random.default_rng(0).standard_normal(50).astype(np.float32)
    dense = sum(float(w[k]) * t.table[o : o + dim].astype(np.float64) for k, o in enumerate(offsets))
    got = t.weighted_sum(w, offsets, dim)
    np.testing.assert_allclose(got, dense, rtol=1e-5, atol=1e-5)


def _nes(dim=20, pop=200, sigma=0.1, lr=0.05, antithetic=True, opt="sgd"):
    table = NoiseTable(make_table(1 << 18, 0), 0)
    return NES(table, dim, pop, sigma, make_optimizer(opt, dim, lr, 0.0 if opt == "sgd" else 0.9), antithetic)


def test_ask_builds_mirrored_members_from_the_shared_noise():
    nes = _nes(dim=10, pop=6)
    theta = np.arange(10, dtype=np.float32)
    p = nes.ask(theta, 3, range(6))
    np.testing.assert_allclose(p[0] - theta, -(p[1] - theta), atol=1e-6)
    # any subset of members is bit-identical to the same rows of the whole population
    assert np.array_equal(nes.ask(theta, 3, [4, 5]), p[4:6])
    assert not np.array_equal(p[0], p[2])


@pytest.mark.parametrize("antithetic", [True, False])
def test_gradient_estimate_points_uphill_on_a_quadratic(antithetic):
    """F(x) = -|x - c|^2: the NES estimate must align with the true gradient direction -2(x - c)."""
    dim = 20
    nes = _nes(dim=dim, pop=400, antithetic=antithetic)
    c = np.linspace(-1, 1, dim).astype(np.float32)
    theta = np.zeros(dim, np.float32)
    params = nes.ask(theta, 0, range(nes.population))
    fitness = -np.sum((params - c) ** 2, axis=1)
    grad, _ = nes.gradient(0, fitness)
    true = 2 * (c - theta)
    cos = grad @ true / (np.linalg.norm(grad) * np.linalg.norm(true))
    assert cos > 0.8


def test_nes_solves_a_quadratic():
    dim = 20
    nes = _nes(dim=dim, pop=100, lr=0.05)
    c = np.linspace(-1, 1, dim).astype(np.float32)
    theta = np.zeros(dim, np.float32)
    start = np.sum((theta - c) ** 2)
    for g in range(150):
        params = nes.ask(theta, g, range(nes.population))
        theta, info = nes.tell(theta, g, -np.sum((params - c) ** 2, axis=1))
    assert np.sum((theta - c) ** 2) < 0.05 * start


def test_nan_fitness_never_reaches_the_parameters():
    nes = _nes(dim=5, pop=10)
    theta = np.zeros(5, np.float32)
    f = np.arange(10, dtype=np.float64)
    f[[2, 7]] = np.nan
    theta2, info = nes.tell(theta, 0, f)
    assert info.n_failed == 2 and np.isfinite(theta2).all()


def test_population_rules():
    with pytest.raises(ValueError):
        _nes(pop=7, antithetic=True)
    with pytest.raises(ValueError):
        _nes(pop=1, antithetic=False)


@pytest.mark.parametrize("cls", [Adam, SGD, ClipUp])
def test_optimizers_ascend_and_restore_exactly(cls):
    opt = cls(3, 0.1)
    theta = np.zeros(3, np.float32)
    for _ in range(5):
        theta = opt.step(theta, np.array([1.0, -2.0, 0.0]))
    assert theta[0] > 0 and theta[1] < 0 and theta[2] == 0
    clone = cls(3, 0.1)
    clone.load_state_dict({k: np.copy(v) for k, v in opt.state_dict().items()})
    g = np.array([0.3, 0.1, -0.7])
    assert np.array_equal(opt.step(theta, g), clone.step(theta, g))


def test_adam_first_step_is_lr_sized():
    opt = Adam(2, 0.01)
    theta = opt.step(np.zeros(2, np.float32), np.array([100.0, -0.001]))
    np.testing.assert_allclose(theta, [0.01, -0.01], rtol=1e-3)


def test_clipup_caps_speed():
    opt = ClipUp(4, 0.1, momentum=0.9, max_speed=0.15)
    theta = np.zeros(4, np.float32)
    for _ in range(50):
        new = opt.step(theta, np.ones(4))
        assert np.linalg.norm(new - theta) <= 0.15 + 1e-6
        theta = new


SPECS = [
    PolicySpec("mlp", 17, 6, False, (64, 64), "tanh", (-1.0,) * 6, (1.0,) * 6),
    PolicySpec("mlp", 4, 2, True, (32,), "relu"),
    PolicySpec("linear", 11, 3, False, (), "tanh", (-0.4,) * 3, (0.4,) * 3),
]


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: f"{s.kind}-{'disc' if s.discrete else 'box'}")
def test_numpy_forward_matches_torch_module_and_is_batch_invariant(spec):
    rng = np.random.default_rng(0)
    theta = initial_params(spec, 0)
    assert theta.shape == (spec.num_params,)
    P = (theta + 0.5 * rng.standard_normal((9, theta.size))).astype(np.float32)
    x = rng.standard_normal((9, spec.obs_dim)).astype(np.float32)
    bp = BatchPolicy(spec)
    bp.load(P)
    batched = bp(x)
    for i in range(9):
        single = BatchPolicy(spec)
        single.load(P[i : i + 1])
        assert np.array_equal(single(x[i : i + 1])[0], batched[i])  # bitwise, whatever the batch
        ref = build_torch(spec, P[i])(torch.as_tensor(x[i : i + 1]))[0].detach().numpy()
        if spec.discrete:
            assert ref == batched[i]
        else:
            np.testing.assert_allclose(ref, batched[i], atol=1e-5)
            assert np.all(batched[i] >= np.array(spec.action_low) - 1e-6)
            assert np.all(batched[i] <= np.array(spec.action_high) + 1e-6)
    assert np.array_equal(bp(x[[2, 5]], rows=[2, 5]), batched[[2, 5]])


def test_initial_params_depend_only_on_seed():
    spec = SPECS[0]
    assert np.array_equal(initial_params(spec, 3), initial_params(spec, 3))
    assert not np.array_equal(initial_params(spec, 3), initial_params(spec, 4))


def test_config_precedence_and_validation(tmp_path):
    f = tmp_path / "run.toml"
    f.write_text('env = "Hopper-v5"\npopulation = 64\nhidden_sizes = [32, 32]\nsigma = 0.05\n')
    over = {**load_toml(f), "population": "128"}  # the command line wins
    cfg = Config.from_dict(over).validate()
    assert (cfg.env, cfg.population, cfg.hidden_sizes, cfg.sigma) == ("Hopper-v5", 128, (32, 32), 0.05)
    assert Config.from_dict(cfg.to_dict()) == cfg
    import tomllib
    assert Config.from_dict(tomllib.loads(cfg.to_toml())) == cfg
    with pytest.raises(ConfigError, match="even"):
        Config.from_dict({"population": 7}).validate()
    with pytest.raises(ConfigError, match="at least 2"):
        Config.from_dict({"population": 1, "antithetic": False}).validate()
    with pytest.raises(ConfigError, match="unknown config key"):
        Config.from_dict({"popsize": 3})
    with pytest.raises(ConfigError, match="bad value"):
        Config.from_dict({"sigma": "big"})
    with pytest.raises(ConfigError, match="not found"):
        load_toml(tmp_path / "missing.toml")


def test_every_shipped_preset_is_a_valid_config():
    from nes_mpi.config import preset_names
    names = preset_names()
    assert {"cartpole", "halfcheetah", "hopper", "inverted_pendulum"} <= set(names)
    for name in names:
        cfg = Config.from_dict(load_toml(name)).validate()
        assert cfg.env.endswith(("-v1", "-v5"))


def _dense_sum(nes, generation, weights):
    """sum_k weights[k] eps_k straight from the table slices, in float64 (independent of weighted_sum)."""
    offsets = nes.directions(generation)
    return sum(float(w) * nes.noise.table[o : o + nes.dim].astype(np.float64) for w, o in zip(weights, offsets))


def test_top_directions_keep_only_the_best_pairs_and_average_over_them():
    """ARS: of 4 directions keep the 2 whose better member did best, and divide by the 2b = 4 members kept
    (not by the population of 8), so SGD and ClipUp see the same scale whatever fraction is kept."""
    nes = _nes(dim=30, pop=8)
    nes.top_directions = 0.5
    f = np.array([1.0, 0.0, 9.0, 8.0, 3.0, 2.0, 7.0, 0.5])  # pairs best: 1, 9, 3, 7 -> keep pairs 1 and 3
    grad, _ = nes.gradient(0, f)
    # ranks of f by hand: 0.0->0, 0.5->1, 1.0->2, 2.0->3, 3.0->4, 7.0->5, 8.0->6, 9.0->7; utilities rank/7 - 0.5
    w = np.array([0.0, (7 - 6) / 7, 0.0, (5 - 1) / 7])
    expected = _dense_sum(nes, 0, w) / (4 * nes.sigma)
    np.testing.assert_allclose(grad, expected, rtol=1e-5, atol=1e-6)


def test_tied_members_do_not_move_theta():
    """A tied antithetic pair gets weight 0, and a generation where every member ties (all solved CartPole at 500,
    or all failed) leaves theta and the optimizer state untouched, weight decay included."""
    table = NoiseTable(make_table(1 << 18, 0), 0)
    nes = NES(table, 5, 8, 0.02, make_optimizer("adam", 5, 0.01), True, weight_decay=0.005)
    theta = np.linspace(-1, 1, 5).astype(np.float32)
    before = {k: np.copy(v) for k, v in nes.optimizer.state_dict().items()}
    for fitness in (np.full(8, 500.0), np.full(8, np.nan)):
        new, info = nes.tell(theta, 0, fitness)
        assert np.array_equal(new, theta) and info.update_norm == 0.0 and info.grad_norm == 0.0
        after = nes.optimizer.state_dict()
        assert all(np.array_equal(before[k], after[k]) for k in before)
    new, info = nes.tell(theta, 0, np.arange(8.0))  # any ranking information: a real step
    assert info.update_norm > 0 and nes.optimizer.t == 1
    w, _ = nes.direction_weights(np.array([5.0, 5.0, 9.0, 1.0, 2.0, 2.0, 4.0, 3.0]))
    assert w[0] == 0.0 and w[2] == 0.0 and w[1] > 0 and w[3] > 0


@pytest.mark.parametrize("antithetic", [True, False])
def test_estimate_has_the_closed_form_scale_and_sign(antithetic):
    """On f(theta) = -|theta - c|^2 with raw (unshaped) fitness, E[1/(n sigma) sum_i f_i eps_i] is exactly the
    gradient -2 (theta - c). The members are built here from the table slices, the fitness weights are fed to the
    real estimate (the code path `gradient` uses after shaping), and a large population must land within 10%
    (measured: 1.7% antithetic, 3.6% plain; a wrong factor 2 or sign is off by 100% or 200%)."""
    dim, sigma, pop = 5, 0.5, 40000
    table = NoiseTable(make_table(1 << 20, 11), 11)
    nes = NES(table, dim, pop, sigma, make_optimizer("sgd", dim, 0.1, 0.0), antithetic)
    theta = np.array([0.3, -0.2, 0.5, 0.0, 0.1], np.float32)
    c = np.array([-0.4, 0.3, 0.1, 0.6, -0.2], np.float32)
    f = lambda x: -np.sum((x.astype(np.float64) - c) ** 2, axis=-1)  # noqa: E731
    eps = np.stack([table.table[o : o + dim] for o in nes.directions(0)]).astype(np.float64)
    if antithetic:
        weights = f(theta + sigma * eps) - f(theta - sigma * eps)  # members 2k = +, 2k+1 = -
        sample = nes.ask(theta, 0, [0, 1])
        np.testing.assert_allclose(sample, [theta + sigma * eps[0], theta - sigma * eps[0]], atol=1e-6)
    else:
        weights = f(theta + sigma * eps)
    grad = nes.estimate(0, weights, pop)
    true = -2.0 * (theta - c)
    assert np.linalg.norm(grad - true) < 0.1 * np.linalg.norm(true), (grad, true)


def test_training_code_does_not_import_torch():
    """torch costs ~190 MB per rank; only the user-facing torch_policy module needs it."""
    import subprocess
    import sys
    code = ("import sys, nes_mpi.trainer, nes_mpi.cli_train, nes_mpi.api, nes_mpi.checkpoint; "
            "sys.exit(1 if 'torch' in sys.modules else 0)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_torch_module_has_the_flat_layout():
    from nes_mpi.torch_policy import TorchPolicy, get_flat
    spec = SPECS[0]
    theta = initial_params(spec, 1)
    assert np.array_equal(get_flat(build_torch(spec, theta)), theta)
    assert sum(p.numel() for p in TorchPolicy(spec).parameters()) == spec.num_params
