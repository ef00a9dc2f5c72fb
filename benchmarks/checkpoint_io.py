"""Checkpoint size and write/load time for a 64-64 HalfCheetah MLP and a 256-256 Humanoid MLP.

    python benchmarks/checkpoint_io.py

Writes real checkpoints (Adam state, observation statistics, a 1,000-generation history)
with nes_mpi.checkpoint.save, timing the atomic write (incl. fsync + rename) and load
(incl. checksum verification); median of 5.
"""
from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_result  # noqa: E402

import numpy as np  # noqa: E402

from nes_mpi import checkpoint as ckpt  # noqa: E402
from nes_mpi.config import Config  # noqa: E402
from nes_mpi.policy import PolicySpec  # noqa: E402
from nes_mpi.runlog import COLUMNS, INT_COLUMNS  # noqa: E402

CASES = {
    "HalfCheetah-v5 mlp 64-64": PolicySpec("mlp", 17, 6, False, (64, 64), "tanh", (-1.0,) * 6, (1.0,) * 6),
    "Humanoid-v5 mlp 256-256": PolicySpec("mlp", 348, 17, False, (256, 256), "tanh", (-0.4,) * 17, (0.4,) * 17),
}


def make_state(spec: PolicySpec, env: str, generations: int = 1000) -> ckpt.TrainState:
    rng = np.random.default_rng(0)
    p = spec.num_params
    hist = {c: (np.arange(generations) if c in INT_COLUMNS else rng.standard_normal(generations)) for c in COLUMNS}
    cfg = Config(env=env, hidden_sizes=spec.hidden_sizes).to_dict()
    return ckpt.TrainState(
        params=rng.standard_normal(p).astype(np.float32),
        strategy={"opt_t": np.int64(1000), "opt_m": rng.standard_normal(p).astype(np.float32),
                  "opt_v": rng.random(p).astype(np.float32)},
        obs_norm={"count": np.int64(10**7), "sum": rng.standard_normal(spec.obs_dim), "sumsq": rng.random(spec.obs_dim)},
        generation=generations, timesteps=10**8, episodes=10**5, wall_seconds=3600.0, eval_return=1.0,
        best_eval_return=2.0, config=cfg, policy=spec.to_dict(), history=hist)


def main():
    results = {}
    with tempfile.TemporaryDirectory() as d:
        for name, spec in CASES.items():
            state = make_state(spec, name.split()[0])
            path = Path(d) / "ckpt.h5"
            writes, loads = [], []
            for _ in range(5):
                t = time.perf_counter()
                ckpt.save(state, path)
                writes.append(time.perf_counter() - t)
                t = time.perf_counter()
                ckpt.load(path)
                loads.append(time.perf_counter() - t)
            size = path.stat().st_size
            results[name] = {"num_params": spec.num_params, "bytes": size, "write_seconds": statistics.median(writes),
                             "load_seconds": statistics.median(loads)}
            print(f"{name:28s} {spec.num_params:8,d} params  {size / 1e6:6.2f} MB  "
                  f"write {statistics.median(writes) * 1e3:6.1f} ms  load+verify {statistics.median(loads) * 1e3:6.1f} ms")
    write_result("checkpoint_io", {"command": "python benchmarks/checkpoint_io.py", "results": results})


if __name__ == "__main__":
    main()
