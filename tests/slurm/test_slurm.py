"""The project's slurm/*.sbatch scripts, submitted unchanged to a real SLURM.

Each test submits a script with `sbatch --export=ALL,NES_...=...` (the documented
settings) plus ordinary sbatch options, waits for the job and checks the run
directory the trainer left. Two MPI tasks each (srun --mpi=pmi2 by default, once
the MPICH mpiexec), CartPole-v1 with a population of 8.

A requeued job waits for its begin time: cred_expire+1 s, 21 s in the test cluster
(tests/slurm/cluster.sh), instead of SLURM's default 121 s. Starting it at once with
`scontrol update JobId=... StartTime=now` raced with the node's cleanup of the
previous run of the same job (seen here: "Job credential revoked", and an srun
--mpi=pmi2 step that failed in its final KVS exchange), so the tests just wait.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mpich_shm import segment

pytestmark = pytest.mark.slurm

ROOT = Path(__file__).resolve().parents[2]
SLURM_SCRIPTS = ROOT / "slurm"
VENV = Path(sys.prefix)          # the venv running pytest has nes_mpi installed
PYTHON = sys.executable

FINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY",
                "PREEMPTED", "BOOT_FAIL", "DEADLINE"}

# The run every resume is compared with: ~300 generations take 10-20 s on 2 ranks
# (episodes reach 500 steps after ~60 generations), long enough to interrupt.
RUN = {"NES_ENV": "CartPole-v1", "NES_GENERATIONS": "300", "NES_POPULATION": "8",
       "NES_SEED": "3", "NES_CHECKPOINT_EVERY": "25"}
SMALL = {"NES_ENV": "CartPole-v1", "NES_GENERATIONS": "12", "NES_POPULATION": "8",
         "NES_CHECKPOINT_EVERY": "4"}
# Where a test's run goes: train.sbatch on one node, or train_multinode.sbatch on the test
# cluster's two nodes (make test-slurm), two ranks each.
TWO_NODES_UP = int(os.environ.get("NES_SLURM_NODES", "1")) >= 2
needs_two_nodes = pytest.mark.skipif(
    not TWO_NODES_UP, reason="needs the two-node test cluster: NES_SLURM_NODES=2, as `make test-slurm` sets it")
ONE_NODE = ("train.sbatch", ("--ntasks=2",))
TWO_NODES = ("train_multinode.sbatch", ("-N2", "--ntasks-per-node=2"))
# Generations longer than the test cluster's KillWait (5 s): 40 HalfCheetah episodes
# of 1,000 steps on 2 ranks, ~12 s per generation on this machine when idle.
LONG = {"NES_ENV": "HalfCheetah-v5", "NES_GENERATIONS": "3", "NES_POPULATION": "40", "NES_SEED": "5",
        "NES_CHECKPOINT_EVERY": "1", "NES_EXTRA_ARGS": "--eval-every 0 --noise-table-size 1000000"}


# ---------------------------------------------------------------- helpers
def sh(*cmd: str, check: bool = True, cwd=None, timeout: float = 60) -> str:
    p = subprocess.run(list(cmd), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                       cwd=cwd, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {p.returncode}:\n{p.stdout}")
    return p.stdout


def sbatch(script: str, cwd: Path, settings: dict, *options: str) -> str:
    """Submit slurm/<script> from cwd, the way a user would; return the job id."""
    env = {"NES_VENV": str(VENV), **settings}
    for k, v in env.items():
        assert "," not in v, f"{k}={v!r}: sbatch --export splits on commas"
    export = ",".join(["ALL"] + [f"{k}={v}" for k, v in env.items()])
    out = sh("sbatch", "--parsable", f"--export={export}", *options,
             str(SLURM_SCRIPTS / script), cwd=cwd)
    return out.strip().splitlines()[-1].split(";")[0]


def jobs(jobid: str) -> list[dict]:
    """`scontrol show job` records of a job (several for an array)."""
    out = sh("scontrol", "-o", "show", "job", jobid)
    return [dict(re.findall(r"(\w+)=(\S*)", line)) for line in out.splitlines() if line.strip()]


def job(jobid: str) -> dict:
    return jobs(jobid)[0]


def outputs(cwd: Path) -> str:
    return "\n".join(f"==> {p.name} <==\n{p.read_text(errors='replace')}"
                     for p in sorted(cwd.glob("slurm-*.out")))


def wait_for(cond, timeout: float, what: str, cwd: Path, poll: float = 0.3):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = cond()
        if v:
            return v
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}\n{outputs(cwd)}")


def wait_done(jobid: str, cwd: Path, timeout: float = 300) -> list[dict]:
    """Wait until every record of jobid is final. A requeued job waits for its begin
    time (cred_expire=20 in the test cluster) before it runs again."""
    def done():
        recs = jobs(jobid)
        return recs if all(r["JobState"] in FINAL_STATES for r in recs) else None
    return wait_for(done, timeout, f"job {jobid} to finish", cwd, poll=0.5)


def last_generation(run_dir: Path) -> int:
    try:
        lines = (run_dir / "log.csv").read_text().strip().splitlines()
    except FileNotFoundError:
        return -1
    for line in reversed(lines[1:]):
        try:
            return int(line.split(",")[0])
        except ValueError:
            continue
    return -1


def checkpoints(run_dir: Path) -> dict[int, Path]:
    return {int(p.stem.split("_")[1]): p
            for p in (run_dir / "checkpoints").glob("ckpt_*.h5")}


def info(ckpt: Path) -> dict:
    return json.loads(sh(PYTHON, "-m", "nes_mpi", "info", str(ckpt), "--json"))


def final_info(run_dir: Path, generations: int, cwd: Path, env: str = "CartPole-v1") -> dict:
    ckpts = checkpoints(run_dir)
    assert generations in ckpts, f"no ckpt_{generations:06d}.h5 in {sorted(ckpts)}\n{outputs(cwd)}"
    meta = info(ckpts[generations])
    assert meta["generation"] == generations
    assert meta["env_id"] == env
    return meta


def jobs_log(run_dir: Path) -> list[str]:
    """Lines `... job=J restart=R exit=C` that the script appends after each launch."""
    return [ln for ln in (run_dir / "slurm_jobs.log").read_text().splitlines() if " exit=" in ln]


def assert_state(rec: dict, state: str, exit_code: str, cwd: Path):
    got = (rec["JobState"], rec["ExitCode"])
    assert got == (state, exit_code), f"job {rec['JobId']}: {got}, wanted {(state, exit_code)}\n{outputs(cwd)}"


def wait_generation(jobid: str, run_dir: Path, generation: int, cwd: Path, timeout: float = 300):
    """Wait until the running job's run has logged `generation`."""
    def reached():
        st = job(jobid)["JobState"]
        if st in FINAL_STATES:
            raise AssertionError(f"job {jobid} ended ({st}) before generation {generation}\n{outputs(cwd)}")
        return last_generation(run_dir) >= generation
    wait_for(reached, timeout, f"generation {generation} in {run_dir}/log.csv", cwd)


