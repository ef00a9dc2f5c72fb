# nes_mpi: the part every slurm/*.sbatch script shares; they source it (see slurm/README.md).
# shellcheck shell=bash
#
# Defines nes_log and nes_train. nes_train runs the trainer on every task of the
# job, passes the time-limit warning on to it, and decides from the run
# directory's state (`python -m nes_mpi status`), not from the launcher's exit
# code, whether to requeue. It also removes MPICH shared-memory segments this job
# owns, before the launch (a killed predecessor of a requeued job may have left
# them) and on every exit path of this shell.

set -uo pipefail
nes_log() { printf '[%s] nes_mpi sbatch: %s\n' "$(date '+%F %T')" "$*"; }

# One thread per MPI rank.
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1

if [[ -n $NES_VENV ]]; then
    if [[ -f $NES_VENV/bin/activate ]]; then
        # shellcheck disable=SC1091
        source "$NES_VENV/bin/activate"
    elif [[ $NES_VENV != "${SLURM_SUBMIT_DIR:-$PWD}/.venv" ]]; then
        nes_log "NES_VENV=$NES_VENV has no bin/activate"
        exit 2
    fi
fi

# ------------------------------------------------------------ MPICH shared memory
# MPICH keeps a node's shared-memory segment in /dev/shm/mpich_shm_<H>_<node> (and
# mpich_vci_<H>_<node>), H = the 32-bit FNV-1a hash of the PMI job name, which
# under `srun --mpi=pmi2` is "<job id>.<step id>". A rank killed without
# MPI_Finalize leaves it behind, and a requeued job (same job id, step ids from 0
# again) would open the stale segment and fail in MPI_Init. mpiexec (hydra) names
# its jobs afresh each run (a name this script cannot know), so its leftovers cannot
# collide; they only take space until the node's epilog clears /dev/shm.
NES_SHM_STEPS=${NES_SHM_STEPS:-32}   # step ids 0..N-1 of this job are checked

