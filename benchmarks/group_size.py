#!/usr/bin/env python
"""Does the lockstep group size matter? The trainer at 1 rank with its members stepped in
groups of 1, 8 or all of them (one batched policy forward per group and step).

The trainer steps all of a rank's members in lockstep. On a host whose caches are
small, 40 environments stepped in turn may not stay in cache, and smaller groups
could step faster. A member's result does not depend on its batch, so this script
swaps the trainer's `rollout` for one that runs the members group by group (the
trainer itself is unchanged) and measures, interleaved, per group size: trainer
steps/s by wall and by CPU clock, and the share of the run inside env.step/reset.

    .venv/bin/python benchmarks/group_size.py            # HalfCheetah-v5, ~3 minutes

Writes benchmarks/results/group_size.json.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402  (sets one thread per process before numpy loads)
import numpy as np  # noqa: E402
import throughput  # noqa: E402

import nes_mpi.trainer as trainer_module  # noqa: E402
from nes_mpi.rollout import RolloutResult, rollout  # noqa: E402


def grouped(size: int):
    """The trainer's rollout, run `size` members at a time (all at once if size <= 0)."""
    def run(envs, max_steps, policy, params, seeds, *args, **kw):
        n = len(seeds)
        g = n if size <= 0 else size
        parts = [rollout(envs[lo : lo + g], max_steps, policy, params[lo : lo + g], seeds[lo : lo + g], *args, **kw)
                 for lo in range(0, n, g)]
        errors = [(slot + i * g, msg) for i, p in enumerate(parts) for slot, msg in p.errors]
        return RolloutResult(*(np.concatenate([getattr(p, f) for p in parts]) for f in
                               ("returns", "fitness", "steps", "obs_sum", "obs_sumsq", "failed")), errors)
    return run


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--env", default="HalfCheetah-v5")
    ap.add_argument("--population", type=int, default=40)
    ap.add_argument("--generations", type=int, default=5)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1, 8, 0], help="0 = all members together")
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    machine = common.machine_info()
    runs: dict[int, list[dict]] = {g: [] for g in a.sizes}
    for r in range(a.repeats):
        for g in a.sizes:
            trainer_module.rollout = grouped(g)
            c = time.process_time()
            out = throughput.trainer_run(a.env, a.generations, a.population, record=False, timed=True)
            cpu = time.process_time() - c
            runs[g].append({"steps_per_s": out["steps_per_s"], "steps_per_cpu_s": out["timesteps"] / cpu,
                            "env_share": out["env_share"], "timesteps": out["timesteps"]})
            print(f"  rep {r}: group {g or 'all'}: {out['steps_per_s']:,.0f} steps/s wall, "
                  f"{out['timesteps'] / cpu:,.0f} per CPU second, inside env.step/reset {out['env_share']:.1%}", flush=True)
    trainer_module.rollout = rollout
    med = {g: {k: statistics.median(x[k] for x in v) for k in ("steps_per_s", "steps_per_cpu_s", "env_share")}
           for g, v in runs.items()}
    print(f"\n{a.env}, population {a.population}, 1 rank (medians of {a.repeats}):")
    for g, m in med.items():
        print(f"  group {g or 'all':>3}: {m['steps_per_s']:9,.0f} steps/s wall, {m['steps_per_cpu_s']:9,.0f} per CPU s, "
              f"env.step share {m['env_share']:.1%}")
    common.write_result("group_size", {"benchmark": "group_size", "command": "python benchmarks/group_size.py "
                        + " ".join(sys.argv[1:]), "machine": machine, "env": a.env, "population": a.population,
                        "runs": {str(g): v for g, v in runs.items()}, "median": {str(g): m for g, m in med.items()}})
    return 0


if __name__ == "__main__":
    sys.exit(main())
