"""One job per run directory, forks, checkpoints verified as data, rank-0-only reads -- real MPI, real files."""
from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import h5py
import pytest

from conftest import MPIEXEC, child_env, error_lines, info, nes
from nes_mpi import checkpoint as ckpt
from nes_mpi.run_lock import LOCK_NAME
from test_checkpoint_resume import _rank_pids, _snapshot, final

pytestmark = pytest.mark.mpi

FAST = ["--env", "CartPole-v1", "--population", "8", "--noise-table-size", str(1 << 20), "--eval-every", "0"]
# Runs until told to stop: no checkpoint before the stop, so only the lock can keep a second job out.
ENDLESS = [*FAST, "--generations", "1000000", "--checkpoint-every", "1000000"]


class Job:
    """An mpiexec job in its own session, whose ranks can be found by a unique tag in their environment."""

    def __init__(self, args, ranks=2, extra_env=None):
        self.tag = uuid.uuid4().hex
        env = {**child_env(), "NES_TEST_TAG": self.tag, **(extra_env or {})}
        self.proc = subprocess.Popen([MPIEXEC, "-n", str(ranks), sys.executable, "-m", "nes_mpi", *map(str, args)],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                                     start_new_session=True)

    def rank_pid(self, rank: int) -> int:
        return _rank_pids(self.tag)[rank]

    def stop(self, timeout=180) -> tuple[int, str, str]:
        """SIGTERM to rank 0: a clean stop with a checkpoint (exit 75)."""
        os.kill(self.rank_pid(0), signal.SIGTERM)
        out, err = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, out, err

    def kill(self):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.communicate()


def wait_for_rows(run: Path, job: Job, n: int, timeout=180):
    t0 = time.time()
    while len(log_generations(run)) < n:
        assert job.proc.poll() is None, job.proc.communicate()
        assert time.time() - t0 < timeout, "the first job made no progress"
        time.sleep(0.1)


def log_generations(run: Path) -> list[int]:
    try:
        with open(run / "log.csv") as fh:
            return [int(r["generation"]) for r in csv.DictReader(fh)]
    except (OSError, ValueError, KeyError):
        return []


def assert_one_job_wrote(run: Path):
    gens = log_generations(run)
    assert gens == list(range(1, len(gens) + 1)), gens  # in order, no duplicates: one writer
    newest = ckpt.list_checkpoints(run)[0][1]
    hist = ckpt.load(newest).history["generation"].tolist()
    assert hist == gens


def test_two_resume_auto_launches_half_a_second_apart_one_is_refused(tmp_path, mpiexec):
    run = tmp_path / "run"
    a = Job([*ENDLESS, "--run-dir", run, "--resume", "auto"])
    time.sleep(0.5)
    b = Job([*ENDLESS, "--run-dir", run, "--resume", "auto"])
    try:
        t0 = time.time()
        while a.proc.poll() is None and b.proc.poll() is None:
            assert time.time() - t0 < 240, "neither job was refused"
            time.sleep(0.1)
        loser, winner = (a, b) if a.proc.poll() is not None else (b, a)
        out, err = loser.proc.communicate(timeout=60)
        assert loser.proc.returncode == 2, err
        lines = error_lines(err)
        assert len(lines) == 1 and "is in use by" in lines[0] and "starting a new run" not in out, err
        wait_for_rows(run, winner, 3)
        code, out, err = winner.stop()
        assert code == 75, err
    finally:
        a.kill()
        b.kill()
    assert_one_job_wrote(run)
    assert not (run / LOCK_NAME).exists()  # released on the clean exit


def test_a_second_seed_in_a_busy_run_dir_is_refused_and_touches_nothing(tmp_path, mpiexec):
    run = tmp_path / "run"
    a = Job([*ENDLESS, "--run-dir", run, "--resume", "auto"])
    try:
        wait_for_rows(run, a, 2)
        config_before = (run / "config.toml").read_text()
        proc = nes(*ENDLESS, "--seed", "5", "--run-dir", run, "--resume", "auto", ranks=2, timeout=180)
        assert proc.returncode == 2 and len(error_lines(proc.stderr)) == 1 and "in use" in proc.stderr, proc.stderr
        assert (run / "config.toml").read_text() == config_before
        assert not ckpt.list_checkpoints(run)
        code, out, err = a.stop()
        assert code == 75, err
    finally:
        a.kill()
    assert_one_job_wrote(run)
    assert info(ckpt.list_checkpoints(run)[0][1])["config"]["seed"] == 0


