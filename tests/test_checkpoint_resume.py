"""HDF5 checkpoints, exact resume, crash recovery, signals and bad checkpoint files -- real MPI, real files."""
from __future__ import annotations

import csv
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from conftest import MPIEXEC, child_env, error_lines, info, nes
from nes_mpi import checkpoint as ckpt
from nes_mpi.runlog import DETERMINISTIC

pytestmark = pytest.mark.mpi

# Hopper: early terminations, observation statistics that matter; 10 members split unevenly over 3 ranks.
BASE = ["--env", "Hopper-v5", "--population", "10", "--max-episode-steps", "120", "--eval-every", "2",
        "--eval-episodes", "3", "--noise-table-size", str(1 << 20), "--checkpoint-every", "2"]


def state_of(path) -> dict:
    """Everything that defines where a run is: parameters, optimizer, normalisation, counters, history."""
    s = ckpt.load(path)
    return {
        "params": s.params, **{f"opt_{k}": np.asarray(v) for k, v in s.optimizer.items()},
        **{f"norm_{k}": np.asarray(v) for k, v in s.obs_norm.items()},
        "counters": np.array([s.generation, s.timesteps, s.episodes]),
        **{f"hist_{c}": np.asarray(s.history[c]) for c in DETERMINISTIC},
    }