def interrupt_batch_when(jobid: str, run_dir: Path, generation: int, cwd: Path):
    """Wait until the run has logged `generation`, then send the time-limit
    warning the way --signal=B:USR1@... does: SIGUSR1 to the batch shell only."""
    wait_generation(jobid, run_dir, generation, cwd, timeout=180)
    sh("scancel", "--signal=USR1", "--batch", jobid)


def job_pids(jobid: str) -> list[int]:
    """Every process of a running job (batch shell, launcher, ranks) on each of its nodes:
    `scontrol listpids JOB NODE` (without NODE it asks only one slurmd of this host, n1's)."""
    pids = []
    for node in sh("scontrol", "show", "hostnames", job(jobid)["NodeList"]).split():
        out = sh("scontrol", "listpids", jobid, node, check=False)
        pids += [int(f[0]) for f in (ln.split() for ln in out.splitlines()[1:]) if f and f[0].isdigit()]
    return pids


TABLE_LINE = re.compile(r"noise table: (\d+) cop(?:y|ies) of [\d.]+ MiB on (\d+) node\(s\) \(ranks ([^;]+); owners ([^;)]+)")


def noise_tables(out: str) -> list[tuple[int, int, str, str]]:
    """(copies, nodes, ranks per node, owners) from each start-up line of the trainer: the
    ranks sharing each node's window and the ranks whose memory holds a copy, as measured."""
    return [(int(c), int(n), ranks, owners) for c, n, ranks, owners in TABLE_LINE.findall(out)]