def test_rank_0_keeps_the_lock_fresh_while_the_run_lives(tmp_path, mpiexec):
    run = tmp_path / "run"
    a = Job([*ENDLESS, "--run-dir", run], extra_env={"NES_MPI_LOCK_HEARTBEAT_SECONDS": "0.2"})
    try:
        wait_for_rows(run, a, 2)
        lock = run / LOCK_NAME
        first = lock.stat().st_mtime
        t0 = time.time()
        while lock.stat().st_mtime <= first:
            assert time.time() - t0 < 60, "the lock's heartbeat never advanced"
            time.sleep(0.1)
        assert json.loads(lock.read_text())["pid"] == a.rank_pid(0)
        code, out, err = a.stop()
        assert code == 75, err
    finally:
        a.kill()
    assert not (run / LOCK_NAME).exists()


def test_resume_path_without_run_dir_locks_the_directory_it_continues_in(tmp_path, cp_run, mpiexec):
    stored = tmp_path / "stored"
    (stored / "checkpoints").mkdir(parents=True)
    src = final(stored, 4)
    src.write_bytes(final(cp_run, 4).read_bytes())
    with h5py.File(src, "r+") as f:  # a copy of cp_run's checkpoint that continues in `stored`
        cfg = json.loads(f.attrs["config"])
        cfg["run_dir"] = str(stored)
        f.attrs["config"] = json.dumps(cfg, sort_keys=True)
        f.attrs[ckpt.CONTENT_SHA] = ckpt.content_sha256(f)
    me = Path(f"/proc/{os.getpid()}/stat").read_text().rsplit(")", 1)[1].split()[19]
    _foreign_lock(stored, socket.gethostname(), os.getpid(), "", age=0, pid_start=me)
    proc = nes(*FAST, "--generations", "6", "--resume", src, ranks=2, cwd=tmp_path)
    assert proc.returncode == 2 and "in use" in proc.stderr and str(stored) in proc.stderr, proc.stderr
    (stored / LOCK_NAME).unlink()
    proc = nes(*FAST, "--generations", "6", "--resume", src, ranks=2, cwd=tmp_path, check=True)
    assert info(final(stored, 6))["generation"] == 6 and not (stored / LOCK_NAME).exists()


def test_a_kill_9_job_does_not_block_the_next_start(tmp_path, mpiexec):
    run = tmp_path / "run"
    a = Job([*ENDLESS, "--run-dir", run, "--resume", "auto", "--checkpoint-every", "2"])
    try:
        wait_for_rows(run, a, 3)
        assert (run / LOCK_NAME).exists()
    finally:
        a.kill()  # mpiexec and every rank: nobody removes the lock
    assert (run / LOCK_NAME).exists()
    proc = nes(*FAST, "--generations", "6", "--run-dir", run, "--resume", "auto", ranks=2, check=True, timeout=180)
    assert "took over the lock" in proc.stderr and "no longer exists" in proc.stderr
    assert info(final(run, 6))["generation"] == 6
    assert not (run / LOCK_NAME).exists()


def _foreign_lock(run: Path, host: str, pid: int, job: str, age: float, pid_start: str = ""):
    run.mkdir(parents=True, exist_ok=True)
    lock = run / LOCK_NAME
    lock.write_text(json.dumps({"host": host, "pid": pid, "pid_start": pid_start, "slurm_job_id": job,
                                "started": "2026-01-01T00:00:00+00:00", "token": f"{host}:{pid}:1"}))
    os.utime(lock, (time.time() - age, time.time() - age))


def _start(run: Path, **env):
    return subprocess.run([sys.executable, "-m", "nes_mpi", *FAST, "--generations", "1", "--run-dir", str(run),
                           "--resume", "auto"], capture_output=True, text=True, timeout=180,
                          env={**child_env(), **env})


