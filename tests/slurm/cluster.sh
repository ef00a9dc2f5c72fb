#!/usr/bin/env bash
# Bring up (or tear down) a throw-away two-node SLURM cluster on this machine: two
# slurmd, nodes n1 and n2, both on this host (NodeAddr=127.0.0.1, own ports).
#
#   tests/slurm/cluster.sh start   install slurm+munge from Debian packages if the
#                                  binaries are missing, write a config under
#                                  $NES_SLURM_DIR, start munged, slurmctld and
#                                  one slurmd per node, and wait until the nodes are idle
#   tests/slurm/cluster.sh stop    cancel jobs left in this cluster and stop exactly
#                                  the daemons that `start` started (by pid file)
#   tests/slurm/cluster.sh status  print daemon pids and `sinfo`
#   tests/slurm/cluster.sh env     print `export SLURM_CONF=...` for an eval
#
# Needs root (the daemons run as root; SlurmUser=root). Every path is private to
# $NES_SLURM_DIR (default /tmp/nes_mpi_slurm): its own munge key and socket, state,
# spool, pid and log files, so a system munge/slurm installation is left alone.
# Client commands find this cluster through SLURM_CONF=$NES_SLURM_DIR/etc/slurm.conf.
#
# Exit codes: 0 ok, 1 failure, 3 cannot get slurm here (not root, or apt failed);
# the pytest fixture skips on 3 unless CI is set.
set -euo pipefail

DIR=${NES_SLURM_DIR:-/tmp/nes_mpi_slurm}
CTLD_PORT=${NES_SLURM_CTLD_PORT:-6817}
SLURMD_PORT=${NES_SLURM_SLURMD_PORT:-6818}
START_TIMEOUT=${NES_SLURM_START_TIMEOUT:-90}
KILL_WAIT=${NES_SLURM_KILL_WAIT:-5}

CONF=$DIR/etc/slurm.conf
MUNGE_SOCKET=$DIR/munge/munge.socket.2
export SLURM_CONF=$CONF

