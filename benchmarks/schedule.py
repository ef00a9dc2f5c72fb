#!/usr/bin/env python
"""Static slices vs dynamic assignment of members to ranks, measured in one benchmark run, modelled at 64.

  measured  the trainer resumed from the trained Hopper policy (hopper-seed0's best.h5,
            population 80, episodes up to 1,000 steps, early falls) at 2, 3 and 8 ranks
            (8: oversubscribed 4-fold on this 2-core machine), `--schedule static` and
            `--schedule dynamic` alternated, twice each. Both schedules compute the same
            bits, so the same generations give both the same members and episodes: the
            comparison is paired. Per run: the log's idle_fraction and moved_members per
            generation, and generation seconds.
  uniform   HalfCheetah-v5 (every episode 1,000 steps) and CartPole-v1 at 2 ranks, static and
            dynamic alternated: steps per second of the generations (dynamic steps 8 members in
            lockstep where static steps a rank's whole slice).
  modelled  64 ranks on one node x m members, episode lengths bootstrapped from one generation
            of the trained Hopper (and of Humanoid from scratch, as benchmarks/idle.py), a rank's
            time = its member-steps (a lockstep step costs one unit per active slot). Static:
            1 - mean/max of the ranks' sums. Dynamic: an event simulation of the trainer's
            rule (min(m, 8) slots; a slot that frees takes the next member of its own slice,
            then of the node's other slices in ring order).

    .venv/bin/python benchmarks/schedule.py          # ~15 minutes on 2 busy cores

Writes benchmarks/results/schedule.json.
"""
from __future__ import annotations

import argparse
import heapq
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402  (sets one thread per process before numpy loads)
import idle  # noqa: E402
import numpy as np  # noqa: E402

HOPPER = common.REPO / "benchmarks" / "results" / "runs" / "hopper-seed0" / "checkpoints" / "best.h5"
RANKS = (2, 3, 8)
SCHEDULES = ("static", "dynamic")
GROUP = 8  # nes_mpi.trainer.LOCKSTEP_GROUP, read below


def summarise(rows: list[dict]) -> dict:
    steps = np.array([float(r["timesteps"]) for r in rows])
    secs = np.array([float(r["gen_seconds"]) for r in rows])
    rate = float((steps[-1] - steps[0]) / secs[1:].sum()) if len(rows) > 1 else None  # past the first generation
    return {"idle_fraction": [float(r["idle_fraction"]) for r in rows],
            "moved_members": [int(float(r["moved_members"])) for r in rows],
            "gen_seconds": secs.tolist(), "steps_per_s": rate}


def measure(tmp: Path, ranks: int, schedule: str, args: list[str], start: int, tag: str) -> dict:
    r = common.run_trainer(ranks, [*args, "--schedule", schedule], tmp / tag / "run", timeout=3600)
    rows = [row for row in r["rows"] if int(row["generation"]) > start]
    return {"cmd": " ".join(r["cmd"]), "cpu_share": r["cpu_share"], **summarise(rows)}


def node_times(lengths: np.ndarray, slots: int, overhead: float, dynamic: bool) -> np.ndarray:
    """Each rank's rollout time on one node, by event simulation; lengths: (ranks, members) episode steps.

    A lockstep step of a rank costs (active members + `overhead`) units: one per env.step and the
    batched policy forward. Static: rank r runs row r, all at once. Dynamic: the trainer's rule
    (work_queue.NodeWorkQueue): one queue over the node's members in order; each rank first takes
    min(slots, members) of them, then a freed slot takes the next one while the rank runs fewer than
    min(slots, ceil(unstarted / ranks)) members.
    """
    n_ranks, m = lengths.shape
    pool = lengths.ravel()
    pos = 0

    def take(r, busy):
        nonlocal pos
        if not dynamic:
            return None
        if pos >= pool.size or (busy and busy >= min(slots, math.ceil((pool.size - pos) / n_ranks))):
            return None
        pos += 1
        return float(pool[pos - 1])

    active: list[list[float]] = []
    for r in range(n_ranks):
        if dynamic:
            active.append([])
            for _ in range(min(slots, m)):
                got = take(r, 0)  # the first batch is filled whatever the queue's pace (rollout_stream)
                if got is not None:
                    active[r].append(got)
        else:
            active.append([float(x) for x in lengths[r]])
    clock = [0.0] * n_ranks
    heap = [(min(a) * (len(a) + overhead), r) for r, a in enumerate(active) if a]
    heapq.heapify(heap)
    while heap:
        t, r = heapq.heappop(heap)
        step = min(active[r])
        clock[r] = t
        left = [x - step for x in active[r]]
        active[r] = [x for x in left if x > 0]
        for _ in range(len(left) - len(active[r])):
            got = take(r, len(active[r]))
            if got is not None:
                active[r].append(got)
        if active[r]:
            heapq.heappush(heap, (clock[r] + min(active[r]) * (len(active[r]) + overhead), r))
    return np.array(clock)