def requeue_when(jobid: str, run_dir: Path, generation: int, cwd: Path, kill_first: bool):
    """Once the run has logged `generation`, `scontrol requeue` the job (what preemption with
    requeue and node-failure requeue do); with kill_first, SIGKILL every process of the job
    just before, as SLURM does when KillWait runs out. Returns when the job waits to rerun."""
    wait_generation(jobid, run_dir, generation, cwd)
    if kill_first:
        pids = job_pids(jobid)
        assert pids, f"no processes listed for job {jobid}"
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    sh("scontrol", "requeue", jobid)
    wait_for(lambda: job(jobid)["Restarts"] == "1" and job(jobid)["JobState"] == "PENDING", 120,
             f"job {jobid} to be requeued", cwd)


# ---------------------------------------------------------------- tests
@pytest.fixture(scope="session")
def reference(slurm_cluster, tmp_path_factory):
    """An uninterrupted srun run of RUN: (job record, run dir, submit dir)."""
    cwd = tmp_path_factory.mktemp("reference")
    run_dir = cwd / "run"
    jobid = sbatch("train.sbatch", cwd, {**RUN, "NES_RUN_DIR": str(run_dir)}, "--ntasks=2")
    rec = wait_done(jobid, cwd)[0]
    return rec, run_dir, cwd


def test_train_completes(reference):
    rec, run_dir, cwd = reference
    assert_state(rec, "COMPLETED", "0:0", cwd)
    assert rec["Restarts"] == "0"
    meta = final_info(run_dir, int(RUN["NES_GENERATIONS"]), cwd)
    assert meta["config"]["population"] == 8 and meta["config"]["seed"] == 3
    assert "2 rank(s)" in outputs(cwd)
    assert (run_dir / "log.csv").exists()
    assert jobs_log(run_dir)[-1].endswith("exit=0")


@pytest.mark.parametrize("launcher,where", [
    ("srun", ONE_NODE), ("mpiexec", ONE_NODE), pytest.param("srun", TWO_NODES, marks=needs_two_nodes)],
    ids=["srun", "mpiexec", "srun-2nodes"])
def test_time_limit_signal_requeues_and_resumes(reference, tmp_path, launcher, where):
    """USR1 to the batch shell -> checkpoint, exit 75, requeue, resume -> the same
    parameters as the uninterrupted run (2 ranks on one node). On two nodes (4 ranks) each
    session of the run also holds exactly one noise table per node."""
    ref_rec, ref_dir, _ = reference
    ref = final_info(ref_dir, int(RUN["NES_GENERATIONS"]), ref_dir.parent)
    run_dir = tmp_path / "run"
    settings = {**RUN, "NES_RUN_DIR": str(run_dir), "NES_LAUNCHER": launcher}
    script, options = where
    jobid = sbatch(script, tmp_path, settings, *options)
    interrupt_batch_when(jobid, run_dir, 40, tmp_path)
    rec = wait_done(jobid, tmp_path)[0]
    assert_state(rec, "COMPLETED", "0:0", tmp_path)
    assert rec["Restarts"] == "1", outputs(tmp_path)
    log = jobs_log(run_dir)
    assert [ln.split(" exit=")[1] for ln in log] == ["75", "0"], log
    out = outputs(tmp_path)
    assert "SIGUSR1" in out and "requeueing" in out
    meta = final_info(run_dir, int(RUN["NES_GENERATIONS"]), tmp_path)
    if where == TWO_NODES:
        assert meta["n_ranks"] == 4 and "on n[1-2], 4 tasks" in out, out
        assert noise_tables(out) == [(2, 2, "0-1 | 2-3", "0,2")] * 2, out
    assert meta["timesteps"] == ref["timesteps"]
    assert meta["params_sha256"] == ref["params_sha256"], "resumed run diverged from the uninterrupted one"