def test_locks_of_other_hosts_live_processes_and_requeued_jobs(tmp_path):
    run = tmp_path / "run"
    # another node's job with a fresh heartbeat: refused, nothing written
    _foreign_lock(run, "node-elsewhere", 4242, "777", age=5)
    proc = _start(run)
    assert proc.returncode == 2 and "SLURM job 777" in proc.stderr and len(error_lines(proc.stderr)) == 1
    assert not (run / "log.csv").exists() and not (run / "config.toml").exists()
    # the same job, requeued onto this node (same SLURM_JOB_ID): takes it over
    proc = _start(run, SLURM_JOB_ID="777")
    assert proc.returncode == 0 and "requeued" in proc.stderr, proc.stderr
    # another node's job whose heartbeat stopped long ago: stale
    _foreign_lock(run, "node-elsewhere", 4242, "778", age=3600)
    proc = _start(run)
    assert proc.returncode == 0 and "no heartbeat" in proc.stderr, proc.stderr
    # a live process on this host (this test) owns it: refused, also for the same SLURM job id
    me = Path(f"/proc/{os.getpid()}/stat").read_text().rsplit(")", 1)[1].split()[19]
    _foreign_lock(run, socket.gethostname(), os.getpid(), "779", age=3600, pid_start=me)
    for env in ({}, {"SLURM_JOB_ID": "779"}):
        proc = _start(run, **env)
        assert proc.returncode == 2 and "in use" in proc.stderr, proc.stderr


# ---- forks ---------------------------------------------------------------------------------------------
def test_resuming_an_older_checkpoint_of_the_same_dir_needs_rewind(tmp_path, mpiexec):
    run = tmp_path / "run"
    common = [*FAST, "--checkpoint-every", "2", "--keep-checkpoints", "2", "--eval-every", "2", "--eval-episodes", "2"]
    nes(*common, "--generations", "6", "--keep-checkpoints", "5", "--run-dir", run, ranks=2, check=True)
    before = _snapshot(run)
    old2 = tmp_path / "ckpt_000002.h5"
    old2.write_bytes(final(run, 2).read_bytes())
    proc = nes(*common, "--generations", "6", "--run-dir", run, "--resume", final(run, 2), ranks=2)
    assert proc.returncode == 2 and "fork" in proc.stderr and "--rewind" in proc.stderr, proc.stderr
    assert len(error_lines(proc.stderr)) == 1 and _snapshot(run) == before
    # the same from a copy outside the run dir: the run dir's later checkpoints are what matters
    proc = nes(*common, "--generations", "6", "--run-dir", run, "--resume", old2, ranks=2)
    assert proc.returncode == 2 and "fork" in proc.stderr and _snapshot(run) == before
    # rewind: a new branch (another lr) from generation 2; the old branch is moved aside, not deleted
    proc = nes(*common, "--generations", "6", "--run-dir", run, "--resume", final(run, 2), "--rewind",
               "--force", "--lr", "0.02", ranks=2, check=True)
    aside = [p for p in run.iterdir() if p.name.startswith("rewound-")]
    assert len(aside) == 1 and str(aside[0]) in proc.stdout
    moved = sorted(p.name for p in aside[0].iterdir())
    assert moved == ["best.h5", "ckpt_000004.h5", "ckpt_000006.h5", "log.csv"] or \
        moved == ["ckpt_000004.h5", "ckpt_000006.h5", "log.csv"], moved
    assert info(aside[0] / "ckpt_000006.h5")["config"]["lr"] == 0.01
    assert [g for g, _ in ckpt.list_checkpoints(run)] == [6, 4]  # pruning kept the new branch
    assert all(info(p)["config"]["lr"] == 0.02 for _, p in ckpt.list_checkpoints(run))
    # --resume auto continues the new branch, never the abandoned one
    proc = nes(*common, "--generations", "8", "--run-dir", run, "--resume", "auto", ranks=2, check=True)
    assert f"resuming {final(run, 6)} at generation 6" in proc.stdout
    assert info(final(run, 8))["config"]["lr"] == 0.02
    assert log_generations(run) == [0, 1, 2, 3, 4, 5, 6, 7, 8]


# ---- checkpoints are data --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cp_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("cp") / "run"
    nes(*FAST, "--generations", "4", "--checkpoint-every", "2", "--eval-every", "2", "--eval-episodes", "2",
        "--run-dir", run, ranks=2, check=True)
    return run


