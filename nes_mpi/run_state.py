"""`python -m nes_mpi status RUN_DIR`: is a run finished? For batch scripts deciding whether to requeue.

It answers from the run directory alone -- the newest checkpoint that loads and passes
its checksum, compared with the generation budget stored in it (or --generations) -- so
the answer does not depend on how the ranks died or which launcher reported it. It
reads checkpoints as data only: no MPI, no environments, nothing named in a checkpoint
is imported.
"""
from __future__ import annotations

import json
from pathlib import Path

from .checkpoint import latest_good, load
from .config import ConfigError

EXIT_FINISHED, EXIT_UNFINISHED, EXIT_NO_CHECKPOINT = 0, 3, 4


def run_state(run_dir, generations: int | None = None) -> dict:
    """{"state": finished|unfinished|no-checkpoint, "generation", "generations", "checkpoint"}."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"{run_dir} is not a directory")
    path, _ = latest_good(run_dir, legacy=True)
    if path is None:
        return {"state": "no-checkpoint", "generation": None, "generations": generations, "checkpoint": None}
    s = load(path, legacy=True)
    budget = int(s.config.get("generations", 0)) if generations is None else generations
    state = "finished" if s.generation >= budget else "unfinished"
    return {"state": state, "generation": s.generation, "generations": budget, "checkpoint": str(path)}


def run_status(args) -> int:
    if args.generations is not None and args.generations < 0:
        raise ConfigError(f"--generations must be >= 0 (got {args.generations})")
    st = run_state(args.run_dir, args.generations)
    if args.json:
        print(json.dumps(st, sort_keys=True))
    elif st["state"] == "no-checkpoint":
        print(f"no-checkpoint: {args.run_dir} holds no usable checkpoint")
    else:
        print(f"{st['state']}: generation {st['generation']} of {st['generations']} ({st['checkpoint']})")
    return {"finished": EXIT_FINISHED, "unfinished": EXIT_UNFINISHED}.get(st["state"], EXIT_NO_CHECKPOINT)
