"""Learning targets (issue table): train a preset with a fixed seed and record what it reached.

    python benchmarks/learning.py hopper --ranks 2 [--seed 0] [--strategy snes] [--set generations=300 ...]

Runs `mpiexec -n R python -m nes_mpi --config PRESET` into benchmarks/results/runs/<name>,
then writes benchmarks/results/learning_<name>.json (timesteps and wall time at which each
target was first reached by the evaluation return, the best evaluation return, cores) and
the learning curve benchmarks/results/learning_<name>.png. An existing run directory is
resumed (--resume auto), so an interrupted benchmark continues where it stopped.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, machine_info, write_result  # noqa: E402

# (task, target return, within timesteps, reference)
TARGETS = {
    "CartPole-v1": [(500, 0.2e6, "")],
    "InvertedPendulum-v5": [(1000, 0.3e6, "OpenAI ES 1,000 at 0.46 M")],
    "HalfCheetah-v5": [(2400, 2.5e6, "OpenAI ES 2,386 at 2.9 M"), (4800, 12e6, "ARS 4,815 at 12 M")],
    "Hopper-v5": [(3000, 7e6, "OpenAI ES 3,403 at 31.6 M; ARS 3,344 at 7 M")],
    "Walker2d-v5": [(4000, 30e6, "OpenAI ES 3,830 at 37.9 M")],
    "Ant-v5": [(3000, 30e6, "ARS 2,334 at 75 M")],
    "Humanoid-v5": [(6000, 50e6, "ARS 6,000 within 24,000 episodes; OpenAI ES 6,000 in 10 min on 1,440 cores")],
}


def _rank_pids(root: int) -> list[int]:
    """The trainer's ranks among the descendants of mpiexec `root` (MPICH's proxies start each in its own
    session, so the process group does not find them)."""
    children: dict[int, list[int]] = {}
    cmds: dict[int, list[bytes]] = {}
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            ppid = int((p / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmds[int(p.name)] = (p / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        children.setdefault(ppid, []).append(int(p.name))
    found, todo = [], list(children.get(root, []))
    while todo:
        pid = todo.pop()
        todo += children.get(pid, [])
        if b"nes_mpi" in cmds.get(pid, []) and b"hydra" not in cmds[pid][0]:
            found.append(pid)
    return found


def run_until_targets(cmd, log_csv: Path, targets) -> tuple[int, bool]:
    """Run the trainer; once the evaluation return has reached every target, send SIGUSR1 to its ranks (they
    checkpoint at the end of the generation and exit 75). Returns (exit code, stopped at the targets)."""
    proc = subprocess.Popen(cmd, start_new_session=True)
    stopped = False
    while proc.poll() is None:
        time.sleep(5)
        if stopped or not targets or not log_csv.exists():
            continue
        try:
            rows = list(csv.DictReader(open(log_csv)))
        except (OSError, csv.Error):
            continue
        if all(first_reach(rows, t)[0] is not None for t, _, _ in targets):
            for pid in _rank_pids(proc.pid):
                try:
                    os.kill(pid, signal.SIGUSR1)
                except ProcessLookupError:
                    pass
            stopped = True
    return proc.returncode, stopped


def _progress(run_dir: Path) -> tuple[int, int, float]:
    """(generation, timesteps, wall seconds) of the run's newest good checkpoint, zeros for a new run."""
    from nes_mpi.checkpoint import latest_good, load
    path = latest_good(run_dir)[0] if run_dir.exists() else None
    if path is None:
        return 0, 0, 0.0
    state = load(path)
    return state.generation, state.timesteps, state.wall_seconds


def _sessions(json_path: Path, before: tuple[int, int, float]) -> list[dict]:
    """The sessions recorded by earlier invocations. A run older than this record gets one entry for what it
    had done before, at the ranks its JSON names (an upper bound if it changed rank counts on the way)."""
    if not json_path.exists():
        return []
    old = json.loads(json_path.read_text())
    if "sessions" in old:
        return [x for x in old["sessions"] if x["generations"][1] <= before[0]]
    if before[0] == 0:
        return []
    ranks = old.get("ranks", 1)
    return [{"started": None, "commit": None, "ranks": ranks, "generations": [0, before[0]],
             "timesteps": [0, before[1]], "wall_seconds": before[2], "core_hours": before[2] * ranks / 3600,
             "note": "before sessions were recorded"}]