def _flip_dataset_bytes(path: Path, name: str, n=16):
    """Invert n raw bytes of a dataset where they lie in the file (what a bad disk or transfer does)."""
    with h5py.File(path, "r") as f:
        d = f[name]
        offset, size = d.id.get_offset(), d.id.get_storage_size()
    assert offset is not None and size > 0
    n = min(n, size)
    with open(path, "r+b") as fh:
        fh.seek(offset)
        raw = bytearray(fh.read(n))
        fh.seek(offset)
        fh.write(bytes(b ^ 0xFF for b in raw))


def _edit_attr(path: Path, where: str, key: str, fn):
    with h5py.File(path, "r+") as f:
        f[where].attrs[key] = fn(f[where].attrs[key])


CORRUPTIONS = {
    "strategy_opt_m": lambda p: _flip_dataset_bytes(p, "strategy/opt_m"),
    "obs_norm_sum": lambda p: _flip_dataset_bytes(p, "obs_norm/sum"),
    "history": lambda p: _flip_dataset_bytes(p, "history/return_mean"),
    "attr_timesteps": lambda p: _edit_attr(p, "/", "timesteps", lambda v: v + 1),
    "attr_strategy_name": lambda p: _edit_attr(p, "strategy", "name", lambda v: "snes"),
    "attr_config": lambda p: _edit_attr(p, "/", "config", lambda v: v.replace('"lr": 0.01', '"lr": 0.5')),
}


@pytest.mark.parametrize("what", list(CORRUPTIONS))
def test_corruption_anywhere_is_refused_by_path_and_skipped_by_auto(tmp_path, cp_run, what):
    bad = tmp_path / "bad.h5"
    bad.write_bytes(final(cp_run, 4).read_bytes())
    CORRUPTIONS[what](bad)
    with pytest.raises(ckpt.CheckpointError, match="checksum"):
        ckpt.load(bad)
    for cmd in (["info", bad], ["eval", bad, "--episodes", "1"]):
        proc = nes(*cmd, ranks=None)
        assert proc.returncode == 2 and len(error_lines(proc.stderr)) == 1 and "checksum" in proc.stderr, proc.stderr
    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "ckpt_000002.h5").write_bytes(final(cp_run, 2).read_bytes())
    before = _snapshot(run)
    proc = nes(*FAST, "--generations", "6", "--run-dir", run, "--resume", bad, ranks=2)
    assert proc.returncode == 2 and len(error_lines(proc.stderr)) == 1 and "checksum" in proc.stderr, proc.stderr
    assert _snapshot(run) == before
    # the same file as the newest of a run dir: --resume auto skips it, naming why, and takes generation 2
    os.replace(bad, run / "checkpoints" / "ckpt_000004.h5")
    proc = nes(*FAST, "--generations", "4", "--run-dir", run, "--resume", "auto", ranks=2, check=True)
    assert "skipping" in proc.stderr and "checksum" in proc.stderr and "at generation 2" in proc.stdout


def _hostile_copy(good: Path, out: Path, marker: Path) -> Path:
    """A checkpoint whose config names os:system with a command; its checksums recomputed to match."""
    out.write_bytes(good.read_bytes())
    with h5py.File(out, "r+") as f:
        cfg = json.loads(f.attrs["config"])
        cfg.update(env="os:system", env_kwargs={"command": f"touch {marker}"})
        f.attrs["config"] = json.dumps(cfg, sort_keys=True)
        f.attrs["env_id"] = "os:system"
        f.attrs[ckpt.CONTENT_SHA] = ckpt.content_sha256(f)
    ckpt.load(out)  # passes every checksum: only the rule keeps it from running
    return out


