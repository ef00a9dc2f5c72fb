"""Target 1: trainer throughput on one rank / raw simulator throughput, measured in the same run.

For each task the real trainer (1 MPI rank, default 64-64 MLP, population 40) runs
a few generations, counting every second of each generation (noise, rollouts,
normalisation, gather, update, consistency check, logging, checkpoints). Two raw
baselines are measured in the same process:
  * replay: the trainer is deterministic, so a second identical run records every
    episode's seed and actions; those episodes are then replayed through a plain
    `gymnasium.make` env (reset with the same seed, step with the recorded, i.e.
    precomputed, actions). Same states, same actions, same number of steps: the
    like-for-like "raw simulator throughput", and the target's ratio;
  * random: gymnasium's env.step with precomputed random actions on one env (how the
    issue measured raw speed). The simulator's cost depends on the actions (a flailing
    random policy has different contacts than a learning one), so this ratio can differ
    from the like-for-like one in either direction.
A third run per repeat times what the trainer spends inside env.step/reset (a wrapper with
two clock reads per call): that share of the same run's time does not depend on how fast
the machine happens to be, unlike a ratio of two runs.
Usage: python benchmarks/throughput.py [--envs HalfCheetah-v5 ...] [--generations N] [--repeats R]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_result  # noqa: E402

import gymnasium as gym  # noqa: E402
from mpi4py import MPI  # noqa: E402

from nes_mpi.signals import StopRequest  # noqa: E402
from nes_mpi.trainer import Trainer, resolve_config  # noqa: E402

TARGETS = {"HalfCheetah-v5": 0.95, "Hopper-v5": 0.95, "Ant-v5": 0.95, "CartPole-v1": 0.7}
GENERATIONS = {"HalfCheetah-v5": 6, "Hopper-v5": 10, "Ant-v5": 4, "CartPole-v1": 30}


class Recorder:
    """Forwards step/reset to an env and keeps each episode's seed and actions."""

    def __init__(self, env, episodes: list):
        self.env = env
        self.episodes = episodes  # shared by all recorders of a run
        self.actions: list = []

    def reset(self, *, seed=None, **kw):
        self.actions = []
        self.episodes.append((seed, self.actions))
        return self.env.reset(seed=seed, **kw)

    def step(self, action):
        self.actions.append(action.copy() if hasattr(action, "copy") else action)
        return self.env.step(action)


class Timed:
    """Forwards step/reset to an env and adds the seconds spent inside them to a shared counter."""

    def __init__(self, env, clock: list):
        self.env = env
        self.clock = clock  # [seconds], shared by all the run's envs

    def reset(self, **kw):
        t = time.perf_counter()
        out = self.env.reset(**kw)
        self.clock[0] += time.perf_counter() - t
        return out

    def step(self, action):
        t = time.perf_counter()
        out = self.env.step(action)
        self.clock[0] += time.perf_counter() - t
        return out


def replay(env_id: str, episodes: list) -> tuple[float, int]:
    """Seconds and steps to replay recorded episodes (resets included) through gymnasium.make."""
    env = gym.make(env_id)
    steps, t0 = 0, time.perf_counter()
    for seed, actions in episodes:
        env.reset(seed=seed)
        for a in actions:
            env.step(a)
        steps += len(actions)
    return time.perf_counter() - t0, steps


def raw_random(env_id: str, seconds: float = 3.0) -> float:
    env = gym.make(env_id)
    env.reset(seed=0)
    actions = [env.action_space.sample() for _ in range(2000)]
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for a in actions:
            _, _, term, trunc, _ = env.step(a)
            if term or trunc:
                env.reset()
        n += len(actions)
    return n / (time.perf_counter() - t0)


def trainer_run(env_id: str, generations: int, population: int, record: bool, timed: bool = False) -> dict:
    """One trainer run; `record` keeps every episode's seed and actions, `timed` the seconds inside env.step/reset."""
    comm = MPI.COMM_WORLD
    with tempfile.TemporaryDirectory() as d:
        over = {"env": env_id, "generations": generations, "population": population, "run_dir": str(Path(d) / "run"),
                "eval_every": 0, "log_every": 10**6, "checkpoint_every": 10}
        setup = resolve_config(comm, over, None, False)
        tr = Trainer(comm, setup)
        tr.setup_numerics()
        episodes: list = []
        env_clock = [0.0]
        if record:
            tr.envs = [Recorder(e, episodes) for e in tr.envs]
        if timed:
            tr.envs = [Timed(e, env_clock) for e in tr.envs]
        t0 = time.perf_counter()
        tr.run(StopRequest())
        total = time.perf_counter() - t0
        hist = tr.log.history()
        tr.close()
    out = {"seconds": total, "timesteps": int(hist["timesteps"][-1]), "steps_per_s": int(hist["timesteps"][-1]) / total}
    if record:
        out["episodes"] = episodes
    if timed:
        out["env_share"] = env_clock[0] / total
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--envs", nargs="+", default=list(TARGETS))
    ap.add_argument("--population", type=int, default=40)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--scale", type=float, default=1.0, help="multiply the per-task generation counts")
    ap.add_argument("--out", default="throughput", help="result name under benchmarks/results/")
    args = ap.parse_args()
    results = {}
    for env_id in args.envs:
        gens = max(2, int(GENERATIONS.get(env_id, 5) * args.scale))
        reps = []
        recorded = trainer_run(env_id, gens, args.population, record=True)["episodes"]  # same run, every time
        for r in range(args.repeats):  # interleave trainer, replay, random so that noise hits all alike
            plain = trainer_run(env_id, gens, args.population, record=False)
            share = trainer_run(env_id, gens, args.population, record=False, timed=True)["env_share"]
            seconds, steps = replay(env_id, recorded)
            raw = raw_random(env_id)
            rep = {"trainer_steps_per_s": plain["steps_per_s"], "raw_replay_steps_per_s": steps / seconds,
                   "raw_random_steps_per_s": raw, "ratio_vs_replay": plain["steps_per_s"] * seconds / steps,
                   "ratio_vs_random": plain["steps_per_s"] / raw, "replayed_steps": steps,
                   "trainer_timesteps": plain["timesteps"], "env_step_share": share}
            reps.append(rep)
            print(f"{env_id:16s} rep {r}: trainer {rep['trainer_steps_per_s']:9,.0f} steps/s | raw replay "
                  f"{rep['raw_replay_steps_per_s']:9,.0f} -> {rep['ratio_vs_replay']:.3f} | raw random-action "
                  f"{raw:9,.0f} -> {rep['ratio_vs_random']:.3f} | inside env.step/reset {share:.1%} of the trainer's time", flush=True)
        med = {k: statistics.median(x[k] for x in reps) for k in reps[0]}
        target = TARGETS.get(env_id)
        results[env_id] = {"generations": gens, "population": args.population, "repeats": reps, "median": med,
                           "target": target, "met_like_for_like": bool(target and med["ratio_vs_replay"] >= target),
                           "met_vs_random_actions": bool(target and med["ratio_vs_random"] >= target)}
    print("\nenv               trainer steps/s  vs replayed raw (like-for-like)  vs random-action raw  env.step share  target")
    for env_id, r in results.items():
        m = r["median"]
        print(f"{env_id:16s}  {m['trainer_steps_per_s']:14,.0f}  {m['ratio_vs_replay']:31.3f}  {m['ratio_vs_random']:19.3f}"
              f"  {m['env_step_share']:14.1%}  >= {r['target']}")
    write_result(args.out, {"command": "python benchmarks/throughput.py " + " ".join(sys.argv[1:]), "results": results})


if __name__ == "__main__":
    main()