log() { printf 'cluster.sh: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# --------------------------------------------------------------------------- install
have_binaries() {
    local b
    for b in munged mungekey slurmctld slurmd srun sbatch scontrol sinfo scancel squeue; do
        command -v "$b" >/dev/null 2>&1 || [[ -x /usr/sbin/$b ]] || return 1
    done
    # srun --mpi=pmi2 needs the mpi_pmi2 plugin (slurm-wlm-basic-plugins).
    compgen -G '/usr/lib/*/slurm-wlm/mpi_pmi2.so' >/dev/null || return 1
}

install_if_missing() {
    if have_binaries; then
        return 0
    fi
    if [[ $(id -u) -ne 0 ]]; then
        log "slurm/munge are not installed and we are not root"
        exit 3
    fi
    command -v apt-get >/dev/null 2>&1 || { log "no apt-get on this machine"; exit 3; }
    log "installing slurmctld slurmd slurm-client munge from Debian packages"
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get update -q >"$DIR/apt.log" 2>&1 ||
        ! apt-get install -y -q --no-install-recommends \
            slurmctld slurmd slurm-client slurm-wlm-basic-plugins munge \
            >>"$DIR/apt.log" 2>&1; then
        tail -n 20 "$DIR/apt.log" >&2 || true
        log "apt-get failed (log: $DIR/apt.log)"
        exit 3
    fi
    have_binaries || { log "packages installed but binaries still missing"; exit 3; }
}

# --------------------------------------------------------------------------- helpers
# pid_alive PIDFILE NAME: the pid in PIDFILE is running and its command is NAME.
pid_alive() {
    local pidfile=$1 name=$2 pid comm
    [[ -s $pidfile ]] || return 1
    pid=$(<"$pidfile")
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    [[ -r /proc/$pid/comm ]] || return 1
    comm=$(<"/proc/$pid/comm") || return 1
    [[ $comm == "$name" ]] || return 1
    # an exited daemon that nobody reaped (a zombie) is not running
    local stat
    stat=$(<"/proc/$pid/stat") || return 1
    stat=${stat##*) }
    [[ ${stat:0:1} != Z ]]
}

# stop_daemon PIDFILE NAME: TERM (then KILL) exactly that process, if it is ours.
stop_daemon() {
    local pidfile=$1 name=$2 pid i
    if ! pid_alive "$pidfile" "$name"; then
        rm -f "$pidfile"
        return 0
    fi
    pid=$(<"$pidfile")
    log "stopping $name (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do
        pid_alive "$pidfile" "$name" || break
        sleep 0.1
    done
    if pid_alive "$pidfile" "$name"; then
        log "$name did not stop on SIGTERM; sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        sleep 0.5
    fi
    rm -f "$pidfile"
}

# NES_SLURM_NODES=2 (what `make test-slurm` passes) starts two slurmd, n1 and n2, on this
# host for the multi-node test; the default here is one node.
NODES=()
for ((_i = 1; _i <= ${NES_SLURM_NODES:-1}; _i++)); do NODES+=("n$_i"); done

# cpu_count: the machine's usable CPUs. Not plain `nproc`: it honours OMP_NUM_THREADS, which
# the test session sets to 1, and a node that claims 1 CPU refuses every 2-task job.
cpu_count() {
    env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc
}

# node_lines: one NodeName line per node, each slurmd on its own port.
node_lines() {
    local i
    for ((i = 0; i < ${#NODES[@]}; i++)); do
        # The whole topology, not only CPUs, so slurmd's own guess never decides the CPU count.
        echo "NodeName=${NODES[i]} NodeHostname=$HOST NodeAddr=127.0.0.1 Port=$((SLURMD_PORT + i))" \
            "CPUs=$ncpu Boards=1 SocketsPerBoard=1 CoresPerSocket=$ncpu ThreadsPerCore=1 State=UNKNOWN"
    done
}

# node_state NODE
node_state() {
    sinfo -h -N -n "$1" -o '%T' 2>/dev/null | head -n 1
}

# --------------------------------------------------------------------------- config
write_config() {
    local ncpu first_job_id
    ncpu=$(cpu_count)
    first_job_id=$(($(date +%s) % 600000 * 100 + 1))
    mkdir -p "$DIR"/{etc,munge,state,spool,log,run}
    chmod 0700 "$DIR/munge"
    : >"$DIR/etc/plugstack.conf"
    cat >"$CONF" <<EOF
# Generated by tests/slurm/cluster.sh -- single-node test cluster, do not edit.
ClusterName=nesmpi
SlurmctldHost=$HOST(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# cred_expire also sets how long a requeued job waits before it may start again
# (default 120 s). Starting it sooner (scontrol update StartTime=now right after
# the requeue) raced with the node's cleanup of the previous run of the same job
# id here: "Job credential revoked", or a PMI2 failure in the reused step 0.
AuthInfo=socket=$MUNGE_SOCKET,cred_expire=20
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$DIR/log/jobcomp.txt
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmdParameters=config_overrides
ReturnToService=2
PlugStackConfig=$DIR/etc/plugstack.conf
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool/slurmd.%n
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.%n.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.%n.log
SlurmctldDebug=info
SlurmdDebug=info
# keep finished jobs visible to scontrol for an hour (tests read their ExitCode)
MinJobAge=3600
# New job ids on every start: MPICH names its /dev/shm segment after the PMI
# kvsname, which under srun --mpi=pmi2 is "<jobid>.<stepid>", and a segment left
# by a killed job 2 of an earlier cluster broke MPI_Init of the next job 2.
FirstJobId=$first_job_id
# SIGTERM -> SIGKILL delay when a job ends or is requeued (default 30 s). Short, so
# the tests can have generations longer than it with a small CPU budget.
KillWait=$KILL_WAIT
InactiveLimit=0
SchedulerParameters=sched_interval=5
# Two nodes on this one host: each slurmd is started with -N NAME, listens on its own
# port and keeps its own spool/pid/log (%n); config_overrides lets both claim the CPUs.
$(node_lines)
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
EOF
}

# --------------------------------------------------------------------------- start/stop
start_munged() {
    if pid_alive "$DIR/run/munged.pid" munged; then
        return 0
    fi
    if [[ ! -s $DIR/munge/munge.key ]]; then
        if command -v mungekey >/dev/null 2>&1; then
            mungekey --create --keyfile="$DIR/munge/munge.key" --force
        else
            dd if=/dev/urandom of="$DIR/munge/munge.key" bs=1024 count=1 status=none
        fi
        chmod 0600 "$DIR/munge/munge.key"
    fi
    rm -f "$MUNGE_SOCKET" "$MUNGE_SOCKET.lock"
    # --force: we run munged as root with its files under /tmp, which it would
    # otherwise refuse as "insecure".
    munged --force \
        --socket="$MUNGE_SOCKET" \
        --key-file="$DIR/munge/munge.key" \
        --pid-file="$DIR/run/munged.pid" \
        --log-file="$DIR/log/munged.log" \
        --seed-file="$DIR/munge/munged.seed" \
        >>"$DIR/log/munged.out" 2>&1 || { cat "$DIR/log/munged.out" >&2; die "munged failed"; }
    wait_for "munged" 10 pid_alive "$DIR/run/munged.pid" munged
    # round trip through the daemon
    munge --socket="$MUNGE_SOCKET" -n | unmunge --socket="$MUNGE_SOCKET" >/dev/null ||
        die "munge round trip failed"
}

# wait_for_quietly SECONDS CMD...: poll CMD (output discarded) every second; 1 on timeout.
wait_for_quietly() {
    local secs=$1 i
    shift
    for ((i = 0; i < secs; i++)); do
        "$@" >/dev/null 2>&1 && return 0
        sleep 1
    done
    return 1
}

# wait_for WHAT SECONDS CMD...: poll CMD every 0.2 s.
wait_for() {
    local what=$1 secs=$2 i
    shift 2
    for ((i = 0; i < secs * 5; i++)); do
        if "$@"; then
            return 0
        fi
        sleep 0.2
    done
    die "timed out after ${secs}s waiting for $what"
}

# nodes_idle: every node takes jobs; a node left DOWN by an earlier controller is resumed.
nodes_idle() {
    local n st ok=0
    for n in "${NODES[@]}"; do
        st=$(node_state "$n")
        case $st in
            idle | idle~ | mixed | allocated) ;;
            down* | drain* | fail*)
                scontrol update NodeName="$n" State=RESUME >/dev/null 2>&1 || true
                ok=1 ;;
            *) ok=1 ;;
        esac
    done
    return "$ok"
}

slurmds_alive() {
    local n
    for n in "${NODES[@]}"; do
        pid_alive "$DIR/run/slurmd.$n.pid" slurmd || return 1
    done
}

cmd_start() {
    mkdir -p "$DIR"
    install_if_missing
    if [[ $(id -u) -ne 0 ]]; then
        log "the test cluster runs its daemons as root; run as root"
        exit 3
    fi
    if pid_alive "$DIR/run/slurmctld.pid" slurmctld && slurmds_alive &&
        pid_alive "$DIR/run/munged.pid" munged && nodes_idle; then
        log "already running (SLURM_CONF=$CONF)"
        return 0
    fi
    # Anything half-started from an earlier run of ours goes first.
    cmd_stop_daemons
    rm -rf "$DIR/state" "$DIR/spool" "$DIR/log" "$DIR/run"
    write_config
    start_munged
    log "starting slurmctld"
    slurmctld -i >>"$DIR/log/slurmctld.out" 2>&1 || {
        tail -n 20 "$DIR/log/slurmctld.log" >&2 || true
        die "slurmctld failed to start"
    }
    wait_for slurmctld 30 scontrol ping -Q
    local n
    for n in "${NODES[@]}"; do
        log "starting slurmd -N $n"
        mkdir -p "$DIR/spool/slurmd.$n"   # SlurmdSpoolDir has %n: slurmd does not create it
        slurmd -N "$n" >>"$DIR/log/slurmd.$n.out" 2>&1 || {
            tail -n 20 "$DIR/log/slurmd.$n.log" >&2 || true
            die "slurmd -N $n failed to start"
        }
    done
    local i
    for ((i = 0; i < START_TIMEOUT * 2; i++)); do
        nodes_idle && break
        sleep 0.5
    done
    if ! nodes_idle; then
        sinfo -N -l >&2 || true
        for n in "${NODES[@]}"; do tail -n 20 "$DIR/log/slurmd.$n.log" >&2 || true; done
        die "nodes ${NODES[*]} are not all idle after ${START_TIMEOUT}s"
    fi
    # The scheduler must also accept a job that uses every CPU of every node (a node that
    # registered fewer CPUs than configured refuses 2-task jobs although sinfo says idle).
    if ! wait_for_quietly 60 sbatch --test-only -N "${#NODES[@]}" --ntasks-per-node="$(cpu_count)" --wrap true; then
        sinfo -N -l >&2 || true
        scontrol show nodes >&2 || true
        tail -n 30 "$DIR/log/slurmctld.log" >&2 || true
        die "the scheduler does not accept a job on nodes ${NODES[*]}"
    fi
    log "up: nodes ${NODES[*]} on $HOST; export SLURM_CONF=$CONF"
}

cmd_stop_daemons() {
    local n
    for n in "${NODES[@]}"; do
        stop_daemon "$DIR/run/slurmd.$n.pid" slurmd
    done
    stop_daemon "$DIR/run/slurmd.pid" slurmd   # a single-node cluster of an older cluster.sh
    stop_daemon "$DIR/run/slurmctld.pid" slurmctld
    stop_daemon "$DIR/run/munged.pid" munged
}

cmd_stop() {
    if pid_alive "$DIR/run/slurmctld.pid" slurmctld && [[ -f $CONF ]]; then
        # Cancel what is left so slurmd ends the job processes itself.
        local jobs i
        jobs=$(squeue -h -o '%A' 2>/dev/null || true)
        if [[ -n $jobs ]]; then
            log "cancelling leftover jobs: $(echo "$jobs" | tr '\n' ' ')"
            # shellcheck disable=SC2086 # one job id per word
            scancel $jobs 2>/dev/null || true
            for ((i = 0; i < 60; i++)); do
                [[ -z $(squeue -h -o '%A' 2>/dev/null) ]] && break
                sleep 0.5
            done
        fi
    fi
    cmd_stop_daemons
}

cmd_status() {
    local d
    for d in munged slurmctld slurmd.n1 slurmd.n2; do
        if pid_alive "$DIR/run/$d.pid" "${d%%.*}"; then
            echo "$d: running (pid $(<"$DIR/run/$d.pid"))"
        else
            echo "$d: not running"
        fi
    done
    if [[ -f $CONF ]] && pid_alive "$DIR/run/slurmctld.pid" slurmctld; then
        sinfo -N -l
    fi
}

HOST=$(hostname -s)

case ${1:-} in
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    env) echo "export SLURM_CONF=$CONF" ;;
    *)
        echo "usage: $0 start|stop|status|env" >&2
        exit 2
        ;;
esac
