#!/usr/bin/env python
"""Idle fraction: how long ranks wait for the slowest one, measured at 2 ranks, modelled at 64.

With static slices of the population, a rank whose members live long sets the
pace; early terminations (Hopper, Humanoid) make members' costs unequal. The
trainer gathers each rank's rollout time with its rows and logs
`idle_fraction` = 1 - mean/max over ranks per generation (log.csv).

  measured  the trainer at 2 ranks: Hopper-v5 resumed from the trained
            learning run's best.h5 (population 80, up to 1,000 steps), and
            Humanoid-v5 from scratch (population 32, episodes end when it falls)
  modelled  the same generation's members rolled out in-process with the
            trainer's own functions give each member's episode length; 64
            ranks x m members are drawn from these lengths (bootstrap, 2,000
            draws), a rank's time taken as its members' total steps, and
            idle = 1 - mean/max over the 64 ranks

    .venv/bin/python benchmarks/idle.py          # ~3-5 minutes on 2 cores

Writes benchmarks/results/idle.json.
"""
from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402  (sets one thread per process before numpy loads)
import numpy as np  # noqa: E402

HOPPER_BEST = common.REPO / "benchmarks" / "results" / "runs" / "hopper" / "checkpoints" / "best.h5"
RANKS_MODEL = 64
MEMBERS_MODEL = (2, 4, 8, 16)


def member_steps(env: str, population: int, checkpoint: Path | None, generation: int) -> np.ndarray:
    """Each member's episode length in one generation, with the trainer's functions (no MPI)."""
    from nes_mpi import checkpoint as ckpt
    from nes_mpi.config import Config
    from nes_mpi.envs import make_env
    from nes_mpi.noise import NoiseTable, make_table
    from nes_mpi.obs_norm import ObsNorm
    from nes_mpi.policy import BatchPolicy, initial_params, spec_for
    from nes_mpi.rollout import episode_seed, rollout
    from nes_mpi.strategies import make_strategy

    state = ckpt.load(checkpoint, legacy=True) if checkpoint else None  # read-only: schema 1 and 2 too
    cfg = Config.from_dict(state.config) if state else Config(env=env, population=population)
    handles = [make_env(cfg.env, cfg.env_kwargs, cfg.max_episode_steps) for _ in range(population)]
    spec = spec_for(handles[0].outer, cfg.policy, cfg.hidden_sizes, cfg.activation)
    noise = NoiseTable(make_table(cfg.noise_table_size, cfg.seed), cfg.seed)
    strategy = make_strategy(Config.from_dict({**cfg.to_dict(), "population": population}), noise, spec.num_params)
    norm = ObsNorm(spec.obs_dim, cfg.obs_clip, cfg.obs_norm)
    theta = initial_params(spec, cfg.seed)
    if state:
        theta = np.asarray(state.params, dtype=np.float32)
        norm.load_state_dict(state.obs_norm)
    params = strategy.ask(strategy.init(theta), generation, range(population))
    seeds = [[episode_seed(cfg.seed, generation, m, 0)] for m in range(population)]
    mean, std = norm.mean_std()
    res = rollout([h.env for h in handles], handles[0].max_steps, BatchPolicy(spec), params, seeds, mean, std,
                  cfg.obs_clip, collect_obs=False)
    for h in handles:
        h.outer.close()
    return res.steps


def model_idle(steps: np.ndarray, members: int, ranks: int = RANKS_MODEL, draws: int = 2000) -> dict:
    rng = np.random.default_rng(0)
    per_rank = rng.choice(steps, size=(draws, ranks, members)).sum(axis=2)
    idle = 1 - per_rank.mean(axis=1) / per_rank.max(axis=1)
    return {"median": float(np.median(idle)), "p10": float(np.percentile(idle, 10)), "p90": float(np.percentile(idle, 90))}


def main() -> int:
    common.no_mpi_init()
    machine = common.machine_info()
    print(f"idle: {machine['cpu']}, {machine['nproc']} cpus, load {machine['loadavg_at_start'][0]:.2f}", flush=True)
    tasks = {
        "Hopper-v5 (trained)": {"env": "Hopper-v5", "population": 80, "checkpoint": HOPPER_BEST, "generations": 3},
        "Humanoid-v5 (from scratch)": {"env": "Humanoid-v5", "population": 32, "checkpoint": None, "generations": 4},
    }
    result = {"benchmark": "idle", "command": "python benchmarks/idle.py", "machine": machine, "tasks": {}}
    tmp = Path(tempfile.mkdtemp(prefix="nes_idle_"))
    try:
        for name, t in tasks.items():
            if t["checkpoint"]:
                start = common_generation(t["checkpoint"])
                # --force: the committed checkpoint is schema 1, resumed only with it (README, checkpoint format)
                args = ["--resume", str(t["checkpoint"]), "--force", "--generations", str(start + t["generations"]),
                        "--eval-every", "0"]
            else:
                start = 0
                args = ["--env", t["env"], "--population", str(t["population"]), "--generations",
                        str(t["generations"]), "--eval-every", "0"]
            r = common.run_trainer(2, args, tmp / name.split()[0] / "run", timeout=1800)
            rows = [row for row in r["rows"] if int(row["generation"]) > start]
            measured = [float(row["idle_fraction"]) for row in rows]
            steps = member_steps(t["env"], t["population"], t["checkpoint"], start)
            model = {m: model_idle(steps, m) for m in MEMBERS_MODEL}
            result["tasks"][name] = {"trainer_cmd": " ".join(r["cmd"]), "idle_fraction_2_ranks": measured,
                                     "member_steps": steps.tolist(), "model_64_ranks": model}
            print(f"  {name}: idle fraction at 2 ranks per generation: "
                  + ", ".join(f"{x:.1%}" for x in measured), flush=True)
            print(f"    episode lengths of generation {start}'s {steps.size} members: median {np.median(steps):.0f}, "
                  f"min {steps.min()}, max {steps.max()}")
            print("    modelled idle at 64 ranks (median [p10, p90] of 2,000 draws): " + ", ".join(
                f"{m} members/rank {v['median']:.1%} [{v['p10']:.1%}, {v['p90']:.1%}]" for m, v in model.items()),
                flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    common.write_result("idle", result)
    return 0


def common_generation(path: Path) -> int:
    from nes_mpi import checkpoint as ckpt

    return int(ckpt.load(path, legacy=True).generation)


if __name__ == "__main__":
    sys.exit(main())
