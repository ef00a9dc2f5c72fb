"""Command line: `python -m nes_mpi [train] ...`, `info`, `eval`, `plot`, `export`, `status`."""
from __future__ import annotations

import os
import sys

# The subcommands other than `train`: they keep Python's default signal behaviour.
TOOLS = ("info", "eval", "plot", "export", "status")

# Stop handlers before anything heavy: a SIGTERM/SIGUSR1 in the seconds spent importing numpy,
# torch, gymnasium and in MPI_Init must become a clean stop, not a death by signal (nes_mpi.signals).
if not (len(sys.argv) > 1 and sys.argv[1] in TOOLS):
    from .signals import install_early

    install_early()

# One thread per rank: set before numpy/torch load their thread pools.
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "BLIS_NUM_THREADS", "VECLIB_MAXIMUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402

from .config import ConfigError, add_config_arguments  # noqa: E402

SUBCOMMANDS = ("train", *TOOLS)
EXIT_BAD_INPUT = 2


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of printing, so only rank 0 reports the error."""

    def error(self, message):
        raise ConfigError(message)


def build_parser() -> argparse.ArgumentParser:
    top = _Parser(prog="python -m nes_mpi",
                  description="MPI-parallel Natural Evolution Strategies for gymnasium / MuJoCo control. "
                              "Run under mpiexec/srun for more ranks; `train` is the default subcommand.")
    sub = top.add_subparsers(dest="command", parser_class=_Parser)
    train = sub.add_parser(
        "train", help="train a policy (default)",
        description="Train a policy with NES. With no options it trains the default MuJoCo task.",
        epilog="other subcommands: info CKPT [--json] | eval CKPT [--episodes N] [--env ENV] [--render out.mp4] | "
               "plot RUN_DIR [...] -o curves.png | export CKPT -o policy.pt|policy.onnx | status RUN_DIR. "
               "Exit codes: 0 done, 2 bad input, 75 stopped by a signal "
               "after writing a checkpoint (submit again with --resume auto), 1 error.")
    train.add_argument("--config", metavar="TOML", help="read options from a TOML file, or a preset name from nes_mpi/presets (command line wins)")
    train.add_argument("--resume", metavar="auto|PATH",
                       help="continue from a checkpoint file, or 'auto': the newest good one in --run-dir, "
                            "starting fresh when there is none")
    train.add_argument("--force", action="store_true",
                       help="allow changing settings that alter the run (env, policy, population, seed, ...) on resume")
    train.add_argument("--rewind", action="store_true",
                       help="with --resume PATH of an older checkpoint of --run-dir: move the later checkpoints and "
                            "log.csv into RUN_DIR/rewound-<time>/ and continue from PATH (nothing is deleted)")
    add_config_arguments(train)

    info = sub.add_parser("info", help="show what a checkpoint holds")
    info.add_argument("checkpoint")
    info.add_argument("--json", action="store_true", help="print one JSON object")

    ev = sub.add_parser("eval", help="evaluate a checkpoint's policy")
    ev.add_argument("checkpoint")
    ev.add_argument("--env", help="the environment to run; required when the checkpoint's is a 'module:...' entry "
                                  "point, since opening a checkpoint never imports code it names")
    ev.add_argument("--episodes", type=int, default=10)
    ev.add_argument("--seed", type=int, default=12345, help="seed of the evaluation episodes")
    ev.add_argument("--render", metavar="OUT.mp4|OUT.gif", help="write a video rendered offscreen (MUJOCO_GL=egl)")
    ev.add_argument("--render-episodes", type=int, default=1, help="episodes to put in the video")
    ev.add_argument("--fps", type=int, default=0, help="video frame rate (default: the env's)")
    ev.add_argument("--no-progress", action="store_true", help="hide the progress bar")

    export = sub.add_parser("export", help="write a checkpoint's policy as TorchScript (.pt) or ONNX (.onnx)",
                            description="Write the policy, observation normalisation included, as a standalone file "
                                        "taking raw float32 observations of shape (batch, obs_dim).")
    export.add_argument("checkpoint")
    export.add_argument("-o", "--output", required=True, metavar="POLICY.pt|POLICY.onnx")

    plot = sub.add_parser("plot", help="plot learning curves of one or more run directories")
    plot.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    plot.add_argument("-o", "--output", default="curves.png")
    plot.add_argument("--title", default=None)

    status = sub.add_parser(
        "status", help="is a run finished? (for batch scripts; no MPI)",
        description="Report whether a run directory's newest good checkpoint has reached the run's generation or "
                    "timesteps budget.",
        epilog="Exit codes: 0 finished, 3 unfinished, 4 no usable checkpoint, 2 bad input.")
    status.add_argument("run_dir", metavar="RUN_DIR")
    status.add_argument("--generations", type=int, default=None,
                        help="the budget to compare with (default: the one stored in the checkpoint)")
    status.add_argument("--timesteps", type=int, default=None,
                        help="the timesteps budget to compare with (default: the one stored in the checkpoint; 0: none)")
    status.add_argument("--json", action="store_true", help="print one JSON object")
    return top


def parse(argv: list[str]) -> argparse.Namespace:
    if not argv or (argv[0] not in SUBCOMMANDS and argv[0] not in ("-h", "--help")):
        argv = ["train", *argv]
    elif argv[0] in ("-h", "--help"):
        argv = ["train", "--help"]
    return build_parser().parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = parse(argv)
    except ConfigError as e:
        return _bad_input(str(e))
    if args.command == "train":
        from .cli_train import run_train
        return run_train(args)
    import signal
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # `info ... | head` should not print a traceback
    try:
        if args.command == "info":
            from .info import run_info
            return run_info(args)
        if args.command == "eval":
            from .evaluate import run_eval
            return run_eval(args)
        if args.command == "export":
            from .export import run_export
            return run_export(args)
        if args.command == "plot":
            from .plot import run_plot
            return run_plot(args)
        if args.command == "status":
            from .run_state import run_status
            return run_status(args)
    except ConfigError as e:
        print(f"nes_mpi: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    raise AssertionError(args.command)


def _bad_input(msg: str) -> int:
    rank = 0
    for var in ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK", "SLURM_PROCID"):
        if os.environ.get(var, "").isdigit():
            rank = int(os.environ[var])
            break
    if rank == 0:
        print(f"nes_mpi: error: {msg}", file=sys.stderr, flush=True)
    return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
