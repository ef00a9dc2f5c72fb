"""Each strategy under real MPI: rank-count invariance, exact resume, the timesteps budget, version-1 checkpoints."""
from __future__ import annotations

import csv
import os
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from conftest import ROOT, info, nes
from nes_mpi import checkpoint as ckpt
from nes_mpi.runlog import TIMING

pytestmark = pytest.mark.mpi

# CartPole, 6 members over 1-3 ranks (uneven slices), a small table: seconds per run.
BASE = ["--env", "CartPole-v1", "--population", "6", "--eval-every", "2", "--eval-episodes", "2",
        "--noise-table-size", str(1 << 20), "--checkpoint-every", "2", "--check-every", "1"]
STRATEGIES = ["openai", "snes", "pgpe"]
V1_CARTPOLE = ROOT / "benchmarks/results/runs/cartpole/checkpoints/best.h5"


def full_state(path) -> dict:
    """Mean, the strategy's whole state (sigma vector, optimizer moments, step), statistics, counters, history."""
    s = ckpt.load(path)
    out = {"params": s.params, "counters": np.array([s.generation, s.timesteps, s.episodes])}
    out.update({f"strategy/{k}": np.asarray(v) for k, v in s.strategy.items()})
    out.update({f"obs_norm/{k}": np.asarray(v) for k, v in s.obs_norm.items()})
    out.update({f"history/{k}": np.asarray(v) for k, v in s.history.items() if k not in TIMING})
    return out


def assert_bitwise_equal(a: dict, b: dict):
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k], equal_nan=a[k].dtype.kind == "f"), k


def last(run: Path) -> Path:
    return ckpt.list_checkpoints(run)[0][1]


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_same_bits_on_1_2_and_3_ranks(tmp_path, mpiexec, strategy):
    states = []
    for n in (1, 2, 3):
        run = tmp_path / f"r{n}"
        nes(*BASE, "--strategy", strategy, "--generations", "4", "--run-dir", run, ranks=n, check=True)
        states.append(full_state(last(run)))
    assert_bitwise_equal(states[0], states[1])
    assert_bitwise_equal(states[0], states[2])
    if strategy != "openai":  # sigma is adapted per parameter and stored
        sigma = states[0]["strategy/sigma"]
        assert sigma.shape == states[0]["params"].shape and not np.all(sigma == np.float32(0.02))


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_stopped_and_resumed_equals_straight(tmp_path, mpiexec, strategy):
    straight, split = tmp_path / "straight", tmp_path / "split"
    nes(*BASE, "--strategy", strategy, "--generations", "6", "--run-dir", straight, ranks=2, check=True)
    nes(*BASE, "--strategy", strategy, "--generations", "3", "--run-dir", split, ranks=3, check=True)
    proc = nes(*BASE, "--strategy", strategy, "--generations", "6", "--run-dir", split, "--resume", "auto",
               ranks=1, check=True)
    assert "resuming" in proc.stdout
    assert_bitwise_equal(full_state(last(straight)), full_state(last(split)))
    with h5py.File(last(split), "r") as f:
        assert f.attrs["schema_version"] == ckpt.SCHEMA_VERSION and f["strategy"].attrs["name"] == strategy


def read_log(run):
    with open(run / "log.csv") as fh:
        return list(csv.DictReader(fh))


def test_timesteps_budget_stops_at_the_generation_that_crosses_it_and_resumes_exactly(tmp_path, mpiexec):
    small, big, straight = 1500, 3000, tmp_path / "straight"
    run = tmp_path / "run"
    proc = nes(*BASE, "--timesteps", small, "--generations", "1000", "--run-dir", run, ranks=2, check=True)
    rows = read_log(run)
    steps = [int(r["timesteps"]) for r in rows]
    assert steps[-1] >= small and steps[-2] < small, steps  # the first generation to reach the budget is the last
    assert int(rows[-1]["generation"]) < 1000
    assert ckpt.list_checkpoints(run)[0][0] == int(rows[-1]["generation"])  # and it is checkpointed
    assert "done" in proc.stdout
    # a finished budget resumes as a no-op; a larger one continues as if it had been set from the start
    nes(*BASE, "--timesteps", small, "--generations", "1000", "--run-dir", run, "--resume", "auto", ranks=2, check=True)
    assert len(read_log(run)) == len(rows)
    nes(*BASE, "--timesteps", big, "--generations", "1000", "--run-dir", run, "--resume", "auto", ranks=3, check=True)
    nes(*BASE, "--timesteps", big, "--generations", "1000", "--run-dir", straight, ranks=2, check=True)
    assert_bitwise_equal(full_state(last(straight)), full_state(last(run)))
    # generations stays a second limit
    gens = tmp_path / "gens"
    nes(*BASE, "--timesteps", 10**9, "--generations", "3", "--run-dir", gens, ranks=2, check=True)
    assert int(read_log(gens)[-1]["generation"]) == 3


