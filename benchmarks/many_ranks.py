#!/usr/bin/env python
"""The users' literal command at its literal size: `mpiexec -n 64 python -m nes_mpi` on one node.

This machine has 2 cores, so 64 ranks are oversubscribed 32-fold: the figures are
what a small node pays to start and hold 64 ranks, not a speed. For each task it
runs the trainer at 1 rank and at 64 ranks with the same config and records:

  time to the first generation   from starting mpiexec to the first row of log.csv
                                 (64 interpreters importing numpy, gymnasium, MuJoCo,
                                 MPI start-up, the node-shared noise table)
  total time                     mpiexec start to exit
  node memory                    peak over the run of the sum of PSS over the 64 ranks
                                 plus mpiexec and its proxy (/proc/<pid>/smaps_rollup,
                                 sampled every --interval seconds)
  noise table                    the run's own report: copies, nodes, summed PSS
  bitwise                        the final parameters' sha256 at 64 ranks == at 1 rank

    .venv/bin/python benchmarks/many_ranks.py                 # CartPole and Hopper, ~3-5 minutes
    .venv/bin/python benchmarks/many_ranks.py --tasks cartpole

Writes benchmarks/results/many_ranks.json.
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402  (sets one thread per process before numpy loads)

TASKS = {
    "cartpole": ["--env", "CartPole-v1", "--population", "128", "--generations", "5"],
    "hopper": ["--env", "Hopper-v5", "--population", "128", "--generations", "3", "--max-episode-steps", "200"],
}
COMMON_ARGS = ["--eval-every", "0", "--noise-table-size", str(1 << 22), "--check-every", "1"]
MB = 1e6


def params_sha(run_dir: Path) -> str:
    ckpt = sorted((run_dir / "checkpoints").glob("ckpt_*.h5"))[-1]
    out = subprocess.run([common.PYTHON, "-m", "nes_mpi", "info", str(ckpt), "--json"], capture_output=True,
                         text=True, check=True, cwd=common.REPO)
    return json.loads(out.stdout)["params_sha256"]


def one_run(ranks: int, args: list[str], run_dir: Path, interval: float) -> dict:
    t0 = time.perf_counter()
    first_row = [None]

    def sampler(pids: dict[int, int], root: int) -> dict | None:
        now = time.perf_counter() - t0
        if first_row[0] is None and common.log_rows(run_dir) >= 1:
            first_row[0] = now
        if len(pids) < ranks:
            return None
        total = 0
        for pid in set(common.descendants(root)) | {root}:  # the ranks, the hydra proxy and mpiexec itself
            r = common.rollup(pid)
            total += r["Pss"] if r else 0
        return {"t": now, "node_pss": total}

    r = common.run_trainer(ranks, args, run_dir, poll=interval, sampler=sampler)
    samples = [s for s in r["samples"] if s]
    out_text = (run_dir.parent / f"{run_dir.name}.out").read_text()
    layout = re.search(r"nes_mpi: noise table: .*", out_text)
    return {
        "ranks": ranks, "cmd": " ".join(r["cmd"]),
        "time_to_first_generation_s": first_row[0], "total_s": r["process_seconds"],
        "gen_seconds": [float(row["gen_seconds"]) for row in r["rows"]],
        "idle_fraction": [float(row["idle_fraction"]) for row in r["rows"]],
        "timesteps": int(r["rows"][-1]["timesteps"]),
        "node_pss_peak_mb": max((s["node_pss"] for s in samples), default=0) / MB,
        "pss_samples": len(samples),
        "noise_table_report": layout[0] if layout else None,
        "params_sha256": params_sha(run_dir),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ranks", type=int, default=64)
    ap.add_argument("--tasks", nargs="+", choices=sorted(TASKS), default=["cartpole", "hopper"])
    ap.add_argument("--interval", type=float, default=0.5, help="seconds between memory samples")
    ap.add_argument("--out", default="many_ranks")
    a = ap.parse_args()
    machine = common.machine_info()
    print(f"many_ranks: {a.ranks} ranks on {machine['nproc']} cpus, {machine['mem_total_mb']:.0f} MB RAM, "
          f"load {machine['loadavg_at_start'][0]:.2f}; {machine['mpi']}", flush=True)
    result = {"benchmark": "many_ranks", "command": "python benchmarks/many_ranks.py " + " ".join(sys.argv[1:]),
              "machine": machine, "tasks": {}}
    ok = True
    tmp = Path(tempfile.mkdtemp(prefix="nes_many_"))
    try:
        for task in a.tasks:
            args = TASKS[task] + COMMON_ARGS
            runs = {p: one_run(p, args, tmp / f"{task}_p{p}" / "run", a.interval) for p in (1, a.ranks)}
            big = runs[a.ranks]
            same = runs[1]["params_sha256"] == big["params_sha256"] and runs[1]["timesteps"] == big["timesteps"]
            ok &= same
            result["tasks"][task] = {"args": args, "runs": runs, "bitwise_equal_to_1_rank": same}
            for p, r in runs.items():
                print(f"  {task:8s} {p:3d} rank(s): first generation after {r['time_to_first_generation_s']:.1f} s, "
                      f"total {r['total_s']:.1f} s, node PSS peak {r['node_pss_peak_mb']:.0f} MB "
                      f"({r['node_pss_peak_mb'] / p:.0f} MB per rank), {r['timesteps']:,} timesteps", flush=True)
            print(f"  {task:8s} {big['noise_table_report']}")
            print(f"  {task:8s} parameters at {a.ranks} ranks {'==' if same else '!='} 1 rank (sha256 "
                  f"{big['params_sha256'][:16]}...)", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    common.write_result(a.out, result)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
