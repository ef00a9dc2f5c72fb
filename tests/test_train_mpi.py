"""The real package under real MPI: identical parameters, learning, bad input, faults."""
from __future__ import annotations

import csv
import json
import math

import pytest

from conftest import episode_by_hand, error_lines, info, nes

pytestmark = pytest.mark.mpi

SMALL = ["--eval-every", "0", "--noise-table-size", str(1 << 20)]


def read_log(run_dir):
    with open(run_dir / "log.csv") as fh:
        return list(csv.DictReader(fh))


@pytest.mark.parametrize("ranks", [1, 2, 3])
def test_cartpole_reaches_475(tmp_path, mpiexec, ranks):
    run = tmp_path / "cp"
    proc = nes("--env", "CartPole-v1", "--generations", "40", "--population", "32", "--eval-every", "5",
               "--eval-episodes", "6", "--run-dir", run, "--check-every", "1", ranks=ranks, check=True)
    rows = read_log(run)
    evals = [float(r["eval_return"]) for r in rows if r["eval_return"]]
    assert max(evals) >= 475, evals
    assert f"{ranks} rank(s)" in proc.stdout
    assert int(rows[-1]["generation"]) == 40 and int(rows[-1]["timesteps"]) > 0


def test_parameters_identical_on_all_ranks_and_across_rank_counts(tmp_path, mpiexec):
    """Hopper (early terminations, uneven slices): same bits with 1, 2 and 3 ranks, checked every generation."""
    shas = {}
    for n in (1, 2, 3):
        run = tmp_path / f"r{n}"
        nes("--env", "Hopper-v5", "--generations", "4", "--population", "10", "--max-episode-steps", "150",
            "--check-every", "1", "--run-dir", run, "--eval-every", "2", "--eval-episodes", "3",
            ranks=n, check=True)
        shas[n] = info(run / "checkpoints" / "ckpt_000004.h5")
    assert shas[1]["params_sha256"] == shas[2]["params_sha256"] == shas[3]["params_sha256"]
    assert shas[1]["timesteps"] == shas[2]["timesteps"] == shas[3]["timesteps"]
    assert shas[1]["eval_return"] == shas[3]["eval_return"]
    logs = [read_log(tmp_path / f"r{n}") for n in (1, 2, 3)]
    for col in ("return_mean", "return_max", "grad_norm", "eval_return"):
        assert [r[col] for r in logs[0]] == [r[col] for r in logs[1]] == [r[col] for r in logs[2]]


def test_mujoco_task_improves(tmp_path, mpiexec):
    run = tmp_path / "hc"
    nes("--env", "HalfCheetah-v5", "--generations", "12", "--population", "32", "--max-episode-steps", "500",
        "--eval-every", "12", "--eval-episodes", "2", "--run-dir", run, ranks=2, check=True, timeout=600)
    rows = read_log(run)
    first, last = float(rows[0]["eval_return"]), float(rows[-1]["eval_return"])
    assert int(rows[0]["generation"]) == 0
    assert last > first + 200, (first, last)


def test_user_environment_by_module_path(tmp_path, mpiexec):
    run = tmp_path / "pt"
    nes("--env", "faulty_envs:PointEnv", "--generations", "30", "--population", "20", "--run-dir", run,
        "--eval-every", "30", "--eval-episodes", "4", "--sigma", "0.1", "--lr", "0.05", *SMALL[2:], ranks=2, check=True)
    rows = read_log(run)
    assert float(rows[-1]["eval_return"]) > float(rows[0]["eval_return"])


def test_user_environment_registered_by_its_module(tmp_path, mpiexec):
    run = tmp_path / "reg"
    nes("--env", "faulty_envs:PointEnv-v0", "--generations", "2", "--population", "8", "--run-dir", run,
        "--eval-every", "1", "--eval-episodes", "2", *SMALL[2:], ranks=2, check=True)
    rows = read_log(run)
    assert int(rows[-1]["timesteps"]) == 2 * 8 * 40  # the registered step limit applies


@pytest.mark.parametrize("env_id", ["InvertedPendulum-v5", "HalfCheetah-v5", "Hopper-v5", "Walker2d-v5",
                                    "Ant-v5", "Humanoid-v5", "CartPole-v1", "Pendulum-v1", "Acrobot-v1"])
def test_every_supported_task_runs(tmp_path, env_id):
    run = tmp_path / "t"
    nes("--env", env_id, "--generations", "2", "--population", "4", "--max-episode-steps", "25",
        "--eval-every", "2", "--eval-episodes", "1", "--run-dir", run, *SMALL[2:], ranks=1, check=True)
    d = info(run / "checkpoints" / "ckpt_000002.h5")
    assert d["generation"] == 2 and d["timesteps"] > 0


@pytest.mark.parametrize("fault", ["nan_obs", "nan_reward", "raise"])
def test_faulty_members_get_the_worst_fitness_and_are_counted(tmp_path, mpiexec, fault):
    run = tmp_path / fault
    proc = nes("--env", "faulty_envs:PointEnv", "--env-kwargs", f'{{"fault": "{fault}", "fault_rate": 0.3}}',
               "--generations", "5", "--population", "20", "--run-dir", run, *SMALL, ranks=2, check=True)
    rows = read_log(run)
    failed = sum(int(r["failed_members"]) for r in rows)
    assert failed > 0
    assert all(math.isfinite(float(r["param_norm"])) for r in rows)
    d = info(run / "checkpoints" / "ckpt_000005.h5")
    assert d["generation"] == 5
    assert "member" in proc.stderr  # each failure is reported with its member index


