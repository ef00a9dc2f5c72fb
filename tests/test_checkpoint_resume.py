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

from conftest import MPIEXEC, child_env, error_lines, info, nes, wait_for_generation
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
        "params": s.params, **{f"strategy_{k}": np.asarray(v) for k, v in s.strategy.items()},
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
def straight_to(tmp_path_factory):
    """straight_to(G): the run dir of BASE trained straight through to G generations on 2 ranks (cached)."""
    runs = {}

    def run_to(generations: int) -> Path:
        if generations not in runs:
            run = tmp_path_factory.mktemp(f"straight{generations}") / "run"
            nes(*BASE, "--generations", generations, "--run-dir", run, ranks=2, check=True)
            runs[generations] = run
        return runs[generations]
    return run_to


@pytest.fixture(scope="module")
def straight(straight_to):
    return straight_to(6)


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


# Option sets beyond the defaults, each small and short. Every one: 1 rank straight to 4 generations vs 2 ranks to
# 2, then resumed on 3 ranks to 4 -- exact resume and rank-count invariance at once.
OPTION_SETS = {
    "sgd-top-directions-survival-bonus": ["--env", "Hopper-v5", "--optimizer", "sgd", "--top-directions", "0.5",
                                          "--survival-bonus", "1.0", "--population", "10"],
    "clipup-linear-2-episodes-raw-obs": ["--env", "Hopper-v5", "--optimizer", "clipup", "--policy", "linear",
                                         "--episodes-per-member", "2", "--no-obs-norm", "--population", "8"],
    "cartpole-discrete-no-antithetic": ["--env", "CartPole-v1", "--no-antithetic", "--population", "7"],
    "user-env-sgd": ["--env", "faulty_envs:PointEnv", "--optimizer", "sgd", "--population", "6"],
    "zscore-shaping-plain-steps": ["--env", "Hopper-v5", "--shaping", "zscore", "--optimizer", "gd", "--lr", "0.0003",
                                   "--population", "8"],
    "ars-raw-linear": ["--env", "Hopper-v5", "--policy", "linear", "--no-clip-actions", "--obs-std-floor", "1e-4",
                       "--obs-clip", "1000", "--population", "8"],
}
SMALL = ["--max-episode-steps", "60", "--hidden-sizes", "16,16", "--eval-every", "2", "--eval-episodes", "3",
         "--noise-table-size", str(1 << 20), "--checkpoint-every", "2"]


@pytest.mark.parametrize("options", list(OPTION_SETS.values()), ids=list(OPTION_SETS))
def test_options_resume_exactly_on_any_number_of_ranks(tmp_path, mpiexec, options):
    args = [*options, *SMALL]
    one = tmp_path / "one"
    nes(*args, "--generations", "4", "--run-dir", one, ranks=1, check=True)
    split = tmp_path / "split"
    nes(*args, "--generations", "2", "--run-dir", split, ranks=2, check=True)
    proc = nes(*args, "--generations", "4", "--run-dir", split, "--resume", "auto", ranks=3, check=True)
    assert "resuming" in proc.stdout
    a, b = state_of(final(one, 4)), state_of(final(split, 4))
    assert_same_state(a, b)
    assert a["counters"][0] == 4 and np.isfinite(a["params"]).all()
    assert not np.array_equal(a["params"], ckpt.load(final(split, 2)).params)  # the run did move
    rows = [list(csv.DictReader(open(r / "log.csv"))) for r in (one, split)]
    assert [[r[c] for c in DETERMINISTIC] for r in rows[0]] == [[r[c] for c in DETERMINISTIC] for r in rows[1]]


def test_resume_auto_in_an_empty_run_dir_starts_fresh(tmp_path, mpiexec, straight):
    run = tmp_path / "run"
    proc = nes(*BASE, "--generations", "6", "--run-dir", run, "--resume", "auto", ranks=2, check=True)
    assert "starting a new run" in proc.stdout
    assert_same_state(state_of(final(straight, 6)), state_of(final(run, 6)))