def assert_same_state(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        assert np.array_equal(a[k], b[k], equal_nan=a[k].dtype.kind == "f"), k


def final(run, g):
    return run / "checkpoints" / f"ckpt_{g:06d}.h5"


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    run = tmp_path_factory.mktemp("straight") / "run"
    nes(*BASE, "--generations", "6", "--run-dir", run, ranks=2, check=True)
    return run


@pytest.mark.parametrize("ranks_first,ranks_second", [(2, 2), (1, 3), (3, 2)])
def test_interrupted_and_resumed_equals_straight(tmp_path, mpiexec, straight, ranks_first, ranks_second):
    run = tmp_path / "run"
    nes(*BASE, "--generations", "3", "--run-dir", run, ranks=ranks_first, check=True)
    proc = nes(*BASE, "--generations", "6", "--run-dir", run, "--resume", "auto", ranks=ranks_second, check=True)
    assert "resuming" in proc.stdout
    assert_same_state(state_of(final(straight, 6)), state_of(final(run, 6)))
    # the CSV log is rewritten from the checkpoint and continued: same deterministic columns
    rows = [list(csv.DictReader(open(r / "log.csv"))) for r in (straight, run)]
    assert [[r[c] for c in DETERMINISTIC] for r in rows[0]] == [[r[c] for c in DETERMINISTIC] for r in rows[1]]


def test_resume_auto_in_an_empty_run_dir_starts_fresh(tmp_path, mpiexec, straight):
    run = tmp_path / "run"
    proc = nes(*BASE, "--generations", "6", "--run-dir", run, "--resume", "auto", ranks=2, check=True)
    assert "starting a new run" in proc.stdout
    assert_same_state(state_of(final(straight, 6)), state_of(final(run, 6)))


def _rank_pids(tag: str = "tag") -> dict[int, int]:
    """PMI rank -> pid of the python ranks started with NES_TEST_TAG=tag (read from /proc)."""
    out = {}
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            environ = (p / "environ").read_bytes().split(b"\0")
            cmd = (p / "cmdline").read_bytes()
        except OSError:
            continue
        if b"nes_mpi" not in cmd or b"mpiexec" in cmd:
            continue
        env = dict(e.split(b"=", 1) for e in environ if b"=" in e)
        if env.get(b"NES_TEST_TAG") == tag.encode():
            out[int(env.get(b"PMI_RANK", b"-1"))] = int(p.name)
    return out


def _launch(args, ranks):
    env = {**child_env(), "NES_TEST_TAG": "tag"}
    return subprocess.Popen([MPIEXEC, "-n", str(ranks), sys.executable, "-m", "nes_mpi", *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)


def _wait_for(path: Path, proc, timeout=120):
    t0 = time.time()
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.time() - t0 < timeout, f"{path} never appeared"
        time.sleep(0.05)


@pytest.mark.parametrize("sig", [signal.SIGUSR1, signal.SIGTERM, signal.SIGINT])
def test_signal_on_one_rank_checkpoints_and_exits_75(tmp_path, mpiexec, straight, sig):
    run = tmp_path / "run"
    proc = _launch([*BASE, "--generations", "100000", "--run-dir", run], ranks=3)
    _wait_for(final(run, 2), proc)
    pids = _rank_pids()
    assert sorted(pids) == [0, 1, 2], pids
    os.kill(pids[1], sig)  # only rank 1 hears it
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 75, err
    assert "stop requested" in out
    newest = ckpt.list_checkpoints(run)[0][1]
    g = info(newest)["generation"]
    assert g >= 2
    # the signal-triggered checkpoint is a proper resume point: continue to 6 ... or compare if we passed it
    if g <= 6:
        nes(*BASE, "--generations", "6", "--run-dir", run, "--resume", "auto", ranks=2, check=True)
        assert_same_state(state_of(final(straight, 6)), state_of(final(run, 6)))


def test_kill_9_then_resume_auto_loses_at_most_the_generations_since_the_last_checkpoint(tmp_path, mpiexec, straight):
    run = tmp_path / "run"
    proc = _launch([*BASE, "--generations", "6", "--run-dir", run, "--checkpoint-every", "2"], ranks=2)
    _wait_for(final(run, 4), proc)
    os.killpg(proc.pid, signal.SIGKILL)  # mpiexec and every rank, no chance to clean up
    proc.communicate()
    got, skipped = ckpt.latest_good(run)
    assert got is not None and not skipped
    lost_from = ckpt.load(got).generation
    assert lost_from >= 4
    proc2 = nes(*BASE, "--generations", "6", "--run-dir", run, "--resume", "auto", ranks=2, check=True)
    assert f"at generation {lost_from}" in proc2.stdout
    assert_same_state(state_of(final(straight, 6)), state_of(final(run, 6)))


def test_a_torn_newest_checkpoint_is_skipped_by_resume_auto(tmp_path, mpiexec, straight):
    run = tmp_path / "run"
    nes(*BASE, "--generations", "4", "--run-dir", run, ranks=2, check=True)
    newest = final(run, 4)
    data = newest.read_bytes()
    newest.write_bytes(data[: len(data) // 3])  # what a non-atomic writer would leave after kill -9
    proc = nes(*BASE, "--generations", "6", "--run-dir", run, "--resume", "auto", ranks=2, check=True)
    assert "skipping" in proc.stderr and "at generation 2" in proc.stdout
    assert_same_state(state_of(final(straight, 6)), state_of(final(run, 6)))


def test_keeps_the_last_k_and_the_best(tmp_path, mpiexec):
    run = tmp_path / "run"
    nes(*BASE, "--generations", "8", "--checkpoint-every", "1", "--keep-checkpoints", "2", "--run-dir", run,
        ranks=2, check=True)
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert names == ["best.h5", "ckpt_000007.h5", "ckpt_000008.h5"]
    best = info(run / "checkpoints" / "best.h5")
    hist = ckpt.load(final(run, 8)).history
    evals = hist["eval_return"][~np.isnan(hist["eval_return"])]
    assert best["eval_return"] == pytest.approx(evals.max()) == best["best_eval_return"]


def test_info_json_and_text(tmp_path, mpiexec, straight):
    d = info(final(straight, 6))
    for key in ("env_id", "generation", "timesteps", "params_sha256", "eval_return", "best_eval_return", "config"):
        assert key in d
    assert d["env_id"] == "Hopper-v5" and d["generation"] == 6 and d["config"]["population"] == 10
    s = ckpt.load(final(straight, 6))
    assert d["params_sha256"] == hashlib.sha256(s.params.tobytes()).hexdigest()
    text = nes("info", final(straight, 6), ranks=None, check=True).stdout
    assert "Hopper-v5" in text and d["params_sha256"] in text


def test_unsafe_changes_on_resume_are_refused_unless_forced(tmp_path, mpiexec):
    run = tmp_path / "run"
    nes(*BASE, "--generations", "2", "--run-dir", run, ranks=1, check=True)
    before = _snapshot(run)
    for change in (["--population", "12"], ["--seed", "3"], ["--hidden-sizes", "32,32"], ["--env", "Walker2d-v5"]):
        proc = nes(*BASE, *change, "--generations", "4", "--run-dir", run, "--resume", "auto", ranks=2)
        assert proc.returncode == 2 and "cannot change" in proc.stderr and len(error_lines(proc.stderr)) == 1
        assert _snapshot(run) == before
    proc = nes(*BASE, "--generations", "2", "--run-dir", run, ranks=1)  # fresh start over existing checkpoints
    assert proc.returncode == 2 and "already holds checkpoints" in proc.stderr
    nes(*BASE, "--population", "12", "--force", "--generations", "3", "--run-dir", run, "--resume", "auto",
        ranks=2, check=True)
    assert info(final(run, 3))["config"]["population"] == 12


def _snapshot(run: Path) -> dict:
    return {str(p.relative_to(run)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(run.rglob("*")) if p.is_file()}


def _bad_files(tmp_path: Path, good: Path) -> dict[str, Path]:
    d = tmp_path / "bad"
    d.mkdir()
    out = {"missing": d / "nope.h5"}
    out["truncated"] = d / "truncated.h5"
    out["truncated"].write_bytes(good.read_bytes()[:5000])
    out["text"] = d / "text.h5"
    out["text"].write_text("this is not HDF5\n")
    out["foreign"] = d / "foreign.h5"
    with h5py.File(out["foreign"], "w") as f:
        f["data"] = np.arange(10)
    out["corrupted"] = d / "corrupted.h5"
    out["corrupted"].write_bytes(good.read_bytes())
    with h5py.File(out["corrupted"], "r+") as f:
        f["params"][0] += 1.0  # a flipped value the checksum must catch
    out["schema"] = d / "schema.h5"
    out["schema"].write_bytes(good.read_bytes())
    with h5py.File(out["schema"], "r+") as f:
        f.attrs["schema_version"] = 99
    out["directory"] = d
    return out


def test_bad_checkpoint_files_are_one_line_errors_and_touch_nothing(tmp_path, mpiexec, straight):
    run = tmp_path / "run"
    nes(*BASE, "--generations", "2", "--run-dir", run, ranks=1, check=True)
    before = _snapshot(run)
    expected = {"missing": "not found", "truncated": "not a readable HDF5", "text": "not a readable HDF5",
                "foreign": "not an nes_mpi checkpoint", "corrupted": "checksum", "schema": "schema version 99",
                "directory": "is a directory"}
    for name, path in _bad_files(tmp_path, final(straight, 6)).items():
        proc = nes(*BASE, "--generations", "4", "--run-dir", run, "--resume", path, ranks=2)
        lines = error_lines(proc.stderr)
        assert proc.returncode == 2 and len(lines) == 1 and expected[name] in lines[0], (name, proc.stderr)
        assert _snapshot(run) == before, name
        proc = nes("info", path, ranks=None)
        assert proc.returncode == 2 and expected[name] in proc.stderr, (name, proc.stderr)


def test_checkpoint_roundtrip_and_atomic_write(tmp_path, straight):
    s = ckpt.load(final(straight, 6))
    out = ckpt.save(s, tmp_path / "copy.h5")
    t = ckpt.load(out)
    assert np.array_equal(s.params, t.params) and s.config == t.config and s.policy == t.policy
    assert not list(tmp_path.glob(".*tmp*"))  # no temporary left behind
    with h5py.File(out, "r") as f:
        assert f.attrs["format"] == "nes_mpi-checkpoint"
        assert json.loads(f.attrs["config"])["env"] == "Hopper-v5"
        for name in ("params", "optimizer/m", "optimizer/v", "obs_norm/sum", "obs_norm/sumsq", "obs_norm/count",
                     "history/eval_return", "noise"):
            assert name in f