def test_diverged_parameters_are_caught_and_named(tmp_path, mpiexec):
    """Each rank on its own emulated node: a node of several ranks holds one state, which a rank's private
    divergence cannot outlive past the next update (tests/test_node_split.py covers that case)."""
    import os
    os.environ.update(NES_MPI_INJECT_DIVERGENCE="2:3", MPIR_CVAR_NUM_CLIQUES="3")
    try:
        proc = nes("--env", "CartPole-v1", "--generations", "10", "--population", "12", "--check-every", "2",
                   "--run-dir", tmp_path / "div", *SMALL, ranks=3, timeout=120)
    finally:
        del os.environ["NES_MPI_INJECT_DIVERGENCE"], os.environ["MPIR_CVAR_NUM_CLIQUES"]
    assert proc.returncode == 1
    lines = error_lines(proc.stderr)
    assert len(lines) == 1 and "diverged at generation 4" in lines[0] and "ranks [2]" in lines[0], proc.stderr


def test_a_crash_on_one_rank_ends_the_whole_job(tmp_path, mpiexec):
    proc = nes("--env", "faulty_envs:WrongShapeOnRank1", "--generations", "20", "--population", "8",
               "--run-dir", tmp_path / "crash", *SMALL, ranks=2, timeout=120)
    assert proc.returncode != 0
    assert "rank 1" in proc.stderr and "fatal" in proc.stderr, (proc.returncode, proc.stderr)
    status = json.loads((tmp_path / "crash" / "status.json").read_text())
    assert status["state"] == "failed" and status["reason"].startswith("rank 1: "), status


BAD_INPUT = [
    (["--env", "NoSuchEnv-v0"], "unknown environment id"),
    (["--env", "Hopper"], "did you mean"),
    (["--sigma", "abc"], "bad value for sigma"),
    (["--optimizer", "rmsprop"], "invalid choice"),
    (["--population", "1", "--no-antithetic"], "at least 2"),
    (["--population", "7"], "even with antithetic"),
    (["--population", "2"], "more ranks"),
    (["--config", "/nonexistent/run.toml"], "config file not found"),
    (["--generations", "-3"], "--generations"),
    (["--no-such-option"], "unrecognized arguments"),
    (["--env", "faulty_envs:NoSuchClass"], "has no attribute"),
    (["--strategy", "cmaes"], "invalid choice"),
    (["--strategy", "pgpe", "--no-antithetic"], "needs --antithetic"),
    (["--strategy", "snes", "--top-directions", "0.5"], "openai only"),
    (["--sigma-max-change", "1.5"], "--sigma-max-change"),
    (["--timesteps", "-1"], "--timesteps"),
]


@pytest.mark.parametrize("args,message", BAD_INPUT, ids=[m for _, m in BAD_INPUT])
def test_bad_input_is_one_line_from_rank_0_and_exit_2(tmp_path, mpiexec, args, message):
    run = tmp_path / "bad"
    proc = nes("--env", "CartPole-v1", "--run-dir", run, *args, ranks=3, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = error_lines(proc.stderr)
    assert len(lines) == 1 and message in lines[0], proc.stderr
    assert not (run / "checkpoints").exists()


def test_refuses_a_bare_srun_with_one_rank_per_task(tmp_path):
    env_extra = {"SLURM_STEP_NUM_TASKS": "4"}
    import subprocess
    import sys

    from conftest import child_env
    env = {**child_env(), **env_extra}
    proc = subprocess.run([sys.executable, "-m", "nes_mpi", "--env", "CartPole-v1", "--run-dir", str(tmp_path / "x")],
                          capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 2 and "--mpi=pmi2" in proc.stderr


def test_help_lists_every_option():
    proc = nes("--help", ranks=None, check=True)
    for opt in ("--env", "--generations", "--population", "--sigma", "--lr", "--optimizer", "--weight-decay",
                "--strategy", "--timesteps", "--sigma-lr", "--sigma-max-change",
                "--seed", "--policy", "--hidden-sizes", "--activation", "--episodes-per-member",
                "--max-episode-steps", "--run-dir", "--eval-every", "--log-every", "--resume", "--config"):
        assert opt in proc.stdout


def test_no_obs_norm_feeds_the_trainer_raw_observations(tmp_path, mpiexec):
    """End to end: with --no-obs-norm the generation-0 evaluation equals an episode of the initial policy stepped
    by hand on raw observations (in the hundreds here), and differs from one on observations clipped to +-5."""
    import numpy as np
    from faulty_envs import LargeObsPointEnv
    from nes_mpi.policy import initial_params, spec_for
    from nes_mpi.rollout import episode_seed

    EVAL_STREAM = 1  # nes_mpi.trainer.EVAL_STREAM; importing the trainer would start MPI in this process
    run = tmp_path / "raw"
    nes("--env", "faulty_envs:LargeObsPointEnv", "--no-obs-norm", "--hidden-sizes", "8", "--generations", "1",
        "--population", "2", "--eval-every", "1", "--eval-episodes", "1", "--noise-table-size", str(1 << 20),
        "--run-dir", run, ranks=1, check=True)
    first = read_log(run)[0]
    assert first["generation"] == "0"
    spec = spec_for(LargeObsPointEnv(), "mlp", (8,), "tanh")
    theta = initial_params(spec, 0)
    seed = episode_seed(0, 0, 0, 0, EVAL_STREAM)
    raw = episode_by_hand(LargeObsPointEnv(), spec, theta, seed, lambda o: o)
    assert float(first["eval_return"]) == pytest.approx(raw, rel=1e-12)
    assert raw != pytest.approx(episode_by_hand(LargeObsPointEnv(), spec, theta, seed, lambda o: np.clip(o, -5, 5)),
                                rel=1e-6)
