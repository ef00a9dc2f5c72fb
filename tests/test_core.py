"""The pure core (shaping, noise, gradient estimate, optimizers, policy, config) without MPI."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from nes_mpi.config import Config, ConfigError, load_toml, merge_options, strategy_options
from nes_mpi.noise import CHUNK, NoiseTable, fill_chunks, make_table, n_chunks
from nes_mpi.optimizers import GD, SGD, Adam, ClipUp, make_optimizer
from nes_mpi.policy import BatchPolicy, PolicySpec, initial_params
from nes_mpi.torch_policy import build_torch
from nes_mpi.shaping import centered_ranks, replace_nonfinite
from nes_mpi.strategies import OpenAIES, Sampling


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


def test_weighted_sum_in_parts_has_the_bits_of_the_whole():
    """The node-cooperative update sums ranges of the dimensions on different ranks: any split, same bits."""
    t = NoiseTable(make_table(1 << 18, 4), 4)
    dim = 1001
    offsets = t.offsets(2, 40, dim)
    w = np.random.default_rng(1).standard_normal(40)
    for squared in (False, True):
        whole = t.weighted_sum(w, offsets, dim, squared)
        for cuts in ([0, dim], [0, 1, dim], [0, 334, 668, dim], [0, 500, 501, 999, dim]):
            parts = []
            for lo, hi in zip(cuts[:-1], cuts[1:]):
                out = np.zeros(hi - lo, dtype=np.float32)
                t.weighted_sum_part(w, offsets, lo, hi, out, squared)
                parts.append(out)
            assert np.concatenate(parts).astype(np.float64).tobytes() == whole.tobytes()



TABLE = NoiseTable(make_table(1 << 18, 0), 0)


def _nes(dim=20, pop=200, sigma=0.1, lr=0.05, antithetic=True, opt="sgd", top_directions=1.0):
    return OpenAIES(Sampling(TABLE, dim, pop, antithetic), sigma, make_optimizer(opt, lr, 0.0 if opt == "sgd" else 0.9),
                    top_directions=top_directions)


def test_ask_builds_mirrored_members_from_the_shared_noise():
    nes = _nes(dim=10, pop=6)
    theta = np.arange(10, dtype=np.float32)
    state = nes.init(theta)
    p = nes.ask(state, 3, range(6))
    np.testing.assert_allclose(p[0] - theta, -(p[1] - theta), atol=1e-6)
    # any subset of members is bit-identical to the same rows of the whole population
    assert np.array_equal(nes.ask(state, 3, [4, 5]), p[4:6])
    assert not np.array_equal(p[0], p[2])


@pytest.mark.parametrize("antithetic", [True, False])
def test_gradient_estimate_points_uphill_on_a_quadratic(antithetic):
    """F(x) = -|x - c|^2: the NES estimate must align with the true gradient direction -2(x - c)."""
    dim = 20
    nes = _nes(dim=dim, pop=400, antithetic=antithetic)
    c = np.linspace(-1, 1, dim).astype(np.float32)
    theta = np.zeros(dim, np.float32)
    params = nes.ask(nes.init(theta), 0, range(400))
    fitness = -np.sum((params - c) ** 2, axis=1)
    grad, _ = nes.gradient(0, fitness)
    true = 2 * (c - theta)
    cos = grad @ true / (np.linalg.norm(grad) * np.linalg.norm(true))
    assert cos > 0.8


def test_nes_solves_a_quadratic():
    dim = 20
    nes = _nes(dim=dim, pop=100, lr=0.05)
    c = np.linspace(-1, 1, dim).astype(np.float32)
    state = nes.init(np.zeros(dim, np.float32))
    start = np.sum(c**2)
    for g in range(150):
        params = nes.ask(state, g, range(100))
        state, info = nes.tell(state, g, -np.sum((params - c) ** 2, axis=1))
    assert np.sum((state["mean"] - c) ** 2) < 0.05 * start


def test_nan_fitness_never_reaches_the_parameters():
    nes = _nes(dim=5, pop=10)
    f = np.arange(10, dtype=np.float64)
    f[[2, 7]] = np.nan
    state, info = nes.tell(nes.init(np.zeros(5, np.float32)), 0, f)
    assert info.n_failed == 2 and np.isfinite(state["mean"]).all()


def test_population_rules():
    with pytest.raises(ValueError):
        _nes(pop=7, antithetic=True)
    with pytest.raises(ValueError):
        _nes(pop=1, antithetic=False)


@pytest.mark.parametrize("cls", [Adam, SGD, ClipUp, GD])
def test_optimizers_ascend_and_are_pure(cls):
    opt = cls(0.1)
    state = opt.init(3)
    theta = np.zeros(3, np.float32)
    for _ in range(5):
        theta, state = opt.step(state, theta, np.array([1.0, -2.0, 0.0]))
    assert theta[0] > 0 and theta[1] < 0 and theta[2] == 0 and int(state["t"]) == 5
    frozen = {k: np.copy(v) for k, v in state.items()}
    g = np.array([0.3, 0.1, -0.7])
    first = opt.step(state, theta, g)
    assert all(np.array_equal(state[k], frozen[k]) for k in state)  # the input state is untouched
    again = opt.step(frozen, theta.copy(), g)  # same state in, same bits out
    assert np.array_equal(first[0], again[0]) and all(np.array_equal(first[1][k], again[1][k]) for k in state)


def test_adam_first_step_is_lr_sized():
    opt = Adam(0.01)
    theta, _ = opt.step(opt.init(2), np.zeros(2, np.float32), np.array([100.0, -0.001]))
    np.testing.assert_allclose(theta, [0.01, -0.01], rtol=1e-3)


def test_clipup_caps_speed():
    opt = ClipUp(0.1, momentum=0.9, max_speed=0.15)
    state, theta = opt.init(4), np.zeros(4, np.float32)
    for _ in range(50):
        new, state = opt.step(state, theta, np.ones(4))
        assert np.linalg.norm(new - theta) <= 0.15 + 1e-6
        theta = new


SPECS = [
    PolicySpec("mlp", 17, 6, False, (64, 64), "tanh", (-1.0,) * 6, (1.0,) * 6),
    PolicySpec("mlp", 4, 2, True, (32,), "relu"),
    PolicySpec("linear", 11, 3, False, (), "tanh", (-0.4,) * 3, (0.4,) * 3),
    PolicySpec("linear", 11, 3, False, (), "tanh", (-0.4,) * 3, (0.4,) * 3, clip_actions=False),
]


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: f"{s.kind}-{'disc' if s.discrete else 'box'}"
                                                    f"{'' if s.clip_actions else '-raw'}")
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
            inside = (np.all(batched[i] >= np.array(spec.action_low) - 1e-6)
                      and np.all(batched[i] <= np.array(spec.action_high) + 1e-6))
            assert inside or not spec.clip_actions
    if not spec.discrete and not spec.clip_actions:  # raw actions: exactly W x + b, out of bounds here
        w = P[:, : spec.obs_dim * spec.act_dim].reshape(9, spec.act_dim, spec.obs_dim)
        np.testing.assert_allclose(batched, np.einsum("bij,bj->bi", w, x) + P[:, -spec.act_dim:], rtol=1e-5, atol=1e-5)
        assert np.abs(batched).max() > 0.4
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
    assert {"cartpole", "halfcheetah", "hopper", "inverted_pendulum", "walker2d"} <= set(names)
    for name in names:
        for strategy in ("openai", "snes", "pgpe"):
            cfg = Config.from_dict(strategy_options({**load_toml(name), "strategy": strategy})).validate()
            assert cfg.env.endswith(("-v1", "-v5")) and cfg.timesteps > 0 and cfg.strategy == strategy


def test_a_preset_strategy_brings_its_own_defaults_and_the_command_line_overrides_it():
    """cartpole.toml sets strategy = "snes": its [openai] learning rate must not leak into snes."""
    snes = Config.from_dict(strategy_options(load_toml("cartpole"))).validate()
    assert (snes.strategy, snes.optimizer, snes.lr) == ("snes", "gd", 1.0)
    openai = Config.from_dict(strategy_options(merge_options(load_toml("cartpole"), {"strategy": "openai"}))).validate()
    assert (openai.strategy, openai.optimizer, openai.lr) == ("openai", "adam", 0.01)


def test_shaping_is_each_papers_unless_set_and_reaches_the_strategy():
    from nes_mpi.shaping import centered_ranks, nes_utilities, standardized
    from nes_mpi.strategies import make_strategy
    assert [Config.from_dict({"strategy": s}).shaping for s in ("openai", "snes", "pgpe")] == ["ranks", "utilities", "ranks"]
    cfg = Config.from_dict({"shaping": "zscore", "optimizer": "gd", "lr": 3e-4}).validate()
    assert make_strategy(cfg, TABLE, 5).shaping is standardized
    assert make_strategy(Config.from_dict({"strategy": "snes"}), TABLE, 5).shaping is nes_utilities
    assert make_strategy(Config.from_dict({}), TABLE, 5).shaping is centered_ranks
    with pytest.raises(ConfigError, match="--shaping must be one of ranks, utilities, zscore"):
        Config.from_dict({"shaping": "raw"}).validate()


def test_one_config_files_set_only_the_task_and_its_budget():
    """benchmarks/one_config: the README's "one configuration" rows are the trainer's defaults."""
    files = sorted((Path(__file__).resolve().parents[1] / "benchmarks" / "one_config").glob("*.toml"))
    assert len(files) >= 4
    for f in files:
        data = load_toml(f)
        assert set(data) == {"env", "timesteps", "generations"}, f
        Config.from_dict(data).validate()


def test_strategy_tables_and_auto_defaults(tmp_path):
    f = tmp_path / "run.toml"
    f.write_text('sigma = 0.05\nlr = 0.3\n[openai]\nlr = 0.02\n[snes]\nsigma-lr = 0.1\n')
    from_file = load_toml(f)
    flat = lambda cli, default="openai": strategy_options(merge_options(from_file, cli), default)
    assert Config.from_dict(flat({})).lr == 0.02  # the table for the strategy beats the top level
    assert Config.from_dict(flat({"lr": "0.5"})).lr == 0.5  # the command line beats both
    snes = Config.from_dict(flat({"strategy": "snes"}))
    assert (snes.lr, snes.sigma_lr, snes.optimizer, snes.weight_decay, snes.sigma) == (0.3, 0.1, "gd", 0.0, 0.05)
    assert flat({}, default="snes") == {"sigma": 0.05, "lr": 0.3, "sigma_lr": 0.1}  # resuming a snes run: its table
    # unset options take each strategy's own defaults
    assert (Config().optimizer, Config().lr, Config().weight_decay) == ("adam", 0.01, 0.005)
    pgpe = Config(strategy="pgpe")
    assert (pgpe.optimizer, pgpe.lr, pgpe.weight_decay, pgpe.sigma_lr, pgpe.sigma_max_change) == ("clipup", 0.04, 0.0, 0.0, 0.2)
    assert (Config(strategy="snes").optimizer, Config(strategy="snes").lr) == ("gd", 1.0)
    with pytest.raises(ConfigError, match="must be a table"):
        (tmp_path / "bad.toml").write_text("snes = 3\n")
        load_toml(tmp_path / "bad.toml")


def _dense_sum(nes, generation, weights):
    """sum_k weights[k] eps_k straight from the table slices, in float64 (independent of weighted_sum)."""
    s = nes.sampling
    offsets = s.directions(generation)
    return sum(float(w) * s.noise.table[o : o + s.dim].astype(np.float64) for w, o in zip(weights, offsets))


def test_top_directions_keep_only_the_best_pairs_and_average_over_them():
    """ARS: of 4 directions keep the 2 whose better member did best, and divide by the 2b = 4 members kept
    (not by the population of 8), so SGD and ClipUp see the same scale whatever fraction is kept."""
    nes = _nes(dim=30, pop=8, top_directions=0.5)
    f = np.array([1.0, 0.0, 9.0, 8.0, 3.0, 2.0, 7.0, 0.5])  # pairs best: 1, 9, 3, 7 -> keep pairs 1 and 3
    grad, _ = nes.gradient(0, f)
    # ranks of f by hand: 0.0->0, 0.5->1, 1.0->2, 2.0->3, 3.0->4, 7.0->5, 8.0->6, 9.0->7; utilities rank/7 - 0.5
    w = np.array([0.0, (7 - 6) / 7, 0.0, (5 - 1) / 7])
    expected = _dense_sum(nes, 0, w) / (4 * nes.sigma)
    np.testing.assert_allclose(grad, expected, rtol=1e-5, atol=1e-6)


def test_tied_members_do_not_move_theta():
    """A tied antithetic pair gets weight 0, and a generation where every member ties (all solved CartPole at 500,
    or all failed) leaves theta and the optimizer state untouched, weight decay included."""
    nes = OpenAIES(Sampling(TABLE, 5, 8), 0.02, make_optimizer("adam", 0.01), weight_decay=0.005)
    state = nes.init(np.linspace(-1, 1, 5).astype(np.float32))
    before = {k: np.copy(v) for k, v in state.items()}
    for fitness in (np.full(8, 500.0), np.full(8, np.nan)):
        new, info = nes.tell(state, 0, fitness)
        assert info.update_norm == 0.0 and info.grad_norm == 0.0
        assert new.keys() == before.keys() and all(np.array_equal(before[k], new[k]) for k in before)
    new, info = nes.tell(state, 0, np.arange(8.0))  # any ranking information: a real step
    assert info.update_norm > 0 and int(new["opt_t"]) == 1
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
    nes = OpenAIES(Sampling(table, dim, pop, antithetic), sigma, make_optimizer("sgd", 0.1, 0.0))
    theta = np.array([0.3, -0.2, 0.5, 0.0, 0.1], np.float32)
    c = np.array([-0.4, 0.3, 0.1, 0.6, -0.2], np.float32)
    f = lambda x: -np.sum((x.astype(np.float64) - c) ** 2, axis=-1)  # noqa: E731
    eps = np.stack([table.table[o : o + dim] for o in nes.sampling.directions(0)]).astype(np.float64)
    if antithetic:
        weights = f(theta + sigma * eps) - f(theta - sigma * eps)  # members 2k = +, 2k+1 = -
        sample = nes.ask(nes.init(theta), 0, [0, 1])
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