def test_a_checkpoint_never_runs_code_it_names(tmp_path, cp_run, mpiexec):
    marker = tmp_path / "PWNED"
    bad = _hostile_copy(final(cp_run, 4), tmp_path / "hostile.h5", marker)
    proc = nes("info", bad, ranks=None)
    assert proc.returncode == 0 and "os:system" in proc.stdout
    proc = nes("eval", bad, "--episodes", "1", ranks=None)
    assert proc.returncode == 2 and len(error_lines(proc.stderr)) == 1 and "--env os:system" in proc.stderr, proc.stderr
    proc = nes("--run-dir", tmp_path / "r1", "--resume", bad, "--generations", "6", ranks=2)
    assert proc.returncode == 2 and len(error_lines(proc.stderr)) == 1 and "--env os:system" in proc.stderr, proc.stderr
    run = tmp_path / "r2"
    (run / "checkpoints").mkdir(parents=True)
    os.replace(bad, final(run, 4))
    proc = nes("--run-dir", run, "--resume", "auto", "--generations", "6", ranks=2)
    assert proc.returncode == 2 and "--env os:system" in proc.stderr, proc.stderr
    assert not marker.exists()


def test_a_module_env_is_resumed_and_evaluated_when_named(tmp_path, mpiexec):
    run = tmp_path / "pt"
    args = ["--population", "8", "--noise-table-size", str(1 << 20), "--eval-every", "0", "--run-dir", run]
    nes("--env", "faulty_envs:PointEnv", *args, "--generations", "2", ranks=2, check=True)
    proc = nes(*args, "--generations", "3", "--resume", "auto", ranks=2)
    assert proc.returncode == 2 and "--env faulty_envs:PointEnv" in proc.stderr, proc.stderr
    nes("--env", "faulty_envs:PointEnv", *args, "--generations", "3", "--resume", "auto", ranks=2, check=True)
    proc = nes("eval", final(run, 3), "--episodes", "1", "--env", "faulty_envs:PointEnv", ranks=None, check=True)
    assert "return" in proc.stdout


