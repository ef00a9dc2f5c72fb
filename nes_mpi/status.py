"""RUN_DIR/status.json: how the last session of a run ended, for batch scripts and people.

Rank 0 writes it atomically (temporary file, fsync, rename) when a run starts ("running") and on
every exit path it lives to see ("finished", "stopped", "failed"). A file still saying "running"
after the job is gone means the job died without a word (kill -9, node loss, an abort because
another rank crashed); the newest good checkpoint is then the place to resume from.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import socket
from pathlib import Path

from .checkpoint import _fsync_dir

FILENAME = "status.json"
STATES = ("running", "finished", "stopped", "failed")


def status_path(run_dir) -> Path:
    return Path(run_dir) / FILENAME


def write_status(run_dir, state: str, generation: int, generations: int, exit_code: int | None, reason: str,
                 checkpoint=None) -> None:
    assert state in STATES, state
    doc = {
        "state": state, "generation": int(generation), "generations": int(generations),
        "exit_code": exit_code, "reason": reason, "checkpoint": str(checkpoint) if checkpoint else None,
        "updated": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "hostname": socket.gethostname(), "pid": os.getpid(),
    }
    path = status_path(run_dir)
    tmp = path.with_name(f".{FILENAME}.tmp-{os.getpid()}")
    with open(tmp, "w") as fh:
        json.dump(doc, fh, indent=1)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def read_status(run_dir) -> dict | None:
    try:
        return json.loads(status_path(run_dir).read_text())
    except (OSError, ValueError):
        return None
