"""`python -m nes_mpi info CKPT [--json]`: what a checkpoint holds, without MPI or environments."""
from __future__ import annotations

import json
import math

from .checkpoint import CheckpointError, load, params_sha256
from .config import ConfigError


def checkpoint_summary(path) -> dict:
    s = load(path, legacy=True)
    cfg = s.config

    def num(x):
        return None if x is None or not math.isfinite(x) else x

    return {
        "path": str(path), "env_id": cfg.get("env"), "generation": s.generation, "timesteps": s.timesteps,
        "episodes": s.episodes, "wall_seconds": s.wall_seconds, "params_sha256": params_sha256(s.params),
        "num_params": int(s.params.size), "eval_return": num(s.eval_return), "best_eval_return": num(s.best_eval_return),
        "strategy": cfg.get("strategy", "openai"), "strategy_state": sorted(s.strategy),
        "optimizer_step": int(s.strategy.get("opt_t", 0)), "obs_norm_count": int(s.obs_norm["count"]),
        "policy": s.policy, "config": cfg, "versions": s.versions, "created": s.created, "hostname": s.hostname,
        "n_ranks": s.n_ranks,
    }


def run_info(args) -> int:
    try:
        d = checkpoint_summary(args.checkpoint)
    except CheckpointError as e:
        raise ConfigError(str(e)) from None
    if args.json:
        print(json.dumps(d, sort_keys=True))
        return 0

    def ret(x):
        return "-" if x is None else f"{x:.2f}"

    pol = d["policy"]
    arch = "linear" if pol["kind"] == "linear" else "mlp " + "-".join(map(str, pol["hidden_sizes"])) + f" {pol['activation']}"
    print(f"checkpoint      {d['path']}")
    print(f"env             {d['env_id']}")
    print(f"strategy        {d['strategy']} (state: mean, {', '.join(d['strategy_state'])})")
    print(f"generation      {d['generation']}  ({d['timesteps']:,} timesteps, {d['episodes']:,} episodes, {d['wall_seconds']:.1f} s)")
    print(f"eval return     {ret(d['eval_return'])}  (best {ret(d['best_eval_return'])})")
    print(f"policy          {arch}, {pol['obs_dim']} -> {pol['act_dim']} {'discrete' if pol['discrete'] else 'continuous'}, {d['num_params']} parameters")
    print(f"params sha256   {d['params_sha256']}")
    print(f"written         {d['created']} on {d['hostname']} by {d['n_ranks']} rank(s)")
    print("versions        " + ", ".join(f"{k} {v}" for k, v in sorted(d["versions"].items()) if k != "mpi"))
    print(f"mpi             {d['versions'].get('mpi', '?')}")
    print("config")
    for k, v in sorted(d["config"].items()):
        print(f"  {k:<20} {v}")
    return 0
