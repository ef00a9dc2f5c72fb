"""`python -m nes_mpi train`: set up on every rank, agree on errors, run, and exit with a clear code."""
from __future__ import annotations

import sys
import traceback

from .checkpoint import CheckpointError
from .config import ConfigError, load_toml

EXIT_OK, EXIT_ERROR, EXIT_BAD_INPUT = 0, 1, 2


def _agree(comm, fn):
    """Run a setup step on every rank; if it failed anywhere, every rank exits with rank 0 naming the error."""
    result, err = None, None
    try:
        result = fn()
    except (ConfigError, CheckpointError) as e:
        err = (EXIT_BAD_INPUT, str(e))
    except Exception as e:  # an unexpected failure during setup: show where, then exit everywhere
        traceback.print_exc()
        err = (EXIT_ERROR, f"{type(e).__name__}: {e}")
    errors = comm.allgather(err)
    for rank, e in enumerate(errors):
        if e is not None:
            if comm.rank == 0:
                where = f" (on rank {rank})" if rank and comm.size > 1 else ""
                print(f"nes_mpi: error: {e[1]}{where}", file=sys.stderr, flush=True)
            raise SystemExit(e[0])
    return result


def run_train(args) -> int:
    # Handlers first: MPICH's MPI_Init takes over SIGUSR1 at C level when Python has none, so a
    # time-limit warning arriving during start-up would otherwise kill or be swallowed. They stay
    # installed until exit, so a late repeated signal during teardown cannot kill a rank either.
    from .signals import StopRequest

    stop = StopRequest().install()

    from mpi4py import MPI

    from .comm import DivergedError, abort, slurm_world_mismatch
    from .trainer import Setup, Trainer, resolve_config, say

    comm = MPI.COMM_WORLD

    def overrides():
        mismatch = slurm_world_mismatch(comm.size)
        if mismatch:
            raise ConfigError(mismatch)
        cli = {k: v for k, v in vars(args).items() if k not in ("command", "config", "resume", "force", "rewind")}
        from_file = load_toml(args.config) if args.config else {}
        return {**from_file, **cli}

    over = _agree(comm, overrides)
    setup: Setup = _agree(comm, lambda: resolve_config(comm, over, args.resume, args.force, args.rewind))
    if setup.state is None and args.resume == "auto":
        say(comm, f"nes_mpi: no checkpoint in {setup.cfg.run_dir}: starting a new run")
    trainer: Trainer = _agree(comm, lambda: Trainer(comm, setup))
    if setup.state is None and "env" not in over and comm.rank == 0:
        print(f"nes_mpi: training the default task {setup.cfg.env} (choose another with --env)", flush=True)
    try:
        _agree(comm, trainer.setup_numerics)
        code = trainer.run(stop)
    except DivergedError as e:  # raised identically on every rank
        say(comm, f"nes_mpi: error: {e}", file=sys.stderr)
        return EXIT_ERROR
    except SystemExit:
        raise
    except BaseException as e:  # one rank failed mid-run: show it and take the whole job down, never hang
        print(f"nes_mpi: rank {comm.rank}: fatal {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        traceback.print_exc()
        abort(comm, EXIT_ERROR)
        return EXIT_ERROR
    trainer.close()
    return code