def model(steps: np.ndarray, members: int, overhead: float, ranks: int = 64, draws: int = 200) -> dict:
    """Idle fraction under each schedule, and the dynamic generation's rollout time over the static one."""
    rng = np.random.default_rng(0)
    idle = {"static": [], "dynamic": []}
    ratio = []
    for _ in range(draws):
        lengths = rng.choice(steps, size=(ranks, members)).astype(np.float64)
        ends = {}
        for s in SCHEDULES:
            ends[s] = node_times(lengths, min(members, GROUP), overhead, s == "dynamic")
            idle[s].append(1 - ends[s].mean() / ends[s].max())
        ratio.append(ends["dynamic"].max() / ends["static"].max())
    q = lambda xs: {"median": float(np.median(xs)), "p10": float(np.percentile(xs, 10)),  # noqa: E731
                    "p90": float(np.percentile(xs, 90))}
    return {"idle_static": q(idle["static"]), "idle_dynamic": q(idle["dynamic"]),
            "rollout_time_dynamic_over_static": q(ratio)}


def forward_overhead(checkpoint: Path, members: int = 8, repeats: int = 3) -> dict:
    """The policy forward per lockstep step in units of one env.step: CPU seconds per member-step with
    groups of 1 and of `members` (a + c and a + c / members), in-process with the trainer's rollout."""
    from nes_mpi import checkpoint as ckpt
    from nes_mpi.config import Config
    from nes_mpi.envs import make_env
    from nes_mpi.obs_norm import ObsNorm
    from nes_mpi.policy import BatchPolicy, spec_for
    from nes_mpi.rollout import rollout

    state = ckpt.load(checkpoint, legacy=True)
    cfg = Config.from_dict(state.config)
    handles = [make_env(cfg.env, cfg.env_kwargs, cfg.max_episode_steps) for _ in range(members)]
    spec = spec_for(handles[0].outer, cfg.policy, cfg.hidden_sizes, cfg.activation)
    norm = ObsNorm(spec.obs_dim, cfg.obs_clip, cfg.obs_norm)
    norm.load_state_dict(state.obs_norm)
    mean, std = norm.mean_std()
    theta = np.asarray(state.params, dtype=np.float32)
    per_step = {1: [], members: []}
    for rep in range(repeats):
        for g in per_step:
            seeds = [[1000 * rep + j] for j in range(members)]
            cpu0 = time.process_time()
            steps = 0
            for lo in range(0, members, g):
                res = rollout([h.env for h in handles[:g]], handles[0].max_steps, BatchPolicy(spec),
                              np.repeat(theta[None, :], g, axis=0), seeds[lo : lo + g], mean, std, cfg.obs_clip,
                              collect_obs=False)
                steps += int(res.steps.sum())
            per_step[g].append((time.process_time() - cpu0) / steps)
    one, many = (float(np.median(per_step[g])) for g in (1, members))
    c_over_a = (one - many) / (many - one / members)  # from one = a + c, many = a + c / members
    for h in handles:
        h.outer.close()
    return {"cpu_s_per_member_step": {"1": one, str(members): many}, "overhead_in_env_steps": c_over_a}


