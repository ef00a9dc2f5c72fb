#!/usr/bin/env python
"""What a learning run costs: core-hours here, and the cost model's wall-clock at 64 and 1,024 ranks.

    python benchmarks/forecast.py humanoid-seed0 [--ranks 64 1024]     # ~30 s

Reads the run's log (benchmarks/results/runs/NAME/log.csv: per generation its timesteps, episodes and
seconds) and predicts, generation by generation, the wall-clock of the same run (same population, same
maths) on P ranks, 64 per node, InfiniBand:

  rollout(g, P) = steps(g) / P * c / (1 - idle(P))
      c: this run's own seconds per member-step on one core (everything included: the policy, the
         environment, the update of a 1-rank run), so the prediction is anchored to what was measured;
      idle(P): the share of a generation a rank waits for the slowest one, from the schedule model
         (schedule.py's event simulation, with the generation's episode lengths drawn around its mean
         as in the from-scratch Humanoid sample of schedule.json): at 64 ranks, 16 members per rank,
         `--schedule dynamic`; at 1,024 ranks each rank runs one member and waits for the longest;
  non_rollout(P): ask, update (node split), Allgatherv, observation statistics, hash check, checkpoint
         and log, from cost_model.py's model at the design point's measured components.

and, for the rest of the budget, the same at full 1,000-step episodes (the cost model's assumption, where
a walking humanoid ends). Writes benchmarks/results/forecast_NAME.json.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402  (one thread per process before numpy loads)
import cost_model  # noqa: E402
import numpy as np  # noqa: E402
import schedule  # noqa: E402


def ranks_at(learning: dict, generation: int) -> int:
    """The ranks generation `generation` ran on: from the run's recorded sessions, else the JSON's ranks."""
    for s in learning.get("sessions", []):
        if s["generations"][0] < generation <= s["generations"][1]:
            return s["ranks"]
    return learning["ranks"]


def run_dim(cfg: dict, obs_dim: int, act_dim: int) -> int:
    """Parameters of the run's policy (the update, the hash check and the checkpoint scale with them)."""
    sizes = [obs_dim, *(cfg.get("hidden_sizes") or [] if cfg.get("policy", "mlp") == "mlp" else []), act_dim]
    return sum(sizes[i] * sizes[i + 1] + sizes[i + 1] for i in range(len(sizes) - 1))


def idle_fraction(mean_len: float, ranks: int, members: int, sample: np.ndarray, overhead: float) -> float:
    """Idle share of a generation whose episodes average `mean_len` steps, by the schedule model."""
    lengths = np.clip(np.round(sample * mean_len / sample.mean()), 1, common.EPISODE_STEPS)
    if members == 1:  # no queue to balance: every rank waits for the longest of `ranks` draws
        rng = np.random.default_rng(0)
        draws = rng.choice(lengths, size=(200, ranks))
        return float(np.median(1 - draws.mean(axis=1) / draws.max(axis=1)))
    return schedule.model(lengths, members, overhead, ranks=min(ranks, cost_model.RANKS_PER_NODE), draws=40)["idle_dynamic"]["median"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("name", help="a learning run: benchmarks/results/runs/NAME")
    ap.add_argument("--ranks", type=int, nargs="+", default=[64, 1024])
    a = ap.parse_args()
    run = common.RESULTS / "runs" / a.name
    rows = list(csv.DictReader(open(run / "log.csv")))
    learning = json.loads((common.RESULTS / f"learning_{a.name}.json").read_text())
    cfg = learning["config"]
    pop, budget = cfg["population"], cfg.get("timesteps") or 0
    gens = []
    prev_t, prev_e = 0, 0
    for r in rows[1:]:
        t, e, g = int(r["timesteps"]), int(r["episodes"]), int(r["generation"])
        gens.append({"steps": t - prev_t, "episodes": e - prev_e, "seconds": float(r["gen_seconds"]),
                     "ranks": ranks_at(learning, g)})
        prev_t, prev_e = t, e
    steps = sum(g["steps"] for g in gens)
    core_seconds = sum(g["seconds"] * g["ranks"] for g in gens)
    c = core_seconds / steps  # seconds per member-step on one core, all included
    sj = json.loads((common.RESULTS / "schedule.json").read_text())
    sample = np.array(sj["model_64_ranks"]["Humanoid-v5 (from scratch)"]["member_steps"], dtype=float)
    overhead = sj["model_64_ranks"]["Humanoid-v5 (from scratch)"]["overhead_in_env_steps"]

    dpj, scj, bw, ns = (cost_model.load(n) for n in ("design_point", "scaling", "bandwidth", "node_split"))
    comp = dpj["components"]["cpu"]
    k = cost_model.measure_kernels()
    k["split"] = cost_model.split_kernel(ns)
    hum = dict(cost_model.tasks(dpj, scj)["Humanoid-v5 256-256"], dim=run_dim(cfg, 348, 17))
    b1 = bw["per_stream_bytes_per_s"]["1"]

    result = {"benchmark": "forecast", "command": f"python benchmarks/forecast.py {a.name}", "run": a.name,
              "env": learning["env"], "population": pop, "parameters": hum["dim"], "generations": len(gens), "timesteps": steps,
              "budget_timesteps": budget, "in_progress": learning.get("in_progress", False),
              "core_hours_here": core_seconds / 3600, "seconds_per_member_step_here": c,
              "machine": common.machine_info(), "at": {}}
    print(f"{a.name}: {len(gens)} generations, {steps / 1e6:.2f} M timesteps, {core_seconds / 3600:.2f} core-hours "
          f"here ({c * 1e6:.0f} us per member-step on one core)")
    for asked in a.ranks:
        p = min(asked, pop)  # a rank runs whole members: a population of 460 keeps at most 460 ranks busy
        m = max(1, math.ceil(pop / p))
        g0 = cost_model.generation(p, m, hum, k, comp, b1, common.NETWORKS["ib"], "node_split")
        non = g0["non_rollout_s"]
        wall, idles = 0.0, []
        for g in gens:
            mean_len = g["steps"] / max(1, g["episodes"])
            idle = idle_fraction(mean_len, p, m, sample, overhead)
            idles.append(idle)
            wall += g["steps"] / p * c / (1 - idle) + non
        rest = max(0, budget - steps)
        rest_gens = rest / (pop * common.EPISODE_STEPS)
        rest_wall = rest / p * c + rest_gens * non  # upright, full-length episodes: no idle
        result["at"][str(asked)] = {"ranks_used": p, "members_per_rank": m, "non_rollout_s_per_generation": non,
                                "idle_median": float(np.median(idles)), "wall_seconds_so_far": wall,
                                "wall_seconds_rest_of_budget_full_episodes": rest_wall,
                                "wall_seconds_whole_budget": wall + rest_wall}
        print(f"  {asked:5d} ranks ({p} used, {m} member(s) each): so far {wall / 60:7.1f} min (idle median {np.median(idles):.0%}, "
              f"{non * 1e3:.0f} ms non-rollout per generation); the whole {budget / 1e6:.0f} M budget "
              f"{(wall + rest_wall) / 60:.1f} min")
    common.write_result(f"forecast_{a.name}", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