def test_real_time_limit_then_cancel(slurm_cluster, tmp_path):
    """SLURM's own --signal=B:USR1@80 on a 2-minute job: checkpoint and requeue; the
    requeued job resumes from the checkpoint; scancel then stops it for good (exit 75
    after SIGTERM is not requeued).

    slurmctld looks at time limits every 30 s and sends the warning up to 30 s early:
    @80 on 2 minutes comes 10-40 s into the job, normally after the ranks have set up
    their handlers. If it comes before, it kills them (the script requeues then too,
    and the run starts afresh) or, in the moment between MPI_Init and the trainer's
    handlers, is swallowed (the script passes it on again 60 s later)."""
    run_dir = tmp_path / "run"
    settings = {**RUN, "NES_GENERATIONS": "100000", "NES_RUN_DIR": str(run_dir)}
    jobid = sbatch("train.sbatch", tmp_path, settings, "--ntasks=2", "--time=2",
                   "--signal=B:USR1@80")

    def requeued():
        r = job(jobid)
        if r["JobState"] in FINAL_STATES:
            raise AssertionError(f"job ended: {r['JobState']} {r['ExitCode']}\n{outputs(tmp_path)}")
        return r["JobState"] == "PENDING" and r["Restarts"] == "1"
    wait_for(requeued, 150, "the time-limit signal and a requeue", tmp_path)
    first = max(checkpoints(run_dir), default=-1)
    out = outputs(tmp_path)
    assert "SIGUSR1" in out
    assert jobs_log(run_dir)[-1].endswith("restart=0 exit=75") or (
        first == -1 and jobs_log(run_dir)[-1].endswith("restart=0 exit=138")), out

    # give the second run time to finish on its own terms
    sh("scontrol", "update", f"JobId={jobid}", "TimeLimit=10")
    wait_for(lambda: job(jobid)["JobState"] == "RUNNING" and last_generation(run_dir) > first + 5,
             120, "the requeued job to run", tmp_path)
    if first >= 0:
        assert f"resuming {run_dir}/checkpoints/ckpt_{first:06d}.h5" in outputs(tmp_path)
    sh("scancel", jobid)
    rec = wait_done(jobid, tmp_path, timeout=120)[0]
    assert rec["JobState"] == "CANCELLED" and rec["Restarts"] == "1", outputs(tmp_path)
    assert jobs_log(run_dir)[-1].endswith("restart=1 exit=75"), outputs(tmp_path)
    assert max(checkpoints(run_dir)) > first
    assert "not requeueing" in outputs(tmp_path)


def test_usr1_during_startup_requeues_once_and_resumes_exactly(reference, tmp_path):
    """A warning that lands while the ranks start up: whatever it hits, the job is requeued
    exactly once and ends with the uninterrupted run's parameters. Before the trainer's
    handlers exist it kills the ranks (the run is unfinished, so the script requeues);
    after, the trainer checkpoints and exits 75; if srun has not started the ranks yet, it
    is lost and passed on again NES_SIGNAL_REPEAT=3 s later, long before the run ends."""
    ref = final_info(reference[1], int(RUN["NES_GENERATIONS"]), reference[2])
    run_dir = tmp_path / "run"
    settings = {**RUN, "NES_RUN_DIR": str(run_dir), "NES_SIGNAL_REPEAT": "3"}
    jobid = sbatch("train.sbatch", tmp_path, settings, "--ntasks=2")
    wait_for(lambda: "command: srun" in outputs(tmp_path), 120, "the launch", tmp_path, poll=0.05)
    time.sleep(0.3)
    sh("scancel", "--signal=USR1", "--batch", jobid)
    rec = wait_done(jobid, tmp_path)[0]
    assert_state(rec, "COMPLETED", "0:0", tmp_path)
    assert rec["Restarts"] == "1", outputs(tmp_path)
    meta = final_info(run_dir, int(RUN["NES_GENERATIONS"]), tmp_path)
    assert meta["params_sha256"] == ref["params_sha256"], "the restarted run diverged"


