"""Small user-defined environments for tests: a well-behaved one and deliberately broken ones."""
from __future__ import annotations

import os
import time

import gymnasium as gym
import numpy as np
from gymnasium import spaces


class PointEnv(gym.Env):
    """Drive a point to the origin: reward -|x|^2, 3-D continuous actions. Cheap and learnable."""

    def __init__(self, fault: str = "", fault_rate: float = 0.0):
        self.observation_space = spaces.Box(-np.inf, np.inf, (3,), np.float32)
        self.action_space = spaces.Box(-1.0, 1.0, (3,), np.float32)
        self.fault = fault
        self.fault_rate = fault_rate
        self.x = np.zeros(3, np.float32)
        self.t = 0
        self.faulty_episode = False

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.x = self.np_random.uniform(-1, 1, 3).astype(np.float32)
        self.t = 0
        self.faulty_episode = self.fault and self.np_random.random() < self.fault_rate
        return self.x.copy(), {}

    def step(self, action):
        self.t += 1
        self.x = np.clip(self.x + 0.1 * np.asarray(action, np.float32), -10, 10).astype(np.float32)
        reward = -float(np.sum(self.x**2))
        obs = self.x.copy()
        if self.faulty_episode and self.t == 5:
            if self.fault == "nan_obs":
                obs[0] = np.nan
            elif self.fault == "nan_reward":
                reward = float("nan")
            elif self.fault == "raise":
                raise RuntimeError("simulator exploded")
        return obs, reward, False, self.t >= 50, {}


class WrongShapeOnRank1(PointEnv):
    """Returns a malformed observation on MPI rank 1 at its 20th step: a bug outside any member's control."""

    def step(self, action):
        obs, r, term, trunc, info = super().step(action)
        rank = int(os.environ.get("PMI_RANK", "0"))
        self.count = getattr(self, "count", 0) + 1
        if rank == 1 and self.count >= 20:
            obs = np.zeros(7, np.float32)
        return obs, r, term, trunc, info


class FailsToBuildOnRank1(PointEnv):
    """Raises while being constructed on MPI rank 1 only: a setup failure the other ranks cannot see."""

    def __init__(self, **kw):
        if os.environ.get("PMI_RANK") == "1":
            raise RuntimeError("no simulator licence on this node")
        super().__init__(**kw)


gym.register(id="PointEnv-v0", entry_point="faulty_envs:PointEnv", max_episode_steps=40)


class NanObsOnSeed(PointEnv):
    """A NaN (or `value`) observation at step 5 of the episode reset with `bad_seed`, and only that one."""

    def __init__(self, bad_seed: int = 7, value: float = np.nan):
        super().__init__()
        self.bad_seed = bad_seed
        self.value = value
        self.seed_now = None

    def reset(self, *, seed=None, options=None):
        self.seed_now = seed
        return super().reset(seed=seed, options=options)

    def step(self, action):
        obs, r, term, trunc, info = super().step(action)
        if self.seed_now == self.bad_seed and self.t == 5:
            obs = obs.copy()
            obs[0] = self.value
        return obs, r, term, trunc, info


class RaiseOnResetSeed(PointEnv):
    """reset() raises for `bad_seed`: a member fails between two episodes."""

    def __init__(self, bad_seed: int = 9):
        super().__init__()
        self.bad_seed = bad_seed

    def reset(self, *, seed=None, options=None):
        if seed == self.bad_seed:
            raise RuntimeError("reset exploded")
        return super().reset(seed=seed, options=options)


class LargeObsPointEnv(PointEnv):
    """PointEnv observed in centimetres: observations far outside the +-5 clip of normalised ones."""

    def reset(self, *, seed=None, options=None):
        obs, info = super().reset(seed=seed, options=options)
        return 100.0 * obs, info

    def step(self, action):
        obs, r, term, trunc, info = super().step(action)
        return 100.0 * obs, r, term, trunc, info


class SlowPointEnv(PointEnv):
    """PointEnv whose steps take `step_seconds` of wall time (a sleep: no CPU), to make generations long.

    Slow only while the file `gate` exists (no gate: always) and, with `slow_seeds`, only in episodes
    reset with one of those seeds (e.g. one generation's evaluation episodes). The dynamics, and so
    every number the run computes, are PointEnv's.
    """

    def __init__(self, step_seconds: float = 0.5, gate: str = "", slow_seeds=None):
        super().__init__()
        self.step_seconds = step_seconds
        self.gate = gate
        self.slow_seeds = set(slow_seeds) if slow_seeds is not None else None
        self.slow = False

    def reset(self, *, seed=None, options=None):
        self.slow = self.slow_seeds is None or seed in self.slow_seeds
        return super().reset(seed=seed, options=options)

    def step(self, action):
        if self.slow and (not self.gate or os.path.exists(self.gate)):
            time.sleep(self.step_seconds)
        return super().step(action)


class RaiseOnRank1(PointEnv):
    """step() raises in every episode on MPI rank 1 only: a broken node, not an unlucky member."""

    def step(self, action):
        if int(os.environ.get("PMI_RANK", "0")) == 1:
            raise RuntimeError("simulator library missing on this node")
        return super().step(action)


class DictObs(PointEnv):
    """A Dict observation space, which the flat policies cannot take."""

    def __init__(self):
        super().__init__()
        self.observation_space = spaces.Dict({"x": spaces.Box(-np.inf, np.inf, (3,), np.float32)})


class SlowOnRank1(PointEnv):
    """PointEnv whose steps sleep `step_seconds` on MPI rank 1 only: a slow rank, not a slow member.
    The dynamics, and so every number the run computes, are PointEnv's."""

    def __init__(self, step_seconds: float = 0.002):
        super().__init__()
        self.step_seconds = step_seconds if os.environ.get("PMI_RANK") == "1" else 0.0

    def step(self, action):
        if self.step_seconds:
            time.sleep(self.step_seconds)
        return super().step(action)