def _rank_pids(tag: str) -> dict[int, int]:
    """PMI rank -> pid of the python ranks launched with NES_TEST_TAG=tag (read from /proc)."""
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
    """Start a run in the background, tagged so that _rank_pids finds its ranks and no one else's (other test
    sessions may be running the same tests on this machine at the same time)."""
    tag = f"{os.getpid()}-{time.monotonic_ns()}"
    env = {**child_env(), "NES_TEST_TAG": tag}
    proc = subprocess.Popen([MPIEXEC, "-n", str(ranks), sys.executable, "-m", "nes_mpi", *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)
    proc.tag = tag
    return proc


@pytest.mark.parametrize("sig", [signal.SIGUSR1, signal.SIGTERM, signal.SIGINT])
def test_signal_on_one_rank_checkpoints_and_exits_75(tmp_path, mpiexec, straight_to, sig):
    run = tmp_path / "run"
    proc = _launch([*BASE, "--generations", "100000", "--run-dir", run], ranks=3)
    wait_for_generation(run, proc, 2)
    pids = _rank_pids(proc.tag)
    assert sorted(pids) == [0, 1, 2], pids
    os.kill(pids[1], sig)  # only rank 1 hears it
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 75, err
    assert "stop requested" in out
    newest = ckpt.list_checkpoints(run)[0][1]
    g = info(newest)["generation"]
    assert g >= 2
    # the signal-triggered checkpoint is a proper resume point, wherever the signal landed: continue it one
    # generation and compare with a run that went straight there
    nes(*BASE, "--generations", g + 1, "--run-dir", run, "--resume", "auto", ranks=2, check=True)
    assert_same_state(state_of(final(straight_to(g + 1), g + 1)), state_of(final(run, g + 1)))


def test_kill_9_then_resume_auto_loses_at_most_the_generations_since_the_last_checkpoint(tmp_path, mpiexec, straight_to):
    run = tmp_path / "run"
    proc = _launch([*BASE, "--generations", "100000", "--run-dir", run, "--checkpoint-every", "2"], ranks=2)
    wait_for_generation(run, proc, 4)
    os.killpg(proc.pid, signal.SIGKILL)  # mpiexec and every rank, no chance to clean up
    proc.communicate()
    # the kill landed mid-run: mpiexec died of SIGKILL (it did not exit by itself) long before generation 100000
    assert proc.returncode == -signal.SIGKILL
    got, skipped = ckpt.latest_good(run)
    assert got is not None and not skipped
    lost_from = ckpt.load(got).generation
    assert 4 <= lost_from < 100000
    target = lost_from + 2
    proc2 = nes(*BASE, "--generations", target, "--run-dir", run, "--resume", "auto", ranks=2, check=True)
    assert f"at generation {lost_from}" in proc2.stdout
    assert_same_state(state_of(final(straight_to(target), target)), state_of(final(run, target)))


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
        for name in ("params", "strategy/opt_m", "strategy/opt_v", "strategy/opt_t", "obs_norm/sum", "obs_norm/sumsq", "obs_norm/count",
                     "history/eval_return", "noise"):
            assert name in f


WRITER = """
import sys
import numpy as np
from nes_mpi import checkpoint as ckpt
s = ckpt.load(sys.argv[1])
s.params = np.random.default_rng(0).standard_normal(int(sys.argv[3]), dtype=np.float32)  # a big state: a slow write
ckpt.save(s, sys.argv[2])
"""


def test_kill_9_during_save_leaves_the_previous_checkpoint_intact(tmp_path, straight):
    """SIGKILL a real writer process while checkpoint.save replaces ckpt_000006.h5 with a 256 MB state: the old
    file must still be there, byte for byte, load, pass its checksum and be what --resume auto picks."""
    run = tmp_path / "run"
    target = final(run, 6)
    target.parent.mkdir(parents=True)
    target.write_bytes(final(straight, 6).read_bytes())
    before = hashlib.sha256(target.read_bytes()).hexdigest()
    n_params = 64 << 20  # float32: 256 MB to hash, write and fsync
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(final(straight, 6)), str(target), str(n_params)],
                              env=child_env(), stderr=subprocess.PIPE, text=True)
    tmp = target.with_name(f".{target.name}.tmp-{writer.pid}")
    t0 = time.time()
    size = lambda p: p.stat().st_size if p.exists() else 0  # noqa: E731
    assert size(target) < 1 << 20
    while max(size(tmp), size(target)) < 1 << 20:  # until the parameters are being written (wherever they go)
        assert writer.poll() is None, f"the writer finished before the kill: {writer.communicate()}"
        assert time.time() - t0 < 120, "the writer never started writing"
        time.sleep(0.0005)
    writer.kill()
    writer.communicate()
    # the kill landed mid-write: the writer died of SIGKILL, and its temporary file was never renamed over the target
    assert writer.returncode == -signal.SIGKILL
    assert hashlib.sha256(target.read_bytes()).hexdigest() == before
    assert tmp.exists(), "no temporary file: the kill did not land during the write"
    assert tmp.stat().st_size < 4 * n_params, f"the write had finished ({tmp.stat().st_size} bytes)"
    print(f"killed with {tmp.stat().st_size:,} of about {4 * n_params:,} bytes written")
    assert np.array_equal(ckpt.load(target).params, ckpt.load(final(straight, 6)).params)
    assert ckpt.latest_good(run) == (target, [])
