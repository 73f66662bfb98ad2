#!/usr/bin/env bash
# A one-node SLURM cluster on this machine, for tests and for trying the SLURM launcher by hand.
#
#   bash scripts/slurm_cluster.sh up DIR     # install (as root, with apt-get) if missing, start, wait
#   source DIR/env.sh                        # SLURM_CONF and PATH (with the sacct stand-in) for clients
#   bash scripts/slurm_cluster.sh down DIR   # stop the daemons it started, by their PIDs
#
# Everything lives in DIR: munge key and socket, slurm.conf, state, spool, logs, PID files; free
# ports are chosen at `up`, so several clusters (one per pytest worker) run side by side. No
# accounting database runs, so `sacct` (which submitit asks for a job's state) is a stand-in in
# DIR/bin that answers from `squeue -t all`; MinJobAge keeps finished jobs listed for an hour.
# Exit status 3 means "cannot run here" (not root and SLURM missing, no apt-get): the message says why.
set -euo pipefail

PACKAGES=(slurmctld slurmd slurm-client munge)

die() { echo "slurm_cluster: $*" >&2; exit 1; }
cannot() { echo "slurm_cluster: cannot run here: $*" >&2; exit 3; }

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

install() {
    # one install at a time (two pytest workers may start a cluster each); the others then find it
    exec 9>"${TMPDIR:-/tmp}/slurm_cluster.install.lock"
    flock 9
    local missing=()
    for binary in slurmctld slurmd sbatch munged; do
        command -v "$binary" >/dev/null || missing+=("$binary")
    done
    if [ ${#missing[@]} -eq 0 ]; then
        exec 9>&-
        return 0
    fi
    [ "$(id -u)" -eq 0 ] || cannot "${missing[*]} not installed and not root (apt-get install ${PACKAGES[*]})"
    command -v apt-get >/dev/null || cannot "${missing[*]} not installed and no apt-get"
    echo "slurm_cluster: installing ${PACKAGES[*]} with apt-get" >&2
    local apt=(apt-get -y -q -o DPkg::Lock::Timeout=300)
    DEBIAN_FRONTEND=noninteractive "${apt[@]}" install --no-install-recommends "${PACKAGES[@]}" >&2 \
        || { "${apt[@]}" update >&2 && DEBIAN_FRONTEND=noninteractive "${apt[@]}" install --no-install-recommends "${PACKAGES[@]}" >&2; } \
        || cannot "apt-get install ${PACKAGES[*]} failed"
    exec 9>&-
}

write_conf() {
    local dir=$1 node cpus memory
    node=$(hostname -s)
    cpus=$(nproc)
    memory=$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)
    cat >"$dir/slurm.conf" <<EOF
ClusterName=detection
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort=$(free_port)
SlurmdPort=$(free_port)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# cred_expire: a requeued job may start again after 10 s instead of 120 s
AuthInfo=socket=$dir/munge/munge.socket,cred_expire=10
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SwitchType=switch/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SchedulerParameters=bf_interval=1,sched_interval=2
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
ReturnToService=2
MinJobAge=3600
KillWait=30
InactiveLimit=0
NodeName=$node NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$memory State=UNKNOWN
PartitionName=debug Nodes=$node Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
}

write_sacct() {
    local dir=$1
    mkdir -p "$dir/bin"
    # submitit runs `sacct -o JobID,State,NodeList --parsable2 -j ID [-j ID ...]`
    cat >"$dir/bin/sacct" <<'EOF'
#!/usr/bin/env bash
# sacct stand-in for a cluster without accounting: job states from squeue (finished jobs stay
# listed for MinJobAge). Only what submitit asks: -o JobID,State,NodeList --parsable2 -j ID ...
ids=()
while [ $# -gt 0 ]; do
    case $1 in
        -j) ids+=("$2"); shift 2 ;;
        -j*) ids+=("${1#-j}"); shift ;;
        *) shift ;;
    esac
done
echo "JobID|State|NodeList"
[ ${#ids[@]} -eq 0 ] && exit 0
IFS=,; squeue -h -t all -j "${ids[*]}" -o "%i|%T|%N" 2>/dev/null || true
EOF
    chmod 755 "$dir/bin/sacct"
    cat >"$dir/env.sh" <<EOF
export SLURM_CONF=$dir/slurm.conf
export PATH=$dir/bin:\$PATH
EOF
}

start_munge() {
    local dir=$1
    mkdir -p "$dir/munge"
    chmod 755 "$dir/munge"  # munged refuses a socket folder that others may write to
    dd if=/dev/urandom of="$dir/munge/munge.key" bs=1024 count=1 status=none
    chmod 400 "$dir/munge/munge.key"
    munged --force --key-file="$dir/munge/munge.key" --socket="$dir/munge/munge.socket" \
        --pid-file="$dir/munge/munged.pid" --log-file="$dir/munge/munged.log" \
        --seed-file="$dir/munge/munged.seed" \
        || die "munged did not start; see $dir/munge/munged.log"
}

wait_for_node() {
    local dir=$1
    for _ in $(seq 1 60); do
        if SLURM_CONF=$dir/slurm.conf sinfo -h -o %T 2>/dev/null | grep -qx "idle"; then
            return 0
        fi
        sleep 0.5
    done
    die "the node did not become idle in 30 s; see $dir/log/"
}

up() {
    local dir=$1
    install
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    chmod 755 "$dir"
    mkdir -p "$dir/state" "$dir/spool" "$dir/log"
    write_conf "$dir"
    write_sacct "$dir"
    start_munge "$dir"
    slurmctld -f "$dir/slurm.conf" -c -i || die "slurmctld did not start; see $dir/log/slurmctld.log"
    slurmd -f "$dir/slurm.conf" -N "$(hostname -s)" || die "slurmd did not start; see $dir/log/slurmd.log"
    wait_for_node "$dir"
    echo "slurm_cluster: up in $dir ($(SLURM_CONF=$dir/slurm.conf sinfo -V)); source $dir/env.sh" >&2
}

stop_pid() {
    local pidfile=$1 pid
    [ -f "$pidfile" ] || return 0
    pid=$(cat "$pidfile")
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
}

down() {
    local dir=$1
    [ -d "$dir" ] || die "no cluster folder $dir"
    if [ -f "$dir/slurm.conf" ] && [ -f "$dir/slurmctld.pid" ]; then
        # end the jobs first, so no job step outlives its slurmd
        SLURM_CONF=$dir/slurm.conf scancel --full --quiet --state=RUNNING --state=PENDING 2>/dev/null || true
    fi
    stop_pid "$dir/slurmd.pid"
    stop_pid "$dir/slurmctld.pid"
    stop_pid "$dir/munge/munged.pid"
}

case ${1:-} in
    up) [ $# -eq 2 ] || die "usage: $0 up DIR"; up "$2" ;;
    down) [ $# -eq 2 ] || die "usage: $0 down DIR"; down "$2" ;;
    *) die "usage: $0 up|down DIR" ;;
esac
