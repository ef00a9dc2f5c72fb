"""Lockstep rollouts on real gymnasium envs: a member's results never depend on its batch."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import episode_by_hand
from faulty_envs import LargeObsPointEnv, NanObsOnSeed, PointEnv, RaiseOnResetSeed
from nes_mpi.envs import make_env
from nes_mpi.obs_norm import ObsNorm
from nes_mpi.policy import BatchPolicy, initial_params, spec_for
from nes_mpi.rollout import rollout


def _run(envs, params, seeds, spec, max_steps=50, obs_clip=5.0):
    mean, std = np.zeros(spec.obs_dim, np.float32), np.ones(spec.obs_dim, np.float32)
    return rollout(envs, max_steps, BatchPolicy(spec), params, seeds, mean, std, obs_clip)


def test_members_alone_and_in_a_shrinking_batch_agree_bitwise():
    """Different episode counts make the batch shrink and compact; a NaN observation fails one member only."""
    n = 6
    envs = [NanObsOnSeed(bad_seed=7) for _ in range(n)]
    spec = spec_for(envs[0], "mlp", (16,), "tanh")
    rng = np.random.default_rng(0)
    params = (initial_params(spec, 0) + 0.3 * rng.standard_normal((n, spec.num_params))).astype(np.float32)
    seeds = [[1, 7, 3], [2, 4, 5], [6], [8], [9], [10]]  # members 0, 1 outlive the rest; member 0 meets seed 7
    batch = _run(envs, params, seeds, spec)
    assert batch.failed.tolist() == [True, False, False, False, False, False]
    assert any("non-finite" in msg for _, msg in batch.errors)
    for b in range(1, n):
        alone = _run([NanObsOnSeed(bad_seed=7)], params[b : b + 1], [seeds[b]], spec)
        assert alone.returns[0] == batch.returns[b] and alone.steps[0] == batch.steps[b]
        assert np.array_equal(alone.obs_sum[0], batch.obs_sum[b]) and np.array_equal(alone.obs_sumsq[0], batch.obs_sumsq[b])
    assert batch.steps[1] == 150 and batch.obs_sum[0].sum() == 0.0


@pytest.mark.parametrize("env_id", ["CartPole-v1", "Hopper-v5"])
def test_early_terminations_do_not_couple_members(env_id):
    n = 5
    handles = [make_env(env_id) for _ in range(n)]
    spec = spec_for(handles[0].outer, "mlp", (32, 32), "tanh")
    rng = np.random.default_rng(1)
    params = (initial_params(spec, 1) + 0.5 * rng.standard_normal((n, spec.num_params))).astype(np.float32)
    seeds = [[11 * b + e for e in range(2)] for b in range(n)]
    batch = _run([h.env for h in handles], params, seeds, spec, max_steps=200)
    assert len(set(batch.steps.tolist())) > 1  # members really did finish at different times
    for b in range(n):
        alone = _run([make_env(env_id).env], params[b : b + 1], [seeds[b]], spec, max_steps=200)
        assert alone.returns[0] == batch.returns[b] and alone.steps[0] == batch.steps[b]
        assert np.array_equal(alone.obs_sum[0], batch.obs_sum[b])


@pytest.mark.parametrize("make_faulty", [lambda: RaiseOnResetSeed(bad_seed=9), lambda: NanObsOnSeed(bad_seed=9, value=np.inf)],
                         ids=["reset-raises-between-episodes", "inf-obs-found-after-the-last-episode"])
def test_a_member_failing_after_an_episode_ended_counts_each_step_once(make_faulty):
    """PointEnv episodes are 50 steps. The member fails after its first episode (reset raises) or once all its
    episodes are done (an inf observation is clipped, so it runs on, and its sums are rejected at the end):
    it took exactly 50 or 100 steps, and the finished episode's steps must not be added again."""
    spec = spec_for(PointEnv(), "mlp", (8,), "tanh")
    params = np.repeat(initial_params(spec, 0)[None, :], 2, axis=0)
    res = _run([make_faulty(), make_faulty()], params, [[1, 9], [1, 2]], spec)
    assert res.failed.tolist() == [True, False]
    taken = 50 if isinstance(make_faulty(), RaiseOnResetSeed) else 100
    assert res.steps.tolist() == [taken, 100]


def test_without_normalisation_the_policy_sees_raw_unclipped_observations():
    """With --no-obs-norm the rollout must feed the policy the env's own observations, even far beyond +-5:
    its return equals a hand-stepped episode on raw observations and differs from a clipped one."""
    norm = ObsNorm(3, clip=5.0, enabled=False)
    mean, std = norm.mean_std()
    assert norm.clip == np.inf
    spec = spec_for(LargeObsPointEnv(), "linear", (), "tanh")
    theta = (0.01 * np.random.default_rng(3).standard_normal(spec.num_params)).astype(np.float32)
    res = rollout([LargeObsPointEnv()], 50, BatchPolicy(spec), theta[None, :], [[4]], mean, std, norm.clip)

    assert res.returns[0] == episode_by_hand(LargeObsPointEnv(), spec, theta, 4, lambda o: o)
    assert res.returns[0] != episode_by_hand(LargeObsPointEnv(), spec, theta, 4, lambda o: np.clip(o, -5, 5))


@pytest.mark.parametrize("clip_actions", [True, False])
def test_a_linear_policy_clips_its_actions_unless_told_not_to(clip_actions):
    """--no-clip-actions (ARS): Hopper-v5 gets W x + b raw, so its control cost sees actions beyond +-1
    (MuJoCo clamps the controls themselves); by default it gets them clipped. The reference steps the env
    in plain numpy."""
    handle = make_env("Hopper-v5")
    spec = spec_for(handle.outer, "linear", (), "tanh", clip_actions)
    theta = (0.8 * np.random.default_rng(5).standard_normal(spec.num_params)).astype(np.float32)
    res = _run([handle.env], theta[None, :], [[3]], spec, max_steps=1000)
    w = theta[: spec.obs_dim * spec.act_dim].reshape(spec.act_dim, spec.obs_dim)
    env = make_env("Hopper-v5").env
    obs, _ = env.reset(seed=3)
    total, ctrl_costs, done = 0.0, [], False
    while not done:
        a = w @ np.clip(np.asarray(obs, np.float32), -5, 5) + theta[-spec.act_dim:]
        obs, r, term, trunc, info = env.step(np.clip(a, -1, 1) if clip_actions else a)
        total += r
        ctrl_costs.append(-info["reward_ctrl"])
        done = term or trunc
    assert res.returns[0] == pytest.approx(total, rel=1e-4)
    # Hopper's control cost is 1e-3 |a|^2 over 3 actuators: at most 3e-3 per step inside the bounds
    assert (max(ctrl_costs) > 3e-3) != clip_actions
