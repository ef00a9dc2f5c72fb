"""Lockstep rollouts: B members stepped together, one batched policy forward per step.

Each slot runs its member's episodes back to back; a slot whose member is done
drops out of the batch. Everything a slot computes (return, steps, observation
sums) depends only on its own parameters and episode seeds, never on the batch.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .policy import BatchPolicy


@dataclass
class RolloutResult:
    returns: np.ndarray     # (B,) mean undiscounted return over the member's episodes
    fitness: np.ndarray     # (B,) mean training fitness (return - survival bonus * steps); NaN if failed
    steps: np.ndarray       # (B,) int64 environment steps taken
    obs_sum: np.ndarray     # (B, obs_dim) float64 sum of raw observations fed to the policy
    obs_sumsq: np.ndarray   # (B, obs_dim) float64 sum of squares
    failed: np.ndarray      # (B,) bool: non-finite obs/reward/action or an exception in the simulator
    errors: list            # (member slot, message) of failures


def episode_seed(seed: int, generation: int, member: int, episode: int, stream: int = 0) -> int:
    """Episode seeds from (seed, generation, member, episode): reproducible and rank independent."""
    ss = np.random.SeedSequence([int(seed), int(stream), int(generation), int(member), int(episode)])
    return int(ss.generate_state(1, dtype=np.uint32)[0])


def rollout(envs, max_steps: int, policy: BatchPolicy, params: np.ndarray, seeds: list[list[int]],
            obs_mean: np.ndarray, obs_std: np.ndarray, obs_clip: float,
            survival_bonus: float = 0.0, collect_obs: bool = True) -> RolloutResult:
    """Run len(seeds) members (row b of `params`, episodes seeded by seeds[b]) in lockstep."""
    n = len(seeds)
    policy.load(params)
    obs_dim = obs_mean.shape[0]
    inv_std = (1.0 / obs_std).astype(np.float32)
    lo, hi = np.float32(-obs_clip), np.float32(obs_clip)

    obs = np.zeros((n, obs_dim), dtype=np.float32)
    ep_return = np.zeros(n)
    total_return = np.zeros(n)
    ep_steps = np.zeros(n, dtype=np.int64)
    steps = np.zeros(n, dtype=np.int64)
    episode = np.zeros(n, dtype=np.int64)
    obs_sum = np.zeros((n, obs_dim))
    obs_sumsq = np.zeros((n, obs_dim))
    failed = np.zeros(n, dtype=bool)
    errors: list = []
    active = list(range(n))

    def fail(b, msg):
        failed[b] = True
        errors.append((b, msg))

    def reset(b):
        try:
            o, _ = envs[b].reset(seed=seeds[b][episode[b]])
        except Exception as e:  # a broken simulator fails the member, not the job
            fail(b, f"reset raised {type(e).__name__}: {e}")
            return False
        obs[b] = o
        ep_return[b] = 0.0
        ep_steps[b] = 0
        return True

    active = [b for b in range(n) if reset(b)]
    while active:
        all_rows = len(active) == n
        raw = obs if all_rows else obs[active]
        if not np.isfinite(raw).all():
            for j, b in enumerate(active):
                if not np.isfinite(raw[j]).all():
                    fail(b, "non-finite observation")
            active = [b for b in active if not failed[b]]
            continue
        if collect_obs:
            if all_rows:
                obs_sum += raw
                obs_sumsq += np.square(raw, dtype=np.float64)
            else:
                obs_sum[active] += raw
                obs_sumsq[active] += np.square(raw, dtype=np.float64)
        x = (raw - obs_mean) * inv_std
        np.clip(x, lo, hi, out=x)
        actions = policy(x, None if all_rows else active)
        bad_action = None
        if not np.isfinite(actions).all():  # NaN parameters give NaN actions: never step with them
            bad_action = ~np.isfinite(actions.reshape(len(active), -1)).all(axis=1)
        still = []
        for j, b in enumerate(active):
            if bad_action is not None and bad_action[j]:
                fail(b, "non-finite action")
                continue
            a = actions[j]
            try:
                o, r, terminated, truncated, _ = envs[b].step(a)
            except Exception as e:
                fail(b, f"step raised {type(e).__name__}: {e}")
                continue
            if not math.isfinite(r):
                fail(b, "non-finite reward")
                continue
            obs[b] = o
            ep_return[b] += r
            k = ep_steps[b] = ep_steps[b] + 1
            if terminated or truncated or k >= max_steps:
                steps[b] += k
                total_return[b] += ep_return[b]
                episode[b] += 1
                if episode[b] < len(seeds[b]) and reset(b):
                    still.append(b)
            else:
                still.append(b)
        active = still

    n_eps = np.array([len(s) for s in seeds], dtype=np.float64)
    steps = steps + np.where(failed, ep_steps, 0)
    returns = total_return / n_eps
    fitness = (total_return - survival_bonus * steps) / n_eps
    fitness[failed] = np.nan
    returns[failed] = np.nan
    obs_sum[failed] = 0.0
    obs_sumsq[failed] = 0.0
    return RolloutResult(returns, fitness, steps, obs_sum, obs_sumsq, failed, errors)


def obs_count(result: RolloutResult) -> np.ndarray:
    """Observations that went into the sums, per member (0 for failed members)."""
    return np.where(result.failed, 0, result.steps)