def first_reach(rows, target):
    for r in rows:
        if r["eval_return"] and float(r["eval_return"]) >= target:
            return int(r["timesteps"]), float(r["wall_seconds"])
    return None, None


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("preset")
    ap.add_argument("--ranks", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--strategy", default=None, help="--strategy of the trainer (openai, snes, pgpe; default: the preset's)")
    ap.add_argument("--name", default=None, help="result name (default: preset[-STRATEGY unless openai][-seedN])")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="extra trainer options")
    ap.add_argument("--fresh", action="store_true", help="delete an existing run directory first")
    ap.add_argument("--report-only", action="store_true",
                    help="do not train: write the JSON and curve from the run directory as it stands")
    ap.add_argument("--until-targets", action="store_true",
                    help="stop the run (SIGUSR1: checkpoint, exit) once every target of its task is reached")
    args = ap.parse_args()
    if args.strategy is None:
        from nes_mpi.config import load_toml
        args.strategy = load_toml(args.preset).get("strategy", "openai")
    name = args.name or (args.preset + ("" if args.strategy == "openai" else f"-{args.strategy}")
                         + ("" if args.seed == 0 else f"-seed{args.seed}"))
    run_dir = RESULTS / "runs" / name
    if args.fresh and run_dir.exists():
        shutil.rmtree(run_dir)
    extra = []
    for kv in args.set:
        k, _, v = kv.partition("=")
        extra += [f"--{k.replace('_', '-')}", v]
    bindir = Path(sys.executable).parent
    mpiexec = shutil.which("mpiexec", path=str(bindir)) or "mpiexec"
    cmd = [mpiexec, "-n", str(args.ranks), sys.executable, "-m", "nes_mpi", "--config", args.preset,
           "--seed", str(args.seed), "--strategy", args.strategy, "--run-dir", str(run_dir), "--resume", "auto", "--log-every", "10", *extra]
    if not args.report_only:
        print("running:", " ".join(cmd), flush=True)
    t0 = time.time()
    at_start = machine_info()  # the date, code and libraries this session trains with
    from nes_mpi.checkpoint import latest_good, load
    before = _progress(run_dir)
    from nes_mpi.config import load_toml
    env_id = load_toml(args.preset).get("env", "")
    if args.report_only:
        code, at_targets = 0, False
    else:
        code, at_targets = run_until_targets(cmd, run_dir / "log.csv", TARGETS.get(env_id, []) if args.until_targets else [])
    if code not in (0, 75):  # 75: stopped by a signal, with a checkpoint to resume from
        sys.exit(code)
    rows = list(csv.DictReader(open(run_dir / "log.csv")))
    state = load(latest_good(run_dir)[0])
    sessions = _sessions(RESULTS / f"learning_{name}.json", before)
    if not args.report_only and state.generation > before[0]:
        sessions.append({"started": at_start["date"], "commit": at_start["git_commit"], "ranks": args.ranks,
                         "generations": [before[0], state.generation], "timesteps": [before[1], state.timesteps],
                         "wall_seconds": state.wall_seconds - before[2],
                         "core_hours": (state.wall_seconds - before[2]) * args.ranks / 3600,
                         "versions": {k: at_start[k] for k in ("mujoco", "gymnasium", "numpy", "mpi")}})
    env = state.config["env"]
    evals = [float(r["eval_return"]) for r in rows if r["eval_return"]]
    reached = []
    for target, within, ref in TARGETS.get(env, []):
        ts, wall = first_reach(rows, target)
        reached.append({"target": target, "within_timesteps": within, "reference": ref, "reached_at_timesteps": ts,
                        "reached_at_wall_seconds": wall, "met": ts is not None and ts <= within,
                        "best_eval_within_budget": max([float(r["eval_return"]) for r in rows
                                                        if r["eval_return"] and int(r["timesteps"]) <= within] or [None])})
    png = RESULTS / f"learning_{name}.png"
    subprocess.call([sys.executable, "-m", "nes_mpi", "plot", str(run_dir), "-o", str(png), "--title", f"{env} ({name})"])
    write_result(f"learning_{name}", {
        "command": "python benchmarks/learning.py " + " ".join(sys.argv[1:]), "env": env, "preset": args.preset,
        "strategy": state.config.get("strategy", "openai"), "seed": args.seed, "ranks": args.ranks, "generations": state.generation, "timesteps": state.timesteps,
        "wall_seconds": state.wall_seconds,
        "core_hours": sum(x["core_hours"] for x in sessions) if sessions else state.wall_seconds * args.ranks / 3600,
        # one entry per invocation that trained: a run continued over sessions, or moved between rank counts,
        # is one run (exact resume), and its core-hours are the sum of each session's wall time x its ranks
        "sessions": sessions,
        "best_eval_return": max(evals) if evals else None, "final_eval_return": evals[-1] if evals else None,
        "targets": reached, "config": state.config, "session_seconds": time.time() - t0,
        "stopped_at_targets": at_targets, "machine": at_start,
        # stopped before its budget with a target still open (a signal, or --report-only on a live or
        # interrupted run): `learning.py` with the same arguments resumes it
        "in_progress": not all(r["reached_at_timesteps"] is not None for r in reached)
                       and state.timesteps < (state.config.get("timesteps") or float("inf"))
                       and state.generation < state.config["generations"], "curve": png.name,
    })
    for r in reached:
        status = "MET" if r["met"] else "not met"
        at = f"{r['reached_at_timesteps'] / 1e6:.2f} M timesteps" if r["reached_at_timesteps"] else "not reached"
        print(f"{env}: target {r['target']} within {r['within_timesteps'] / 1e6:g} M -> {at} [{status}]")


if __name__ == "__main__":
    main()