def main() -> int:
    global GROUP
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--generations", type=int, default=3, help="generations per measured run")
    ap.add_argument("--repeats", type=int, default=2, help="static/dynamic pairs per rank count")
    ap.add_argument("--skip-uniform", action="store_true")
    opts = ap.parse_args()
    common.no_mpi_init()
    from nes_mpi.trainer import LOCKSTEP_GROUP
    GROUP = LOCKSTEP_GROUP
    machine = common.machine_info()
    print(f"schedule: {machine['cpu']}, {machine['nproc']} cpus, load {machine['loadavg_at_start'][0]:.2f}", flush=True)
    result = {"benchmark": "schedule", "command": "python benchmarks/schedule.py", "machine": machine,
              "lockstep_group": GROUP, "hopper": {}, "uniform": {}, "model_64_ranks": {}}
    tmp = Path(tempfile.mkdtemp(prefix="nes_schedule_"))
    try:
        start = idle.common_generation(HOPPER)
        hopper = ["--resume", str(HOPPER), "--force", "--generations", str(start + opts.generations), "--eval-every", "0"]
        for ranks in RANKS:
            runs = {s: [] for s in SCHEDULES}
            for rep in range(opts.repeats):
                for s in SCHEDULES:
                    runs[s].append(measure(tmp, ranks, s, hopper, start, f"hopper{ranks}-{s}-{rep}"))
            paired = [d / s for rs, rd in zip(runs["static"], runs["dynamic"])
                      for s, d in zip(rs["gen_seconds"], rd["gen_seconds"])]
            out = {s: {"runs": runs[s], "idle_median": float(np.median([x for r in runs[s] for x in r["idle_fraction"]]))}
                   for s in SCHEDULES}
            out["gen_seconds_ratio_dynamic_over_static"] = {"median": float(np.median(paired)), "all": paired}
            result["hopper"][ranks] = out
            print(f"  Hopper (trained), {ranks} ranks: idle fraction median static {out['static']['idle_median']:.1%}, "
                  f"dynamic {out['dynamic']['idle_median']:.1%}; moved members per generation "
                  f"{[m for r in runs['dynamic'] for m in r['moved_members']]}; generation seconds dynamic/static "
                  f"median {np.median(paired):.3f}", flush=True)
        if not opts.skip_uniform:
            uniform = {"HalfCheetah-v5": ["--env", "HalfCheetah-v5", "--population", "40"],
                       "CartPole-v1": ["--env", "CartPole-v1", "--population", "80"]}
            for env, args in uniform.items():
                args = [*args, "--generations", str(opts.generations + 1), "--eval-every", "0"]
                runs = {s: [measure(tmp, 2, s, args, 0, f"{env}-{s}-{rep}") for rep in range(opts.repeats)]
                        for s in SCHEDULES}  # noqa: B023
                rate = {s: [r["steps_per_s"] for r in runs[s]] for s in SCHEDULES}
                ratio = float(np.median(rate["dynamic"]) / np.median(rate["static"]))
                result["uniform"][env] = {"runs": runs, "steps_per_s": rate, "ratio_dynamic_over_static": ratio}
                print(f"  {env}, 2 ranks: steps/s static {rate['static']}, dynamic {rate['dynamic']}: "
                      f"dynamic/static {ratio:.3f}", flush=True)
        over = forward_overhead(HOPPER)
        result["forward_overhead"] = over
        c = over["overhead_in_env_steps"]
        print(f"  policy forward per lockstep step = {c:.2f} Hopper env.steps (CPU s per member-step, groups of 1 and "
              f"8: {over['cpu_s_per_member_step']})", flush=True)
        tasks = {"Hopper-v5 (trained)": ("Hopper-v5", 80, HOPPER, start),
                 "Humanoid-v5 (from scratch)": ("Humanoid-v5", 32, None, 0)}
        for name, (env, pop, ckpt, gen) in tasks.items():
            steps = idle.member_steps(env, pop, ckpt, gen)
            result["model_64_ranks"][name] = {"member_steps": steps.tolist(), "overhead_in_env_steps": c,
                                              "members_per_rank": {m: model(steps, m, c) for m in idle.MEMBERS_MODEL}}
            print(f"  modelled at 64 ranks, {name}: " + "; ".join(
                f"{m}/rank idle static {v['idle_static']['median']:.1%} dynamic {v['idle_dynamic']['median']:.1%}, "
                f"rollout time dynamic/static {v['rollout_time_dynamic_over_static']['median']:.3f}"
                for m, v in result["model_64_ranks"][name]["members_per_rank"].items()), flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    common.write_result("schedule", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
