"""Members to ranks, dynamic or static: the same bits for any rank count and node layout, and members
really move to a faster rank (nes_mpi/work_queue.py, rollout.rollout_stream)."""
from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import MPIEXEC, child_env, info
from faulty_envs import NanObsOnSeed, RaiseOnResetSeed
from nes_mpi.envs import make_env
from nes_mpi.policy import BatchPolicy, initial_params, spec_for
from nes_mpi.rollout import rollout, rollout_stream
from test_stop import Job, jobs, logged_generations, newest, slow_env, slow_generation  # noqa: F401 (jobs: a fixture)

SMALL = ["--noise-table-size", str(4 << 20), "--eval-every", "0", "--check-every", "1", "--checkpoint-every", "1",
         "--keep-checkpoints", "10"]
# Hopper falls after 10-60 steps: episode lengths vary widely, and 60 members give shares of 8-30 members per
# rank, more than the 8 a rank steps in lockstep, so unstarted members are there to move.
HOPPER = ["--env", "Hopper-v5", "--population", "60", "--max-episode-steps", "60", *SMALL]


def run(ranks: int, args: list, run_dir, nodes: int = 1, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {**child_env(), "MPIR_CVAR_NUM_CLIQUES": str(nodes)}
    cmd = [MPIEXEC, "-n", str(ranks), sys.executable, "-m", "nes_mpi", *map(str, args), "--run-dir", str(run_dir)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


def sha(run_dir, generation: int) -> str:
    return info(run_dir / "checkpoints" / f"ckpt_{generation:06d}.h5")["params_sha256"]


def log(run_dir) -> list[dict]:
    with open(run_dir / "log.csv") as fh:
        return list(csv.DictReader(fh))


DETERMINISTIC = ["timesteps", "return_mean", "return_max", "return_min", "failed_members", "grad_norm", "param_norm"]


def same_log(a, b) -> None:
    assert [[r[c] for c in DETERMINISTIC] for r in log(a)] == [[r[c] for c in DETERMINISTIC] for r in log(b)]


# ---- in-process: a slot that moves on to its next member -------------------------------------------

def _zeros(spec):
    return np.zeros(spec.obs_dim, np.float32), np.ones(spec.obs_dim, np.float32)


@pytest.mark.parametrize("make", [lambda: make_env("Hopper-v5", {}, 40).env, lambda: NanObsOnSeed(bad_seed=7),
                                  lambda: RaiseOnResetSeed(bad_seed=9)], ids=["hopper", "nan_obs", "raise_on_reset"])
def test_members_streamed_through_few_slots_in_any_order_match_one_batch(make):
    """3 slots refilled from a shuffled queue, 2 episodes per member, failures included: every member's
    row is bitwise the one it gets with a slot of its own."""
    n = 9
    envs = [make() for _ in range(n)]
    spec = spec_for(envs[0], "mlp", (16,), "tanh")
    rng = np.random.default_rng(1)
    params = (initial_params(spec, 0) + 0.3 * rng.standard_normal((n, spec.num_params))).astype(np.float32)
    seeds = [[7 + 2 * m, 9 if m == 4 else 30 + m] for m in range(n)]  # member 3 meets seed 13, member 4 seed 9
    mean, std = _zeros(spec)
    whole = rollout(envs, 40, BatchPolicy(spec), params, seeds, mean, std, 5.0, survival_bonus=0.5)
    order = iter(rng.permutation(n).tolist())
    streamed = rollout_stream([make() for _ in range(3)], 40, BatchPolicy(spec), lambda failed, busy: next(order, None),
                              lambda ms: params[ms], seeds.__getitem__, mean, std, 5.0, survival_bonus=0.5)
    assert streamed.members.tolist() == list(range(n))
    for f in ("returns", "fitness", "steps", "obs_sum", "obs_sumsq", "failed"):
        assert np.array_equal(getattr(whole, f), getattr(streamed, f), equal_nan=f in ("returns", "fitness")), f
    assert sorted(whole.errors) == sorted(streamed.errors)
    assert len(set(whole.steps.tolist())) > 3 or whole.failed.any()  # unequal members, or failed ones


def test_a_queue_that_stops_handing_out_members_to_a_failing_rank():
    """take(failed) sees the failures so far: a queue may refuse more work to a rank whose members fail."""
    envs = [RaiseOnResetSeed(bad_seed=5) for _ in range(2)]
    spec = spec_for(envs[0], "linear", (), "tanh")
    params = np.tile(initial_params(spec, 0), (6, 1))
    seen = []
    pending = iter(range(6))

    def take(failed, busy):
        seen.append(failed)
        return None if failed else next(pending, None)
    res = rollout_stream(envs, 20, BatchPolicy(spec), take, lambda ms: params[ms], lambda m: [5 if m == 0 else 50 + m],
                         *_zeros(spec), 5.0)
    assert res.members.tolist() == [0, 1] and res.failed.tolist() == [True, False] and max(seen) == 1


# ---- under mpiexec -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def one_rank(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("one") / "run"
    run(1, [*HOPPER, "--generations", 4], run_dir)
    return run_dir


@pytest.mark.mpi
@pytest.mark.parametrize("nodes,ranks", [(1, 2), (1, 3), (2, 5), (3, 7)])
def test_dynamic_and_static_match_one_rank_bitwise(tmp_path, one_rank, nodes, ranks):
    """Any rank count and node layout (uneven emulated nodes too), either schedule: 1 rank's bits."""
    for schedule in ("dynamic", "static"):
        run_dir = tmp_path / schedule
        run(ranks, [*HOPPER, "--generations", 3, "--schedule", schedule], run_dir, nodes=nodes)
        assert sha(run_dir, 3) == sha(one_rank, 3), schedule
        rows = log(run_dir)
        assert [[r[c] for c in DETERMINISTIC] for r in rows] == [[r[c] for c in DETERMINISTIC] for r in log(one_rank)[:3]]
        if schedule == "static":
            assert {float(r["moved_members"]) for r in rows} == {0.0}


@pytest.mark.mpi
def test_resume_under_dynamic_equals_the_straight_run(tmp_path, one_rank):
    run_dir = tmp_path / "run"
    run(3, [*HOPPER, "--generations", 2, "--schedule", "dynamic"], run_dir)
    proc = run(4, [*HOPPER, "--generations", 4, "--resume", "auto"], run_dir, nodes=2)  # the stored schedule
    assert "resuming" in proc.stdout and '"schedule": "dynamic"' in proc.stdout
    assert sha(run_dir, 4) == sha(one_rank, 4)


@pytest.mark.mpi
def test_members_move_from_a_slow_rank_to_a_fast_one(tmp_path):
    """Rank 1's steps sleep: with the dynamic schedule rank 0 runs some of rank 1's slice, every generation,
    and the bits stay those of the static schedule."""
    task = ["--env", "faulty_envs:SlowOnRank1", "--population", "32", "--generations", "2", *SMALL]
    runs = {}
    for schedule in ("dynamic", "static"):
        runs[schedule] = tmp_path / schedule
        run(2, [*task, "--schedule", schedule], runs[schedule])
    moved = {s: [float(r["moved_members"]) for r in log(d)] for s, d in runs.items()}
    # rank 1 can take only its own members once rank 0 is running (its 8 slots are busy for 0.8 s),
    # so every member that moved is one of rank 1's, run by rank 0: more than rank 0's static 16
    assert all(m >= 1 for m in moved["dynamic"]) and moved["static"] == [0.0, 0.0], moved
    assert sha(runs["dynamic"], 2) == sha(runs["static"], 2)


@pytest.mark.mpi
@pytest.mark.parametrize("fault", ["raise", "nan_obs"])
def test_member_failures_under_dynamic_are_those_of_static(tmp_path, fault):
    """Which members fail depends on their seeds only: the same members fail, with the same bits, on 1 rank
    and on 2 ranks under either schedule."""
    task = ["--env", "faulty_envs:PointEnv", "--env-kwargs", f'{{"fault": "{fault}", "fault_rate": 0.3}}',
            "--population", "40", "--generations", "3", "--fail-generations", "0", *SMALL]
    ref = tmp_path / "one"
    run(1, task, ref)
    assert sum(int(r["failed_members"]) for r in log(ref)) > 0
    for schedule in ("dynamic", "static"):
        d = tmp_path / schedule
        proc = run(2, [*task, "--schedule", schedule], d)
        assert sha(d, 3) == sha(ref, 3)
        same_log(d, ref)
        assert proc.stderr.count(" member ") == sum(int(r["failed_members"]) for r in log(ref))


@pytest.mark.mpi
def test_the_queue_needs_no_progress_from_the_rank_that_holds_it(tmp_path):
    """Node rank 0 holds the counter and makes no MPI call for 3 s (as inside a simulator step): the other
    ranks still take every member, each exactly once, before it wakes; the two alternating counters hand
    out every member again in the next generations."""
    helper = str(Path(__file__).resolve().parent / "helpers" / "queue_owner_busy.py")
    proc = subprocess.run([MPIEXEC, "-n", "3", sys.executable, helper, "3"], capture_output=True, text=True,
                          timeout=300, env=child_env())
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines == [f"generation {g}: 3000 taken, each once: True, by node rank 0: 0" for g in range(3)], proc.stdout


@pytest.mark.mpi
def test_a_broken_rank_fails_no_more_than_its_static_share_under_dynamic(tmp_path):
    """Rank 1's environment raises at every step: its members fail at once, so it would keep taking (and
    failing) the node's members; it stops at its static share of 16, and rank 0 runs the rest."""
    task = ["--env", "faulty_envs:RaiseOnRank1", "--population", "32", "--generations", "3", "--fail-generations", "0",
            "--schedule", "dynamic", *SMALL]
    run(2, task, tmp_path / "run")
    failed = [int(r["failed_members"]) for r in log(tmp_path / "run")]
    assert all(1 <= f <= 16 for f in failed), failed


@pytest.mark.mpi
def test_a_stop_mid_generation_under_dynamic_resumes_to_the_straight_bits(tmp_path, mpiexec, jobs):
    """SIGTERM to rank 1 while generation 3's members crawl (12 per rank, 8 at a time): the generation is
    abandoned with the queue half handed out, exit 75, and the resumed run has the straight run's bits."""
    args = ["--population", "24", "--noise-table-size", str(1 << 20), "--check-every", "1", "--eval-every", "0",
            "--schedule", "dynamic", "--generations", "5"]
    straight = tmp_path / "straight"
    run(2, [*slow_env(tmp_path / "never"), *args], straight)
    gate = tmp_path / "gate"
    env_args = slow_generation(gate, 3, "train", population=24)
    stopped = tmp_path / "run"
    job = Job([*env_args, *args, "--run-dir", stopped], 2)
    jobs.append(job)
    pids = job.wait_ranks()
    job.wait_for(lambda: logged_generations(stopped) >= 2, "generation 2")
    time.sleep(3)
    os.kill(pids[1], signal.SIGTERM)
    rc, out, err = job.finish()
    assert rc == 75 and "abandoned" in out and newest(stopped) == 2, (out, err)
    gate.unlink()
    run(2, [*env_args, *args, "--resume", "auto"], stopped)
    assert sha(stopped, 5) == sha(straight, 5)
