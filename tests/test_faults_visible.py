"""Faults inside a run are visible: systematic failures stop the run, late bad input is one line, best.h5 is kept."""
from __future__ import annotations

import csv
import math

import pytest

from conftest import error_lines, info, nes
from nes_mpi import checkpoint as ckpt
from nes_mpi.rollout import episode_seed
from nes_mpi.trainer import EVAL_STREAM

pytestmark = pytest.mark.mpi

SMALL = ["--noise-table-size", str(1 << 20), "--eval-every", "0"]


def test_a_rank_whose_env_always_fails_stops_the_run_with_the_last_good_state(tmp_path, mpiexec):
    run = tmp_path / "run"
    proc = nes("--env", "faulty_envs:RaiseOnRank1", "--generations", "12", "--population", "16", "--run-dir", run,
               "--checkpoint-every", "2", *SMALL, ranks=2, timeout=240)
    assert proc.returncode == 1, proc.stderr
    lines = error_lines(proc.stderr)
    assert len(lines) == 1, proc.stderr
    assert "systematic failure: every member on rank 1 (8 of 8) failed in each of the last 3 generations (1-3)" in lines[0]
    assert "Traceback" not in proc.stderr and "done:" not in proc.stdout
    good = ckpt.checkpoint_path(run, 0)
    assert str(good) in lines[0] and info(good)["generation"] == 0
    assert [g for g, _ in ckpt.list_checkpoints(run)] == [2, 0]  # the regular one at 2 and the good state
    assert ckpt.load(good).history["generation"].tolist() == []  # its history ends where its state does
    assert ckpt.load(ckpt.checkpoint_path(run, 2)).history["generation"].tolist() == [1, 2]
    assert not (run / ".nes_mpi.lock").exists()  # released on this exit path too


def test_tolerated_failures_and_the_switch_to_never_stop(tmp_path, mpiexec):
    run = tmp_path / "run"
    proc = nes("--env", "faulty_envs:RaiseOnRank1", "--generations", "4", "--population", "16", "--run-dir", run,
               "--fail-generations", "0", *SMALL, ranks=2, timeout=240)
    assert proc.returncode == 0, proc.stderr
    with open(run / "log.csv") as fh:
        assert [int(r["failed_members"]) for r in csv.DictReader(fh)] == [8, 8, 8, 8]


LATE_BAD_INPUT = [
    (["--env", "os:system"], "os:system(**env_kwargs) failed"),
    (["--env", "faulty_envs:DictObs"], "observation space must be a flat Box"),
    (["--run-dir", "FILE"], "exists and is not a directory"),
]


@pytest.mark.parametrize("args,message", LATE_BAD_INPUT, ids=["os_system", "dict_obs", "run_dir_file"])
def test_late_bad_input_is_one_line_and_exit_2(tmp_path, mpiexec, args, message):
    regular = tmp_path / "a_file"
    regular.write_text("not a directory\n")
    args = [str(regular) if a == "FILE" else a for a in args]
    proc = nes("--run-dir", tmp_path / "run", "--generations", "2", "--population", "6", *SMALL, *args,
               ranks=3, timeout=180)
    assert proc.returncode == 2, proc.stderr
    lines = error_lines(proc.stderr)
    assert len(lines) == 1 and message in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert regular.read_text() == "not a directory\n"


def test_generation_0_evaluation_counts_for_best(tmp_path, mpiexec):
    run = tmp_path / "run"
    proc = nes("--env", "CartPole-v1", "--generations", "3", "--population", "8", "--eval-every", "10",
               "--eval-episodes", "2", "--noise-table-size", str(1 << 20), "--run-dir", run, ranks=2, check=True)
    best = info(run / "checkpoints" / "best.h5")
    assert best["generation"] == 0 and best["eval_return"] == best["best_eval_return"] > 0
    assert "(best -inf)" not in proc.stdout


def test_one_failed_evaluation_episode_does_not_stop_best_from_updating(tmp_path, mpiexec):
    run = tmp_path / "run"
    bad = episode_seed(0, 2, 0, 0, EVAL_STREAM)  # episode 0 of the evaluation at generation 2
    proc = nes("--env", "faulty_envs:NanObsOnSeed", "--env-kwargs", f'{{"bad_seed": {bad}}}', "--generations", "2",
               "--population", "8", "--eval-every", "2", "--eval-episodes", "3", "--noise-table-size", str(1 << 20),
               "--run-dir", run, "--no-obs-norm", ranks=2, check=True)
    assert "1 of 3 evaluation episodes failed" in proc.stderr
    with open(run / "log.csv") as fh:
        evals = {int(r["generation"]): float(r["eval_return"]) for r in csv.DictReader(fh) if r["eval_return"]}
    assert set(evals) == {0, 2} and all(math.isfinite(v) for v in evals.values())
    best = info(run / "checkpoints" / "best.h5")
    assert best["best_eval_return"] == pytest.approx(max(evals.values()))
