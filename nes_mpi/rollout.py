"""Lockstep rollouts: B members stepped together, one batched policy forward per step.

Each slot runs its member's episodes back to back; a slot whose member is done
drops out of the batch. Everything a slot computes (return, steps, observation
sums) depends only on its own parameters and episode seeds, never on the batch.
This loop runs millions of times: per-slot state lives in Python lists, bound
methods are looked up once, and per-step numpy work is done once for the batch.
"""
from __future__ import annotations

import math
import time
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
    errors: list            # (slot, message) of failures


def episode_seed(seed: int, generation: int, member: int, episode: int, stream: int = 0) -> int:
    """Episode seeds from (seed, generation, member, episode): reproducible and rank independent."""
    ss = np.random.SeedSequence([int(seed), int(stream), int(generation), int(member), int(episode)])
    return int(ss.generate_state(1, dtype=np.uint32)[0])


POLL_SECONDS = 0.05  # `poll` at most this often: a stop is heard at once, and costs nothing measurable


def rollout(envs, max_steps: int, policy: BatchPolicy, params: np.ndarray, seeds: list[list[int]],
            obs_mean: np.ndarray, obs_std: np.ndarray, obs_clip: float,
            survival_bonus: float = 0.0, collect_obs: bool = True, poll=None) -> RolloutResult | None:
    """Run len(seeds) members (row b of `params`, episodes seeded by seeds[b]) in lockstep.

    The policy sees clip((obs - obs_mean) / obs_std, -obs_clip, obs_clip); obs_clip = inf skips the clip.
    `poll()` is called between lockstep steps, once POLL_SECONDS have passed since the last call;
    when it returns True the rollout is abandoned and None returned (a stop was requested: the
    generation's work is dropped). Reading the clock once per step costs a fraction of a microsecond.
    """
    n = len(seeds)
    policy.load(params)
    discrete = policy.spec.discrete
    obs_dim = obs_mean.shape[0]
    inv_std = (1.0 / obs_std).astype(np.float32)
    clip = math.isfinite(obs_clip)  # inf: raw observations (normalisation off), not even clipped
    lo, hi = np.float32(-obs_clip), np.float32(obs_clip)
    step_fn = [e.step for e in envs[:n]]
    zero = np.zeros(obs_dim, dtype=np.float32)

    # Per-slot state in plain lists; `cur` holds each slot's latest observation (zeros once it is done,
    # so the batch sums below add nothing for it and need no fancy indexing).
    cur = [zero] * n
    ep_return = [0.0] * n
    total_return = [0.0] * n
    ep_steps = [0] * n
    steps = [0] * n
    episode = [0] * n
    n_episodes = [len(s) for s in seeds]
    obs_sum = np.zeros((n, obs_dim))
    obs_sumsq = np.zeros((n, obs_dim))
    failed = [False] * n
    errors: list = []

    def fail(b, msg):
        failed[b] = True
        cur[b] = zero
        errors.append((b, msg))

    def reset(b):
        try:
            o, _ = envs[b].reset(seed=seeds[b][episode[b]])
        except Exception as e:  # a broken simulator fails the member, not the job
            fail(b, f"reset raised {type(e).__name__}: {e}")
            return False
        cur[b] = o
        ep_return[b] = 0.0
        ep_steps[b] = 0
        return True

    active = [b for b in range(n) if reset(b)]
    selected = None  # the rows the policy's working weights were last cut to (None: all)
    clock = time.monotonic
    next_poll = clock() + POLL_SECONDS if poll is not None else math.inf
    while active:
        if clock() >= next_poll:
            if poll():
                return None
            next_poll = clock() + POLL_SECONDS
        x_all = np.array(cur, dtype=np.float32)
        if collect_obs:
            obs_sum += x_all
            obs_sumsq += np.square(x_all, dtype=np.float64)
        # Small batches: forward only the active rows; otherwise the whole batch (no gather, no copy).
        compact = 2 * len(active) <= n
        rows = active if compact else None
        if rows != selected:
            policy.select(rows)
            selected = list(rows) if compact else None
        x = x_all[active] if compact else x_all
        x -= obs_mean
        x *= inv_std
        if clip:
            np.clip(x, lo, hi, out=x)
        actions = policy(x)
        # python ints for Discrete (gymnasium's check is fastest on them), row views for Box
        rows_out = actions.tolist() if discrete else list(actions)
        by_position = compact or len(active) == n  # row j belongs to active[j]; otherwise row b to member b
        if not np.isfinite(actions).all():  # NaN parameters or observations: never step with NaN actions
            finite = np.isfinite(actions).reshape(len(actions), -1).all(axis=1)
            pairs = []
            for j, b in enumerate(active):
                row = j if by_position else b
                if finite[row]:
                    pairs.append((b, rows_out[row]))
                else:
                    fail(b, "non-finite action")
        elif by_position:
            pairs = zip(active, rows_out)
        else:
            pairs = [(b, rows_out[b]) for b in active]
        still = []
        for b, a in pairs:
            try:
                o, r, terminated, truncated, _ = step_fn[b](a)
            except Exception as e:
                fail(b, f"step raised {type(e).__name__}: {e}")
                continue
            if not math.isfinite(r):
                fail(b, "non-finite reward")
                continue
            cur[b] = o
            ep_return[b] += r
            k = ep_steps[b] = ep_steps[b] + 1
            if terminated or truncated or k >= max_steps:
                steps[b] += k
                ep_steps[b] = 0  # counted in steps now; a later failure must not add it again
                total_return[b] += ep_return[b]
                episode[b] += 1
                if episode[b] < n_episodes[b] and reset(b):
                    still.append(b)
                else:
                    cur[b] = zero
            else:
                still.append(b)
        active = still

    if collect_obs:  # a non-finite observation poisons only its own member's sums: fail that member
        for b in np.flatnonzero(~np.isfinite(obs_sum).all(axis=1) | ~np.isfinite(obs_sumsq).all(axis=1)):
            if not failed[b]:
                failed[b] = True
                errors.append((int(b), "non-finite observation"))
    failed_arr = np.array(failed, dtype=bool)
    n_eps = np.array(n_episodes, dtype=np.float64)
    steps_arr = np.array(steps, dtype=np.int64) + np.where(failed_arr, np.array(ep_steps, dtype=np.int64), 0)
    total = np.array(total_return)
    returns = total / n_eps
    fitness = (total - survival_bonus * steps_arr) / n_eps
    fitness[failed_arr] = np.nan
    returns[failed_arr] = np.nan
    obs_sum[failed_arr] = 0.0
    obs_sumsq[failed_arr] = 0.0
    return RolloutResult(returns, fitness, steps_arr, obs_sum, obs_sumsq, failed_arr, errors)


def obs_count(result: RolloutResult) -> np.ndarray:
    """Observations that went into the sums, per member (0 for failed members)."""
    return np.where(result.failed, 0, result.steps)