def test_max_requeues_bounds_requeueing(slurm_cluster, tmp_path):
    run_dir = tmp_path / "run"
    settings = {**RUN, "NES_RUN_DIR": str(run_dir), "NES_MAX_REQUEUES": "0"}
    jobid = sbatch("train.sbatch", tmp_path, settings, "--ntasks=2")
    interrupt_batch_when(jobid, run_dir, 10, tmp_path)
    rec = wait_done(jobid, tmp_path)[0]
    assert_state(rec, "FAILED", "75:0", tmp_path)
    assert rec["Restarts"] == "0"
    assert checkpoints(run_dir), "no checkpoint after the signal"


def test_bad_input_fails_without_requeue(slurm_cluster, tmp_path):
    run_dir = tmp_path / "run"
    settings = {**SMALL, "NES_ENV": "NoSuchEnv-v0", "NES_RUN_DIR": str(run_dir)}
    jobid = sbatch("train.sbatch", tmp_path, settings, "--ntasks=2")
    rec = wait_done(jobid, tmp_path, timeout=120)[0]
    assert_state(rec, "FAILED", "2:0", tmp_path)
    assert rec["Restarts"] == "0"
    assert jobs_log(run_dir)[-1].endswith("exit=2")


def test_array_one_run_dir_per_task(slurm_cluster, tmp_path):
    root = tmp_path / "sweep"
    (tmp_path / "sweep.txt").write_text("# one line per array task\n--population 8\n\n--population 12\n")
    settings = {**SMALL, "NES_RUN_ROOT": str(root), "NES_SEED_BASE": "100",
                "NES_SWEEP_FILE": "sweep.txt"}
    # one task at a time: keeps the 2-core test machine from running 4 ranks at once
    jobid = sbatch("sweep_array.sbatch", tmp_path, settings, "--array=0-1%1", "--ntasks=2")
    recs = wait_done(jobid, tmp_path)
    assert len(recs) == 2, recs
    for r in recs:
        assert_state(r, "COMPLETED", "0:0", tmp_path)
    assert sorted(p.name for p in root.iterdir()) == ["task_000", "task_001"]
    for task, pop in ((0, 8), (1, 12)):
        meta = final_info(root / f"task_{task:03d}", int(SMALL["NES_GENERATIONS"]), tmp_path)
        assert meta["config"]["seed"] == 100 + task
        assert meta["config"]["population"] == pop
    assert len(list(tmp_path.glob(f"slurm-nes_sweep-{jobid}_*.out"))) == 2


@pytest.fixture(scope="session")
def long_reference(slurm_cluster, tmp_path_factory) -> dict:
    """`info` of the final checkpoint of an uninterrupted LONG run."""
    cwd = tmp_path_factory.mktemp("long_reference")
    run_dir = cwd / "run"
    jobid = sbatch("train.sbatch", cwd, {**LONG, "NES_RUN_DIR": str(run_dir)}, "--ntasks=2")
    assert_state(wait_done(jobid, cwd, timeout=600)[0], "COMPLETED", "0:0", cwd)
    return final_info(run_dir, int(LONG["NES_GENERATIONS"]), cwd, env=LONG["NES_ENV"])


@pytest.mark.parametrize("launcher,where", [
    ("srun", ONE_NODE), ("mpiexec", ONE_NODE), pytest.param("srun", TWO_NODES, marks=needs_two_nodes)],
    ids=["srun", "mpiexec", "srun-2nodes"])
