"""Real HDF5 checkpoints of a given generation and budget, written by nes_mpi's own writer."""
from __future__ import annotations

import numpy as np

from nes_mpi import checkpoint as ckpt
from nes_mpi.checkpoint import TrainState


def write_checkpoint(run_dir, generation: int, generations: int, env: str = "CartPole-v1", timesteps: int = 0):
    """A small but complete checkpoint of `generation` (100 timesteps each) in a run whose budgets are
    `generations` and `timesteps` (0: none)."""
    state = TrainState(
        params=np.arange(6, dtype=np.float32), strategy={"opt_t": np.int64(generation), "opt_m": np.zeros(6, np.float32),
                                                        "opt_v": np.zeros(6, np.float32)},
        obs_norm={"count": np.int64(3), "sum": np.zeros(4), "sumsq": np.ones(4)},
        generation=generation, timesteps=100 * generation, episodes=8 * generation, wall_seconds=1.0,
        eval_return=float("nan"), best_eval_return=float("-inf"),
        config={"env": env, "generations": generations, "timesteps": timesteps, "seed": 0, "noise_table_size": 1000},
        policy={"kind": "linear"}, versions={"nes_mpi": "test"})
    return ckpt.save(state, ckpt.checkpoint_path(run_dir, generation))
