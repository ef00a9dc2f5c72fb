"""`python -m nes_mpi train`: a thin layer over `api.train` that turns its outcome into exit codes.

Exceptions, raised on every rank by the API, become one line on rank 0 and an
exit code: 2 for bad input, 1 for other errors; a stop signal becomes 75.
"""
from __future__ import annotations

import sys
import traceback

from .checkpoint import CheckpointError
from .config import ConfigError

EXIT_OK, EXIT_ERROR, EXIT_BAD_INPUT = 0, 1, 2


def run_train(args) -> int:
    # `python -m nes_mpi` installed the stop handlers before any heavy import (MPICH's MPI_Init also
    # takes over SIGUSR1 at C level when Python has none); install_early is idempotent, for callers
    # that come in another way. `settle` then ignores the stop signals until the process is gone,
    # so a signal in teardown cannot kill a rank of a finished run.
    from .signals import install_early

    stop = install_early()
    try:
        return _run(args, stop)
    finally:
        stop.settle()


def _run(args, stop) -> int:
    from .signals import EXIT_PREEMPTED

    from mpi4py import MPI

    from .api import TrainingError, train
    from .comm import DivergedError
    from .trainer import StopFailed, SystematicFailure

    comm = MPI.COMM_WORLD
    options = {k: v for k, v in vars(args).items() if k not in ("command", "config", "resume", "force", "rewind")}
    try:
        summary = train(args.config, comm, resume=args.resume, force=args.force, rewind=args.rewind, stop=stop,
                        **options)
    except (ConfigError, CheckpointError) as e:
        return _fail(comm, e, EXIT_BAD_INPUT)
    except TrainingError as e:
        if e.__cause__ is not None:  # this rank is where setup failed: show where
            traceback.print_exception(e.__cause__)
        return _fail(comm, e, EXIT_ERROR)
    except (DivergedError, StopFailed, SystematicFailure) as e:
        return _fail(comm, e, EXIT_ERROR)
    return EXIT_PREEMPTED if summary.stopped else EXIT_OK


def _fail(comm, e: Exception, code: int) -> int:
    if comm.rank == 0:
        print(f"nes_mpi: error: {e}", file=sys.stderr, flush=True)
    return code