def test_slurm_requeue_during_a_long_generation(long_reference, tmp_path, launcher, where):
    """SLURM's own requeue in the middle of a generation longer than KillWait.

    srun: every process of the job, on every node, is SIGKILLed first (the end of
    KillWait), so the ranks leave MPICH's segment /dev/shm/mpich_shm_<hash of "<job
    id>.<step>">_<node> behind on each node, and the requeued job -- same id, step ids
    from 0 again -- would open it and fail in MPI_Init; the script removes it on every
    node before it launches. On two nodes the ranks run in step 1 (step 0 is the
    per-node check). mpiexec: the requeue alone; the script reports the requeue. All end
    with the uninterrupted run's parameters (2 ranks on one node)."""
    run_dir = tmp_path / "run"
    settings = {**LONG, "NES_RUN_DIR": str(run_dir), "NES_LAUNCHER": launcher}
    script, options = where
    jobid = sbatch(script, tmp_path, settings, *options)
    killed = launcher == "srun"
    requeue_when(jobid, run_dir, 1, tmp_path, kill_first=killed)
    stale = [segment(f"{jobid}.0")] if where == ONE_NODE else [segment(f"{jobid}.1", n) for n in (0, 1)]
    if killed:
        assert all(p.exists() for p in stale), f"the killed ranks left no {stale}: nothing stale to start with"
    rec = wait_done(jobid, tmp_path, timeout=600)[0]
    assert_state(rec, "COMPLETED", "0:0", tmp_path)
    assert rec["Restarts"] == "1", outputs(tmp_path)
    out = outputs(tmp_path)
    if killed:
        assert all(f"removed stale MPICH shared memory {p}" in out for p in stale), out
    else:
        assert "SLURM is requeueing this job" in out and "not requeueing" not in out, out
    if where == TWO_NODES:
        assert noise_tables(out) == [(2, 2, "0-1 | 2-3", "0,2")] * 2, out
    assert not any(p.exists() for p in stale)
    meta = final_info(run_dir, int(LONG["NES_GENERATIONS"]), tmp_path, env=LONG["NES_ENV"])
    assert meta["timesteps"] == long_reference["timesteps"]
    assert meta["params_sha256"] == long_reference["params_sha256"], "requeued run diverged"


def test_scancel_during_a_long_generation_leaves_a_checkpoint(slurm_cluster, tmp_path):
    """scancel while a generation longer than KillWait (5 s) runs and no checkpoint is due:
    the ranks abandon the generation, write the state at its start and exit 75 before
    SLURM's SIGKILL. The job ends CANCELLED, is not requeued, and the only checkpoint holds
    the last finished generation."""
    run_dir = tmp_path / "run"
    settings = {**LONG, "NES_GENERATIONS": "50", "NES_CHECKPOINT_EVERY": "100", "NES_RUN_DIR": str(run_dir)}
    jobid = sbatch("train.sbatch", tmp_path, settings, "--ntasks=2")
    wait_generation(jobid, run_dir, 1, tmp_path)
    sh("scancel", jobid)
    rec = wait_done(jobid, tmp_path, timeout=120)[0]
    out = outputs(tmp_path)
    assert rec["JobState"] == "CANCELLED" and rec["Restarts"] == "0", out
    assert jobs_log(run_dir)[-1].endswith("restart=0 exit=75"), out
    assert sorted(checkpoints(run_dir)) == [last_generation(run_dir)], out
    assert "abandoned after" in out and "not requeueing" in out, out
    assert json.loads((run_dir / "status.json").read_text())["state"] == "stopped"


@pytest.fixture(scope="session")
def one_rank_small(tmp_path_factory) -> dict:
    """`info` of the final checkpoint of SMALL (seed 7) run by one rank, without SLURM."""
    one = tmp_path_factory.mktemp("one_rank") / "run"
    sh(PYTHON, "-m", "nes_mpi", "--env", "CartPole-v1", "--generations", SMALL["NES_GENERATIONS"],
       "--population", SMALL["NES_POPULATION"], "--seed", "7", "--checkpoint-every", SMALL["NES_CHECKPOINT_EVERY"],
       "--run-dir", str(one), timeout=300)
    return final_info(one, int(SMALL["NES_GENERATIONS"]), one.parent)


