"""Lockstep rollouts: a group of slots stepped together, one batched policy forward per step.

Each slot runs one member's episodes back to back; when a member is done its slot
takes the next member from `take` (a fixed list, or a queue shared with other
ranks), and drops out of the batch once there is none. Everything a member
computes (return, steps, observation sums) depends only on its own parameters and
episode seeds, never on its slot or on the members beside it in the batch.
This loop runs millions of times: per-slot state lives in Python lists, bound
methods are looked up once, and per-step numpy work is done once for the batch.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable

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
    errors: list            # (member, message) of failures
    members: np.ndarray | None = None  # (B,) int64 the members of the rows, ascending


def episode_seed(seed: int, generation: int, member: int, episode: int, stream: int = 0) -> int:
    """Episode seeds from (seed, generation, member, episode): reproducible and rank independent."""
    ss = np.random.SeedSequence([int(seed), int(stream), int(generation), int(member), int(episode)])
    return int(ss.generate_state(1, dtype=np.uint32)[0])


POLL_SECONDS = 0.05  # `poll` at most this often: a stop is heard at once, and costs nothing measurable


def rollout(envs, max_steps: int, policy: BatchPolicy, params: np.ndarray, seeds: list[list[int]],
            obs_mean: np.ndarray, obs_std: np.ndarray, obs_clip: float,
            survival_bonus: float = 0.0, collect_obs: bool = True, poll=None) -> RolloutResult | None:
    """Run len(seeds) members (row b of `params`, episodes seeded by seeds[b]) in lockstep, one slot each.

    Result row b, and the b of each error, is member b. See `rollout_stream` for the rest.
    """
    order = iter(range(len(seeds)))
    return rollout_stream(envs[: len(seeds)], max_steps, policy, lambda failed, busy: next(order, None), lambda ms: params[ms],
                          seeds.__getitem__, obs_mean, obs_std, obs_clip, survival_bonus, collect_obs, poll)


def rollout_stream(envs, max_steps: int, policy: BatchPolicy, take: Callable[[int, int], int | None],
                   params_for: Callable[[list[int]], np.ndarray], seeds_for: Callable[[int], list[int]],
                   obs_mean: np.ndarray, obs_std: np.ndarray, obs_clip: float,
                   survival_bonus: float = 0.0, collect_obs: bool = True, poll=None) -> RolloutResult | None:
    """Run the members that `take(failed, busy)` hands out, len(envs) at a time in lockstep; a slot that
    gets None retires. `failed`: how many of the members run so far failed; `busy`: how many are
    running in the other slots (a queue may hand a failing rank less work, or a rank fewer slots).

    Member m's parameters are params_for([m])[0] and its episodes are seeded by seeds_for(m).
    The result has one row per member run, in ascending member order.
    The policy sees clip((obs - obs_mean) / obs_std, -obs_clip, obs_clip); obs_clip = inf skips the clip.
    `poll()` is called between lockstep steps, once POLL_SECONDS have passed since the last call;
    when it returns True the rollout is abandoned and None returned (a stop was requested: the
    generation's work is dropped). Reading the clock once per step costs a fraction of a microsecond.
    """
    first: list[int] = []
    while len(first) < len(envs):
        m = take(0, 0)  # the first batch is filled whatever the queue's pace
        if m is None:
            break
        first.append(m)
    n = len(first)
    obs_dim = obs_mean.shape[0]
    if n:
        policy.load(params_for(first))
    discrete = policy.spec.discrete
    inv_std = (1.0 / obs_std).astype(np.float32)
    clip = math.isfinite(obs_clip)  # inf: raw observations (normalisation off), not even clipped
    lo, hi = np.float32(-obs_clip), np.float32(obs_clip)
    step_fn = [e.step for e in envs[:n]]
    zero = np.zeros(obs_dim, dtype=np.float32)

    # Per-slot state in plain lists; `cur` holds each slot's latest observation (zeros once it is done,
    # so the batch sums below add nothing for it and need no fancy indexing).
    member = list(first)
    seeds = [seeds_for(m) for m in first]
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
    done: list = []  # (member, total return, steps, obs sum, obs sum of squares, failed, episodes)
    selected: list | bool | None = None  # the rows the policy's working weights were last cut to (None: all)
    running = n  # slots that hold a member

    def fail(b, msg):
        failed[b] = True
        cur[b] = zero
        errors.append((member[b], msg))

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

    def finish(b):
        """Record slot b's member; a non-finite observation poisons only its own sums: fail that member."""
        bad = failed[b]
        s, q = obs_sum[b].copy(), obs_sumsq[b].copy()
        if collect_obs and not bad and not (np.isfinite(s).all() and np.isfinite(q).all()):
            bad = True
            errors.append((member[b], "non-finite observation"))
        done.append((member[b], total_return[b], steps[b] + (ep_steps[b] if bad else 0), s, q, bad, n_episodes[b]))

    def advance(b) -> bool:
        """Slot b's member is done: record it and start the next one; False when there is none."""
        nonlocal selected, running
        finish(b)
        while (m := take(len(errors), running - 1)) is not None:
            member[b], seeds[b] = m, seeds_for(m)
            total_return[b] = 0.0
            steps[b] = episode[b] = 0
            n_episodes[b] = len(seeds[b])
            failed[b] = False
            obs_sum[b] = 0.0
            obs_sumsq[b] = 0.0
            policy.set_row(b, params_for([m])[0])
            selected = False  # a selected copy of the weights is stale now
            if reset(b):
                return True
            finish(b)
        cur[b] = zero
        running -= 1
        return False

    active = [b for b in range(n) if reset(b) or advance(b)]
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
        by_position = compact or len(active) == n  # row j belongs to active[j]; otherwise row b to slot b
        still = []
        restarted = []  # slots that moved on to their next member without a step
        if not np.isfinite(actions).all():  # NaN parameters or observations: never step with NaN actions
            finite = np.isfinite(actions).reshape(len(actions), -1).all(axis=1)
            pairs = []
            for j, b in enumerate(active):
                row = j if by_position else b
                if finite[row]:
                    pairs.append((b, rows_out[row]))
                else:
                    fail(b, "non-finite action")
                    if advance(b):
                        restarted.append(b)
        elif by_position:
            pairs = zip(active, rows_out)
        else:
            pairs = [(b, rows_out[b]) for b in active]
        for b, a in pairs:
            try:
                o, r, terminated, truncated, _ = step_fn[b](a)
            except Exception as e:
                fail(b, f"step raised {type(e).__name__}: {e}")
                if advance(b):
                    still.append(b)
                continue
            if not math.isfinite(r):
                fail(b, "non-finite reward")
                if advance(b):
                    still.append(b)
                continue
            cur[b] = o
            ep_return[b] += r
            k = ep_steps[b] = ep_steps[b] + 1
            if terminated or truncated or k >= max_steps:
                steps[b] += k
                ep_steps[b] = 0  # counted in steps now; a later failure must not add it again
                total_return[b] += ep_return[b]
                episode[b] += 1
                if (episode[b] < n_episodes[b] and reset(b)) or advance(b):
                    still.append(b)
            else:
                still.append(b)
        active = sorted(still + restarted) if restarted else still  # ascending: row j of a full batch is slot j
    return _result(done, errors, obs_dim, survival_bonus)


def _result(done: list, errors: list, obs_dim: int, survival_bonus: float) -> RolloutResult:
    done.sort(key=lambda d: d[0])
    k = len(done)
    members = np.array([d[0] for d in done], dtype=np.int64)
    total = np.array([d[1] for d in done], dtype=np.float64)
    steps_arr = np.array([d[2] for d in done], dtype=np.int64)
    obs_sum = np.array([d[3] for d in done], dtype=np.float64).reshape(k, obs_dim)
    obs_sumsq = np.array([d[4] for d in done], dtype=np.float64).reshape(k, obs_dim)
    failed_arr = np.array([d[5] for d in done], dtype=bool)
    n_eps = np.array([d[6] for d in done], dtype=np.float64)
    returns = total / n_eps
    fitness = (total - survival_bonus * steps_arr) / n_eps
    fitness[failed_arr] = np.nan
    returns[failed_arr] = np.nan
    obs_sum[failed_arr] = 0.0
    obs_sumsq[failed_arr] = 0.0
    return RolloutResult(returns, fitness, steps_arr, obs_sum, obs_sumsq, failed_arr, errors, members)


def obs_count(result: RolloutResult) -> np.ndarray:
    """Observations that went into the sums, per member (0 for failed members)."""
    return np.where(result.failed, 0, result.steps)