def test_a_save_succeeds_while_another_process_holds_the_file_open(tmp_path, cp_run):
    target = tmp_path / "ckpt.h5"
    target.write_bytes(final(cp_run, 2).read_bytes())
    holder = subprocess.Popen([sys.executable, "-c", (
        "import h5py, sys, time\n"
        "f = h5py.File(sys.argv[1], 'r')  # h5py's default: with HDF5 file locking\n"
        "print(f.attrs['generation'], flush=True)\n"
        "sys.stdin.readline()\n"
        "print(f['params'][()].sum(), flush=True)\n"), str(target)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "2"
        state = ckpt.load(final(cp_run, 4))
        ckpt.save(state, target)
        assert ckpt.load(target).generation == 4
        out, err = holder.communicate("\n", timeout=60)
        assert holder.returncode == 0, err  # the reader kept its consistent old file
    finally:
        if holder.poll() is None:
            holder.kill()


def test_only_rank_0_opens_the_checkpoint(tmp_path, cp_run, mpiexec):
    """Rank 0 runs where the relative checkpoint path exists, rank 1 where it does not."""
    here, elsewhere = tmp_path / "rank0", tmp_path / "rank1"
    here.mkdir()
    elsewhere.mkdir()
    (here / "from.h5").write_bytes(final(cp_run, 4).read_bytes())
    run = tmp_path / "run"
    args = [sys.executable, "-m", "nes_mpi", *FAST, "--generations", "6", "--run-dir", str(run), "--resume", "from.h5"]
    cmd = [MPIEXEC, "-n", "1", "-wdir", str(here), *args, ":", "-n", "1", "-wdir", str(elsewhere), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=child_env())
    assert proc.returncode == 0, proc.stderr
    assert "2 rank(s)" in proc.stdout and "at generation 4" in proc.stdout
    assert info(final(run, 6))["generation"] == 6


def test_force_optimizer_change_on_resume_starts_it_fresh(tmp_path, cp_run, mpiexec):
    run = tmp_path / "run"
    proc = nes(*FAST, "--generations", "6", "--run-dir", run, "--resume", final(cp_run, 4), "--force",
               "--optimizer", "sgd", ranks=2)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("strategy/optimizer changed from openai/adam to openai/sgd") == 1
    assert "fresh state" in proc.stdout
    d = info(final(run, 6))
    assert d["config"]["optimizer"] == "sgd" and d["optimizer_step"] == 2


def test_every_checkpoint_write_is_preceded_by_the_cross_rank_check(tmp_path, mpiexec):
    run = tmp_path / "div"
    # two emulated nodes: rank 1's divergence after generation 3 lasts to the check at 4 (one node's ranks
    # share one state, see tests/test_node_split.py)
    env = {**child_env(), "NES_MPI_INJECT_DIVERGENCE": "1:3", "MPIR_CVAR_NUM_CLIQUES": "2"}
    proc = subprocess.run([MPIEXEC, "-n", "2", sys.executable, "-m", "nes_mpi", *FAST, "--generations", "8",
                           "--check-every", "100", "--checkpoint-every", "4", "--run-dir", str(run)],
                          capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 1
    lines = error_lines(proc.stderr)
    assert len(lines) == 1 and "diverged at generation 4" in lines[0], proc.stderr
    assert not ckpt.list_checkpoints(run)  # the diverged state was not written


def test_schema_1_checkpoints_are_read_by_eval_and_info_and_resumed_only_with_force(tmp_path, mpiexec):
    """The committed benchmark checkpoints predate the content checksum."""
    legacy = Path(__file__).resolve().parents[1] / "benchmarks/results/runs/cartpole/checkpoints/best.h5"
    with h5py.File(legacy, "r") as f:
        assert int(f.attrs["schema_version"]) == 1 and ckpt.CONTENT_SHA not in f.attrs
    g = info(legacy)["generation"]
    nes("eval", legacy, "--episodes", "1", ranks=None, check=True)
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    final(run, g).write_bytes(legacy.read_bytes())
    before = _snapshot(run)
    proc = nes("--run-dir", run, "--resume", "auto", "--generations", g + 1, ranks=2)
    lines = error_lines(proc.stderr)
    assert proc.returncode == 2 and len(lines) == 1 and "can be resumed" in lines[0] and "--force" in lines[0], proc.stderr
    assert _snapshot(run) == before  # not started afresh over the run's checkpoints
    proc = nes("--run-dir", run, "--resume", "auto", "--generations", g + 1, "--force", ranks=2, check=True)
    assert f"at generation {g}" in proc.stdout
    with h5py.File(final(run, g + 1), "r") as f:
        assert int(f.attrs["schema_version"]) == ckpt.SCHEMA_VERSION


def _as_schema_2(good: Path, out: Path) -> Path:
    """The file a release with strategies but before the content checksum wrote: /strategy, no content_sha256."""
    out.write_bytes(good.read_bytes())
    with h5py.File(out, "r+") as f:
        f.attrs["schema_version"] = 2
        del f.attrs[ckpt.CONTENT_SHA]
    return out


def test_schema_2_checkpoints_are_read_as_data_and_resumed_only_with_force(tmp_path, cp_run, mpiexec):
    old = _as_schema_2(final(cp_run, 4), tmp_path / "v2.h5")
    with pytest.raises(ckpt.CheckpointError, match="schema version 2.*--force"):
        ckpt.load(old)
    state = ckpt.load(old, legacy=True)
    assert state.generation == 4 and set(state.strategy) == {"opt_t", "opt_m", "opt_v"}
    assert info(old)["generation"] == 4
    nes("eval", old, "--episodes", "1", ranks=None, check=True)
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    os.replace(old, final(run, 4))
    proc = nes("status", run, "--json", ranks=None)
    assert json.loads(proc.stdout)["generation"] == 4
    before = _snapshot(run)
    proc = nes(*FAST, "--generations", "6", "--run-dir", run, "--resume", "auto", ranks=2)
    lines = error_lines(proc.stderr)
    assert proc.returncode == 2 and len(lines) == 1 and "schema version 2" in lines[0] and "--force" in lines[0], \
        proc.stderr
    assert _snapshot(run) == before
    proc = nes(*FAST, "--generations", "6", "--run-dir", run, "--resume", "auto", "--force", ranks=2, check=True)
    assert "at generation 4" in proc.stdout
    with h5py.File(final(run, 6), "r") as f:
        assert int(f.attrs["schema_version"]) == ckpt.SCHEMA_VERSION and ckpt.CONTENT_SHA in f.attrs
    # the optimizer went on from the stored moments (same strategy and optimizer: no fresh state), one step per
    # generation that moved the mean
    new = ckpt.load(final(run, 6))
    moved = int(((new.history["generation"] > 4) & (new.history["update_norm"] > 0)).sum())
    assert "fresh state" not in proc.stdout and int(new.strategy["opt_t"]) == int(state.strategy["opt_t"]) + moved