@needs_two_nodes
@pytest.mark.parametrize("options,ranks,tables", [
    (("-N2", "--ntasks-per-node=2"), [("0", "2", "n1"), ("1", "2", "n1"), ("2", "2", "n2"), ("3", "2", "n2")],
     (2, 2, "0-1 | 2-3", "0,2")),
    # uneven and interleaved: ranks 0 and 2 on n1, rank 1 alone on n2
    # (--ntasks-per-node=2 overrides the script's 32, which these 2-CPU nodes cannot take)
    (("-N2", "-n3", "--ntasks-per-node=2", "--distribution=cyclic"),
     [("0", "2", "n1"), ("1", "1", "n2"), ("2", "2", "n1")],
     (2, 2, "0,2 | 1", "0-1")),
], ids=["2+2", "2+1-cyclic"])
def test_multinode_two_nodes_bitwise_equal_to_one_rank(slurm_cluster, one_rank_small, tmp_path, options, ranks,
                                                       tables):
    """The test cluster's two nodes (two slurmd on this host, tests/slurm/cluster.sh):
    `srun --mpi=pmi2` with the same layout gives MPICH one node-local group per node, and
    train_multinode.sbatch (after its per-node check of the run dir and the interpreter)
    completes with exactly one noise table per node, as the trainer measured it, and
    parameters bitwise equal to a 1-rank run."""
    probe = ("from mpi4py import MPI; import os; w = MPI.COMM_WORLD; "
             "print(w.rank, w.Split_type(MPI.COMM_TYPE_SHARED).size, os.environ['SLURMD_NODENAME'])")
    out = sh("srun", *options, "--mpi=pmi2", PYTHON, "-c", probe, cwd=tmp_path, timeout=120)
    rows = sorted(tuple(ln.split()) for ln in out.splitlines() if ln[:1].isdigit())
    assert rows == ranks, out
    run_dir = tmp_path / "run"
    settings = {**SMALL, "NES_SEED": "7", "NES_RUN_DIR": str(run_dir)}
    jobid = sbatch("train_multinode.sbatch", tmp_path, settings, *options)
    assert_state(wait_done(jobid, tmp_path)[0], "COMPLETED", "0:0", tmp_path)
    meta = final_info(run_dir, int(SMALL["NES_GENERATIONS"]), tmp_path)
    out = outputs(tmp_path)
    assert meta["n_ranks"] == len(ranks) and f"on n[1-2], {len(ranks)} tasks" in out, out
    assert noise_tables(out) == [tables], out
    assert meta["params_sha256"] == one_rank_small["params_sha256"]


@needs_two_nodes
def test_multinode_unusable_interpreter_fails_with_one_line(slurm_cluster, tmp_path):
    """An interpreter path that does not hold on the nodes: the per-node check stops the
    job before any rank starts, with one line naming both nodes; exit 2, no requeue."""
    run_dir = tmp_path / "run"
    settings = {**SMALL, "NES_RUN_DIR": str(run_dir), "NES_PYTHON": "/nonexistent/bin/python"}
    jobid = sbatch("train_multinode.sbatch", tmp_path, settings, "-N2", "--ntasks-per-node=1")
    rec = wait_done(jobid, tmp_path, timeout=120)[0]
    assert_state(rec, "FAILED", "2:0", tmp_path)
    assert rec["Restarts"] == "0"
    out = outputs(tmp_path)
    errors = [ln for ln in out.splitlines() if "error" in ln.lower()]
    assert len(errors) == 1, out
    assert "interpreter /nonexistent/bin/python (with nes_mpi) not usable on n1 n2 :" in errors[0], out
    assert "command: srun" in out and not checkpoints(run_dir)
