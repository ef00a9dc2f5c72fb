"""One job per run directory: a lock file that works on NFS and Lustre and cannot outlive its job.

`RUN_DIR/.nes_mpi.lock` is created with O_CREAT|O_EXCL (atomic on local disks, NFSv3+ and
Lustre; no flock needed) and holds who owns the run: host, pid, the pid's start time, SLURM
job id and start time. Rank 0 touches it every heartbeat_seconds() while the run lives and
removes it on every exit path that runs Python (atexit). A lock left by a job that died is
taken over when
  * it names our own SLURM job id (a requeued job, possibly on another node), or
  * its owner is on this host and that process no longer exists, or
  * its owner is on another host and its heartbeat is older than stale_seconds().
Otherwise the directory is in use and the caller refuses to start.
"""
from __future__ import annotations

import atexit
import datetime as _dt
import json
import os
import socket
import threading
import time
from pathlib import Path

LOCK_NAME = ".nes_mpi.lock"
HEARTBEAT_SECONDS = 30.0
DEFAULT_STALE_SECONDS = 300.0


_HELD: list["RunLock"] = []  # the locks this process holds (nes_mpi.train releases them when it returns)


class RunDirBusy(RuntimeError):
    """Another live job owns the run directory."""


def release_all() -> None:
    """Release every run-directory lock this process holds (the end of a `train` call, or exit)."""
    while _HELD:
        _HELD.pop().release()


def _seconds(var: str, default: float) -> float:
    try:
        value = float(os.environ.get(var, default))
    except ValueError:
        return default
    return value if value > 0 else default


def stale_seconds() -> float:
    """How old another host's heartbeat must be before its lock counts as abandoned (NES_MPI_LOCK_STALE_SECONDS)."""
    return _seconds("NES_MPI_LOCK_STALE_SECONDS", DEFAULT_STALE_SECONDS)


def heartbeat_seconds() -> float:
    """How often rank 0 touches its lock (NES_MPI_LOCK_HEARTBEAT_SECONDS); keep it well below stale_seconds()."""
    return _seconds("NES_MPI_LOCK_HEARTBEAT_SECONDS", HEARTBEAT_SECONDS)


def _proc_stat(pid: int) -> list[str]:
    """Fields of /proc/PID/stat after the command name (state first); [] where unavailable."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return []


def _process_start(pid: int) -> str:
    """The kernel's start time of `pid` (guards against pid reuse); "" where /proc is unavailable."""
    stat = _proc_stat(pid)
    return stat[19] if len(stat) > 19 else ""


def _alive(pid: int, start: str) -> bool:
    """Is `pid` still the process that wrote the lock? A killed one that awaits reaping (zombie) is not."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    stat = _proc_stat(pid)
    if stat and stat[0] in ("Z", "X"):
        return False
    now = stat[19] if len(stat) > 19 else ""
    return not (start and now and now != start)


def _me() -> dict:
    pid = os.getpid()
    return {"host": socket.gethostname(), "pid": pid, "pid_start": _process_start(pid),
            "slurm_job_id": os.environ.get("SLURM_JOB_ID", ""),
            "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "token": f"{socket.gethostname()}:{pid}:{time.time_ns()}"}


class RunLock:
    def __init__(self, run_dir):
        self.path = Path(run_dir) / LOCK_NAME
        self.owner = _me()
        self.held = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ---- taking it ---------------------------------------------------------------------------
    def acquire(self) -> list[str]:
        """Take the lock (raises RunDirBusy); returns notes about stale locks taken over."""
        notes = []
        for _ in range(5):
            if self._create():
                self.held = True
                _HELD.append(self)
                atexit.register(self.release)
                self._thread = threading.Thread(target=self._beat, name="nes_mpi-lock-heartbeat", daemon=True)
                self._thread.start()
                return notes
            other, age = self._read()
            if other is None and age < 10:  # vanished, or its creator is still writing it: look again
                time.sleep(0.2)
                continue
            other = other or {}
            why = self._stale_because(other, age) if other else "it is empty or unreadable"
            if why is None:
                raise RunDirBusy(self._describe(other, age))
            if self._break(other):
                notes.append(f"took over the lock of {self._who(other)}: {why}")
        raise RunDirBusy(f"could not take the lock {self.path}: it keeps changing hands")

    def _create(self) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as fh:
            fh.write(json.dumps(self.owner, sort_keys=True) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        return True

    def _read(self) -> tuple[dict | None, float]:
        """(owner record or None, seconds since its last heartbeat; 0 if the file is gone)."""
        try:
            age = time.time() - self.path.stat().st_mtime
        except OSError:
            return None, 0.0
        try:
            return json.loads(self.path.read_text()), age
        except (OSError, ValueError):
            return None, age

    def _stale_because(self, other: dict, age: float) -> str | None:
        me = self.owner
        if me["slurm_job_id"] and other.get("slurm_job_id") == me["slurm_job_id"]:
            if other.get("host") != me["host"] or not _alive(int(other.get("pid", 0)), other.get("pid_start", "")):
                return f"the same SLURM job {me['slurm_job_id']} (requeued)"
        if other.get("host") == me["host"]:
            if not _alive(int(other.get("pid", 0)), other.get("pid_start", "")):
                return "that process no longer exists"
            return None
        if age > stale_seconds():
            return f"no heartbeat for {age:.0f} s (limit {stale_seconds():.0f} s)"
        return None

    def _break(self, judged: dict) -> bool:
        """Move the stale lock aside; if what we moved is not the lock we judged, put it back."""
        aside = self.path.with_name(f"{LOCK_NAME}.stale-{self.owner['token'].replace(':', '-')}")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return False
        try:
            moved = json.loads(aside.read_text())
        except (OSError, ValueError):
            moved = None
        if moved is not None and moved.get("token") != judged.get("token"):
            try:
                os.link(aside, self.path)  # fails if someone created a new lock meanwhile: theirs wins
            except OSError:
                pass
            aside.unlink(missing_ok=True)
            return False
        aside.unlink(missing_ok=True)
        return True

    @staticmethod
    def _who(other: dict) -> str:
        job = f"SLURM job {other['slurm_job_id']}, " if other.get("slurm_job_id") else ""
        return f"{job}pid {other.get('pid')} on {other.get('host')}, started {other.get('started')}"

    def _describe(self, other: dict, age: float) -> str:
        return (f"run directory {self.path.parent} is in use by {self._who(other)} (heartbeat {age:.0f} s ago): "
                f"wait for that job to end or choose another --run-dir (a lock left by a job killed on another host "
                f"expires {stale_seconds():.0f} s after its last heartbeat; delete {self.path} only if you are sure)")

    # ---- keeping and releasing it -------------------------------------------------------------
    def _beat(self) -> None:
        while not self._stop.wait(heartbeat_seconds()):
            try:
                os.utime(self.path)
            except OSError:
                pass

    def release(self) -> None:
        """Remove the lock if it is still ours (safe to call more than once)."""
        if not self.held:
            return
        self.held = False
        self._stop.set()
        other, _ = self._read()
        if other is not None and other.get("token") == self.owner["token"]:
            try:
                self.path.unlink()
            except FileNotFoundError:
                pass
