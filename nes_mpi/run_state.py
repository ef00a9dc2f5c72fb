"""`python -m nes_mpi status RUN_DIR`: is a run finished? For batch scripts deciding whether to requeue.

It answers from the run directory alone -- the newest checkpoint that loads and passes
its checksum, compared with the generation and timesteps budgets stored in it (or
--generations, --timesteps; a run is finished when it has reached either) -- so
the answer does not depend on how the ranks died or which launcher reported it. It
reads checkpoints as data only: no MPI, no environments, nothing named in a checkpoint
is imported.
"""
from __future__ import annotations

import json
from pathlib import Path

from .checkpoint import newest_good
from .config import ConfigError

EXIT_FINISHED, EXIT_UNFINISHED, EXIT_NO_CHECKPOINT = 0, 3, 4


def run_state(run_dir, generations: int | None = None, timesteps: int | None = None) -> dict:
    """{"state": finished|unfinished|no-checkpoint, "generation", "generations", "timesteps", "timesteps_budget",
    "checkpoint"}; timesteps_budget 0 means none."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"{run_dir} is not a directory")
    path, s, _ = newest_good(run_dir, legacy=True)  # read as data: schema 1 and 2 files too
    if path is None:
        return {"state": "no-checkpoint", "generation": None, "generations": generations, "timesteps": None,
                "timesteps_budget": timesteps, "checkpoint": None}
    budget = int(s.config.get("generations", 0)) if generations is None else generations
    steps_budget = int(s.config.get("timesteps", 0)) if timesteps is None else timesteps
    done = s.generation >= budget or (steps_budget > 0 and s.timesteps >= steps_budget)
    return {"state": "finished" if done else "unfinished", "generation": s.generation, "generations": budget,
            "timesteps": s.timesteps, "timesteps_budget": steps_budget, "checkpoint": str(path)}


def run_status(args) -> int:
    if args.generations is not None and args.generations < 0:
        raise ConfigError(f"--generations must be >= 0 (got {args.generations})")
    if args.timesteps is not None and args.timesteps < 0:
        raise ConfigError(f"--timesteps must be >= 0 (got {args.timesteps})")
    st = run_state(args.run_dir, args.generations, args.timesteps)
    if args.json:
        print(json.dumps(st, sort_keys=True))
    elif st["state"] == "no-checkpoint":
        print(f"no-checkpoint: {args.run_dir} holds no usable checkpoint")
    else:
        steps = f", {st['timesteps']:,} of {st['timesteps_budget']:,} timesteps" if st["timesteps_budget"] else ""
        print(f"{st['state']}: generation {st['generation']} of {st['generations']}{steps} ({st['checkpoint']})")
    return {"finished": EXIT_FINISHED, "unfinished": EXIT_UNFINISHED}.get(st["state"], EXIT_NO_CHECKPOINT)