# nes_fnv1a STRING: the hash MPICH puts into the segment name, in lower-case hex.
nes_fnv1a() {
    local s=$1 h=2166136261 i c
    for ((i = 0; i < ${#s}; i++)); do
        printf -v c '%d' "'${s:i:1}"
        h=$((((h ^ c) * 16777619) & 0xFFFFFFFF))
    done
    printf '%x' "$h"
}

# nes_shm_remove FILE: remove FILE if this user owns it and no live process maps it.
nes_shm_remove() {
    local f=$1
    [[ -f $f && -O $f ]] || return 0
    grep -qsF -- "$f" /proc/[0-9]*/maps && return 0
    rm -f -- "$f" && nes_log "removed stale MPICH shared memory $f${NES_NODE:+ on $NES_NODE}"
}

# nes_shm_clean_job: segments named after this job's srun steps.
nes_shm_clean_job() {
    [[ -n ${SLURM_JOB_ID:-} && -d /dev/shm ]] || return 0
    local step h f
    for ((step = 0; step < NES_SHM_STEPS; step++)); do
        h=$(nes_fnv1a "$SLURM_JOB_ID.$step")
        for f in /dev/shm/mpich_shm_"$h"_* /dev/shm/mpich_vci_"$h"_*; do
            nes_shm_remove "$f"
        done
    done
}

# shellcheck disable=SC2329 # the EXIT trap
nes_on_exit() {
    [[ -n ${NES_PID:-} ]] && return 0   # the launcher still runs: its segments are in use
    nes_shm_clean_job
}
trap nes_on_exit EXIT

# ------------------------------------------------------------ run and job state
# nes_run_status: prints the run's state line; exit 0 finished, 3 unfinished,
# 4 no checkpoint, other: unknown. Reads the checkpoints as data only.
nes_run_status() {
    local -a budget=()
    [[ -n ${NES_GENERATIONS:-} ]] && budget=(--generations "$NES_GENERATIONS")
    "$NES_PYTHON" -m nes_mpi status "$NES_RUN_DIR" ${budget[@]+"${budget[@]}"} 2>&1 | tail -n 1
    return "${PIPESTATUS[0]}"
}

# nes_restart_point: where a restart of this run will continue from, in words.
nes_restart_point() {
    local st
    st=$(nes_run_status)
    if [[ $st =~ generation\ ([0-9]+)\ of ]]; then
        echo "checkpoint at generation ${BASH_REMATCH[1]} is the restart point"
    elif [[ $st == no-checkpoint* ]]; then
        echo "there is no checkpoint yet: the run starts afresh"
    else
        echo "run state unknown ($st)"
    fi
}

# nes_job_field NAME: a field of `scontrol show job` for this job (empty if unknown).
nes_job_field() {
    [[ -n ${SLURM_JOB_ID:-} ]] || return 0
    scontrol -o show job "$SLURM_JOB_ID" 2>/dev/null | grep -o -m 1 "\b$1=[^ ]*" | head -n 1 | cut -d= -f2-
}

# ------------------------------------------------------------ signals
# shellcheck disable=SC2329 # called by the USR1 trap
nes_on_usr1() {
    NES_GOT_USR1=1
    nes_log "SIGUSR1: asking the trainer to checkpoint and stop"
    [[ -n $NES_PID ]] || return 0
    kill -USR1 "$NES_PID" 2>/dev/null
    if [[ -z $NES_REPEATER ]] && ((NES_SIGNAL_REPEAT > 0)); then
        (
            sleep "$NES_SIGNAL_REPEAT" >/dev/null 2>&1
            nes_log "still running ${NES_SIGNAL_REPEAT}s after SIGUSR1: passing it on again"
            kill -USR1 "$NES_PID" 2>/dev/null
        ) &
        NES_REPEATER=$!
    fi
}

# SIGTERM reaches this shell and the ranks together when SLURM ends the job:
# scancel, the hard time limit, or SLURM requeueing it itself (scontrol requeue,
# preemption, node failure). A requeue has already raised the job's Restarts.
# shellcheck disable=SC2329 # called by the TERM trap
nes_on_term() {
    NES_GOT_TERM=1
    local restarts state
    restarts=$(nes_job_field Restarts)
    state=$(nes_job_field JobState)
    if [[ $restarts =~ ^[0-9]+$ ]] && ((restarts > ${SLURM_RESTART_COUNT:-0})); then
        NES_SLURM_REQUEUE=1
        nes_log "SIGTERM: SLURM is requeueing this job (JobState=$state, Restarts=$restarts);" \
            "the trainer checkpoints if it can before SLURM kills it"
    else
        nes_log "SIGTERM: the job is being cancelled or has run out of time (JobState=${state:-?})"
    fi
}

# nes_prepare_nodes: before each launch, on every node of the job, remove this job's
# stale MPICH segments from the node's /dev/shm (a killed rank leaves them on its own
# node, which the batch shell of a multi-node job cannot see). A multi-node run also
# needs its run directory and interpreter on storage every node sees: one task per
# node checks both, and the job stops with one line naming the nodes where they are
# not usable.
nes_prepare_nodes() {
    local nodes=${SLURM_JOB_NUM_NODES:-1} python report bad
    if ((nodes <= 1)); then
        nes_shm_clean_job
        return 0
    fi
    python=$(command -v "$NES_PYTHON") || python=$NES_PYTHON
    # Each task prints its cleanup's lines, then "ok NODE" or "bad NODE".
    # shellcheck disable=SC2016 # expanded by the bash on each node
    report=$(srun --nodes="$nodes" --ntasks="$nodes" --ntasks-per-node=1 --mpi=none --kill-on-bad-exit=0 \
        bash -c "$(declare -f nes_log nes_fnv1a nes_shm_remove nes_shm_clean_job)"'
            NES_NODE=${SLURMD_NODENAME:-$(hostname)} NES_SHM_STEPS=$3
            nes_shm_clean_job
            s=bad; [[ -d $1 && -w $1 ]] && "$2" -c "import nes_mpi" 2>/dev/null && s=ok; echo "$s $NES_NODE"' \
        _ "$NES_RUN_DIR" "$python" "$NES_SHM_STEPS")
    grep -v '^\(ok\|bad\) ' <<<"$report" | grep .
    bad=$(grep '^bad ' <<<"$report" | sed 's/^bad //' | sort | tr '\n' ' ')
    if [[ $(grep -c '^ok ' <<<"$report") -ne $nodes ]]; then
        nes_log "error: run dir $NES_RUN_DIR or interpreter $python (with nes_mpi) not usable on" \
            "${bad:-some nodes}: a multi-node run needs both on storage that every node sees"
        exit 2
    fi
}

# ------------------------------------------------------------ the run
# nes_train ARG...: run the trainer on all tasks of this job with ARG... added to
# the common options, then requeue the job if the run is unfinished and was
# stopped on purpose.
nes_train() {
    local -a args extra launcher_extra cmd
    args=(-m nes_mpi train --run-dir "$NES_RUN_DIR" --resume auto)
    [[ -n $NES_CONFIG ]] && args+=(--config "$NES_CONFIG")
    [[ -n $NES_ENV ]] && args+=(--env "$NES_ENV")
    [[ -n $NES_GENERATIONS ]] && args+=(--generations "$NES_GENERATIONS")
    [[ -n $NES_POPULATION ]] && args+=(--population "$NES_POPULATION")
    [[ -n $NES_SEED ]] && args+=(--seed "$NES_SEED")
    [[ -n $NES_CHECKPOINT_EVERY ]] && args+=(--checkpoint-every "$NES_CHECKPOINT_EVERY")
    read -r -a extra <<<"$NES_EXTRA_ARGS"
    args+=(${extra[@]+"${extra[@]}"} "$@")
    read -r -a launcher_extra <<<"$NES_LAUNCHER_ARGS"

    local ntasks=${SLURM_NTASKS:-1}
    case $NES_LAUNCHER in
        srun) cmd=(srun --mpi="$NES_SRUN_MPI" --kill-on-bad-exit=1 ${launcher_extra[@]+"${launcher_extra[@]}"}) ;;
        mpiexec | mpirun) cmd=("$NES_LAUNCHER" -n "$ntasks" ${launcher_extra[@]+"${launcher_extra[@]}"}) ;;
        *)
            nes_log "NES_LAUNCHER must be srun, mpiexec or mpirun, not '$NES_LAUNCHER'"
            exit 2
            ;;
    esac
    cmd+=("$NES_PYTHON" "${args[@]}")

    mkdir -p "$NES_RUN_DIR" || exit 1
    local restarts=${SLURM_RESTART_COUNT:-0}
    nes_log "job ${SLURM_JOB_ID:-?} restart $restarts on ${SLURM_JOB_NODELIST:-$(hostname)}, $ntasks tasks"
    nes_log "run dir: $NES_RUN_DIR"
    nes_log "command: ${cmd[*]}"
    printf '%s job=%s restart=%s tasks=%s cmd=%s\n' "$(date '+%F %T')" "${SLURM_JOB_ID:-}" \
        "$restarts" "$ntasks" "${cmd[*]}" >>"$NES_RUN_DIR/slurm_jobs.log"

    # The time-limit warning (--signal=B:USR1@...) reaches only this shell. Pass
    # it on to the launcher (srun, mpiexec and mpirun all forward SIGUSR1 to
    # every rank); the trainer then checkpoints and exits 75. A signal can be
    # lost (e.g. one that lands while the ranks start up), so it is passed on
    # once more after NES_SIGNAL_REPEAT s if the launcher still runs.
    NES_GOT_USR1=0
    NES_GOT_TERM=0
    NES_SLURM_REQUEUE=0
    NES_PID=
    NES_REPEATER=
    trap 'nes_on_usr1' USR1
    trap 'nes_on_term' TERM

    nes_prepare_nodes
    "${cmd[@]}" &
    NES_PID=$!
    local rc
    while :; do
        wait "$NES_PID"
        rc=$?
        # wait returns >128 when a trapped signal interrupts it; the launcher
        # is still there (or a zombie) then, so wait again for its real status.
        if ((rc > 128)) && kill -0 "$NES_PID" 2>/dev/null; then
            continue
        fi
        break
    done
    NES_PID=
    if [[ -n $NES_REPEATER ]]; then
        kill "$NES_REPEATER" 2>/dev/null
        wait "$NES_REPEATER" 2>/dev/null
    fi
    printf '%s job=%s restart=%s exit=%s\n' "$(date '+%F %T')" "${SLURM_JOB_ID:-}" \
        "$restarts" "$rc" >>"$NES_RUN_DIR/slurm_jobs.log"
    nes_decide "$rc" "$restarts"
}

# nes_decide RC RESTARTS: exit this script, requeueing the job when the run is
# unfinished and was stopped on purpose (SIGUSR1, or exit 75). What the launcher
# reports for ranks killed by a signal differs (srun 128+N, mpiexec N), so the
# run directory decides whether the run is finished.
nes_decide() {
    local rc=$1 restarts=$2 st stc
    if ((NES_SLURM_REQUEUE)); then
        nes_log "SLURM is requeueing this job; $(nes_restart_point)"
        exit 0
    fi
    if ((rc == 0)); then
        nes_log "training finished"
        exit 0
    fi
    st=$(nes_run_status)
    stc=$?
    nes_log "trainer exit code $rc; run state: $st"
    if ((stc == 0)); then
        nes_log "the run is finished: not requeueing"
        exit 0
    fi
    if ((NES_GOT_TERM)); then
        nes_log "stopped by SIGTERM (cancelled or out of time): not requeueing; $(nes_restart_point);" \
            "submit again to continue"
        exit "$rc"
    fi
    # Exit codes 1 and 2 are the trainer's own verdict (error, bad input): never requeue those.
    if ! ((rc == 75 || (NES_GOT_USR1 && rc != 1 && rc != 2))); then
        nes_log "trainer failed with exit code $rc: not requeueing"
        exit "$rc"
    fi
    if ((rc != 75)); then
        nes_log "the ranks ended with exit code $rc after SIGUSR1 (killed by it before their handlers were up," \
            "or in teardown); the run is unfinished, so it continues from its last checkpoint"
    fi
    if ((restarts >= NES_MAX_REQUEUES)); then
        nes_log "the job was already restarted $restarts times (NES_MAX_REQUEUES=$NES_MAX_REQUEUES):" \
            "not requeueing; resubmit to continue"
        exit 75
    fi
    if [[ -z ${SLURM_JOB_ID:-} ]]; then
        nes_log "not in a SLURM job, so run this script again to continue"
        exit 75
    fi
    if ((NES_GOT_USR1)); then
        nes_log "stopped on the time-limit warning: requeueing job $SLURM_JOB_ID; $(nes_restart_point)"
    else
        nes_log "stopped on a signal sent to the ranks: requeueing job $SLURM_JOB_ID; $(nes_restart_point)"
    fi
    if ! scontrol requeue "$SLURM_JOB_ID"; then
        nes_log "scontrol requeue failed; resubmit this script to continue the run"
        exit 75
    fi
    exit 0
}