def test_version_1_checkpoint_reads_for_info_and_eval(tmp_path):
    with h5py.File(V1_CARTPOLE, "r") as f:
        assert f.attrs["schema_version"] == 1
        old_t = int(f["optimizer"].attrs["t"])
    d = info(V1_CARTPOLE)
    assert d["strategy"] == "openai" and d["optimizer_step"] == old_t and d["strategy_state"] == ["opt_m", "opt_t",
                                                                                                   "opt_v"]
    proc = nes("eval", V1_CARTPOLE, "--episodes", "2", ranks=None, check=True)
    assert "return" in proc.stdout


def test_version_1_checkpoint_resumes_as_the_openai_strategy(tmp_path, mpiexec):
    """Only with --force (its checksum covers only the parameters: README, checkpoint format)."""
    old = ckpt.load(V1_CARTPOLE, legacy=True)
    src = tmp_path / "v1.h5"
    shutil.copy(V1_CARTPOLE, src)
    run = tmp_path / "run"
    g = old.generation
    proc = nes("--resume", src, "--generations", g + 2, "--run-dir", run, "--eval-every", "0", ranks=2)
    lines = [line for line in proc.stderr.splitlines() if line.startswith("nes_mpi: error")]
    assert proc.returncode == 2 and len(lines) == 1 and "schema version 1" in lines[0] and "--force" in lines[0], \
        proc.stderr
    assert not ckpt.list_checkpoints(run)
    nes("--resume", src, "--generations", g + 2, "--run-dir", run, "--eval-every", "0", "--force", ranks=2,
        check=True)
    new = ckpt.load(last(run))
    assert new.generation == g + 2 and new.config["strategy"] == "openai"
    # the optimizer continues from the old moments: one step per generation that moved the mean (an all-tied
    # generation of a solved CartPole moves nothing)
    moved = int(np.sum((new.history["generation"] > g) & (new.history["update_norm"] > 0)))
    assert moved >= 1 and int(new.strategy["opt_t"]) == int(old.strategy["opt_t"]) + moved
    assert set(new.strategy) == {"opt_t", "opt_m", "opt_v"} and not np.array_equal(new.params, old.params)
    with h5py.File(last(run), "r") as f:
        assert f.attrs["schema_version"] == ckpt.SCHEMA_VERSION and "optimizer" not in f
        assert ckpt.CONTENT_SHA in f.attrs
    assert np.array_equal(ckpt.load(src, legacy=True).params, old.params)  # the old file is untouched


def test_a_diverged_sigma_vector_is_caught_in_the_generation_it_happens(tmp_path, mpiexec):
    """The cross-rank hash covers the whole strategy state, not only the mean (which would differ a generation later)."""
    os.environ["NES_MPI_INJECT_DIVERGENCE"] = "1:2:sigma"
    try:
        proc = nes(*BASE, "--strategy", "snes", "--generations", "6", "--run-dir", tmp_path / "div", ranks=2)
    finally:
        del os.environ["NES_MPI_INJECT_DIVERGENCE"]
    assert proc.returncode == 1
    lines = [line for line in proc.stderr.splitlines() if line.startswith("nes_mpi: error")]
    assert len(lines) == 1 and "diverged at generation 2" in lines[0] and "ranks [1]" in lines[0], proc.stderr


def test_changing_the_strategy_on_resume_is_refused_in_one_line_unless_forced(tmp_path, mpiexec):
    run = tmp_path / "run"
    nes(*BASE, "--generations", "2", "--run-dir", run, ranks=2, check=True)
    before = (run / "checkpoints" / "ckpt_000002.h5").read_bytes()
    proc = nes(*BASE, "--generations", "4", "--run-dir", run, "--resume", "auto", "--strategy", "snes", ranks=2)
    lines = [line for line in proc.stderr.splitlines() if line.startswith("nes_mpi: error")]
    assert proc.returncode == 2 and len(lines) == 1 and "cannot change strategy 'openai' -> 'snes'" in lines[0], proc.stderr
    assert (run / "checkpoints" / "ckpt_000002.h5").read_bytes() == before
    assert [g for g, _ in ckpt.list_checkpoints(run)] == [2]
    # forced: the stored mean goes on under the new strategy, with its own fresh sigma and optimizer state
    old = ckpt.load(run / "checkpoints" / "ckpt_000002.h5")
    proc = nes(*BASE, "--generations", "3", "--run-dir", run, "--resume", "auto", "--strategy", "snes", "--force",
               ranks=2, check=True)
    assert "fresh state" in proc.stdout
    new = ckpt.load(run / "checkpoints" / "ckpt_000003.h5")
    assert new.config["strategy"] == "snes" and new.config["optimizer"] == "adam"  # the stored optimizer stays
    assert int(new.strategy["opt_t"]) == 1 and new.strategy["sigma"].shape == old.params.shape
