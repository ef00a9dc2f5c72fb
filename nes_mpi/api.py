"""`nes_mpi.train(config, comm=None)`: the trainer as a function, for a script started under mpiexec.

The command line (`cli_train.py`) is a thin layer over it. Every rank calls
`train` with the same arguments; a setup error on any rank is raised on every
rank (ConfigError / CheckpointError for bad input, TrainingError otherwise), so
a script that catches it never leaves another rank waiting in a collective.
An exception on one rank in the middle of training cannot be agreed on without
a collective the other ranks never reach: it is printed and the job is ended
with MPI_Abort, as on the command line.
"""
from __future__ import annotations

import os
import signal
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .checkpoint import CheckpointError
from .config import Config, ConfigError, load_toml, merge_options

EXIT_ERROR = 1


class TrainingError(RuntimeError):
    """Setup failed with an unexpected exception on some rank; raised on every rank (chained on that rank)."""


@dataclass(frozen=True)
class TrainSummary:
    """Where a `train` call left the run; the same on every rank."""

    generation: int
    timesteps: int
    episodes: int
    eval_return: float          # latest evaluation return (-inf before the first evaluation)
    best_eval_return: float
    checkpoint: Path | None     # the newest checkpoint of this run: resume from here
    run_dir: Path
    stopped: bool               # a stop signal ended the call early, after writing `checkpoint`
    stop_signal: str | None     # the signal (on the lowest rank that got one), e.g. "SIGUSR1"


def train(config: Config | dict | str | os.PathLike | None = None, comm=None, *, resume: str | None = None,
          force: bool = False, rewind: bool = False, stop=None, **options: Any) -> TrainSummary:
    """Train as `python -m nes_mpi train` would, on every rank of `comm` (default MPI.COMM_WORLD).

    config: a Config, a dict of Config fields, a TOML path or preset name, or None (defaults);
    options: Config fields that override it (`generations=50`). resume: a checkpoint path or
    "auto" (newest good checkpoint in the run directory, fresh start if none); force: allow
    run-altering changes on resume; rewind: resume an older checkpoint of the run directory,
    moving the later ones aside (README, "Forks"). stop: a `signals.StopRequest` the caller installed; by
    default SIGTERM/SIGINT/SIGUSR1 are handled during the call (checkpoint, then return with
    `stopped=True`) and the previous handlers are put back afterwards.
    """
    from .signals import STOP_SIGNALS, StopRequest

    previous = None
    if stop is None:
        previous = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
        stop = StopRequest().install()
    try:
        from mpi4py import MPI

        return _train(config, options, MPI.COMM_WORLD if comm is None else comm, resume, force, rewind, stop)
    finally:
        from .run_lock import release_all

        release_all()  # the run directory is free again when train returns (or raises)
        if previous is not None:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def _train(config, options: dict, comm, resume, force, rewind, stop) -> TrainSummary:
    from mpi4py import MPI

    from .comm import DivergedError, abort, slurm_world_mismatch
    from .signals import EXIT_PREEMPTED
    from .trainer import Setup, Trainer, resolve_config, say

    def overrides():
        if comm == MPI.COMM_WORLD:
            mismatch = slurm_world_mismatch(comm.size)
            if mismatch:
                raise ConfigError(mismatch)
        return merge_options(config_overrides(config), {k.replace("-", "_"): v for k, v in options.items()})

    over = agree(comm, overrides)
    setup: Setup = agree(comm, lambda: resolve_config(comm, over, resume, force, rewind))
    if setup.state is None and resume == "auto":
        say(comm, f"nes_mpi: no checkpoint in {setup.cfg.run_dir}: starting a new run")
    trainer: Trainer = agree(comm, lambda: Trainer(comm, setup))
    if setup.state is None and "env" not in over:
        say(comm, f"nes_mpi: training the default task {setup.cfg.env} (choose another with --env)")
    try:
        agree(comm, trainer.setup_numerics)
    except BaseException:
        trainer.close_envs()  # not close(): freeing the shared noise is collective, and setup failed somewhere
        raise
    from .signals import EXIT_INTERRUPTED
    from .trainer import StopFailed, SystematicFailure

    try:
        code = trainer.run(stop)
    except (DivergedError, StopFailed, SystematicFailure) as e:  # raised identically on every rank: nobody is left waiting
        if isinstance(e, DivergedError):
            _record_failure(trainer, EXIT_ERROR, str(e))
        trainer.close()
        raise
    except SystemExit:
        raise
    except KeyboardInterrupt:  # a second, deliberate Ctrl-C: end the job at once, no new checkpoint
        print(f"nes_mpi: rank {comm.rank}: interrupted by a second Ctrl-C; the newest checkpoint is where to "
              f"resume (exit code {EXIT_INTERRUPTED})", file=sys.stderr, flush=True)
        _record_failure(trainer, EXIT_INTERRUPTED, "interrupted by a second Ctrl-C")
        abort(comm, EXIT_INTERRUPTED)
        raise
    except BaseException as e:  # one rank failed: show it and take the job down
        print(f"nes_mpi: rank {comm.rank}: fatal {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        traceback.print_exception(e)
        _record_failure(trainer, EXIT_ERROR, f"rank {comm.rank}: {type(e).__name__}: {e}", any_rank=True)
        abort(comm, EXIT_ERROR)
        raise
    trainer.close()
    stopped = code == EXIT_PREEMPTED  # the same on every rank: the trainer ORs the stop flags
    heard = [name for name in comm.allgather(stop.signal_name) if name] if stopped else []
    return TrainSummary(
        generation=trainer.generation, timesteps=trainer.timesteps, episodes=trainer.episodes,
        eval_return=trainer.eval_return, best_eval_return=trainer.best_eval_return,
        checkpoint=trainer.last_checkpoint, run_dir=trainer.run_dir,
        stopped=stopped, stop_signal=heard[0] if heard else None)


def _record_failure(trainer, code: int, reason: str, any_rank: bool = False) -> None:
    """Best effort: status.json says "failed" (rank 0 only, or the failing rank itself with `any_rank`)."""
    try:
        trainer.record_status("failed", code, reason, any_rank=any_rank)
    except Exception:
        pass


def config_overrides(config) -> dict:
    """The `config` argument of `train` as a dict of Config fields."""
    if config is None:
        return {}
    if isinstance(config, Config):
        return config.to_dict()
    if isinstance(config, dict):
        return {str(k).replace("-", "_"): v for k, v in config.items()}
    if isinstance(config, (str, os.PathLike)):
        return load_toml(config)
    raise ConfigError(f"config must be a Config, a dict or a TOML path (got {type(config).__name__})")


def agree(comm, fn):
    """Run a setup step on every rank; if it failed anywhere, raise the failure on every rank.

    Bad input stays a ConfigError or CheckpointError; anything else becomes a TrainingError,
    chained to the original exception on the rank where it happened.
    """
    result, err, cause = None, None, None
    try:
        result = fn()
    except CheckpointError as e:
        err, cause = ("checkpoint", str(e)), e
    except ConfigError as e:
        err, cause = ("config", str(e)), e
    except Exception as e:
        err, cause = ("other", f"{type(e).__name__}: {e}"), e
    errors = comm.allgather(err)
    for rank, e in enumerate(errors):
        if e is not None:
            kind, msg = e
            where = f" (on rank {rank})" if rank and comm.size > 1 else ""
            exc = {"checkpoint": CheckpointError, "config": ConfigError, "other": TrainingError}[kind](msg + where)
            raise exc from cause
    return result
