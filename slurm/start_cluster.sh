#!/usr/bin/env bash
# Starts the one-node SLURM cluster on this machine (with accounting, which submitit needs to read job
# states), or checks that it is up. Idempotent: a second run finds it healthy and exits 0 in seconds.
#
#   sudo bash slurm/start_cluster.sh        # state under /var/tmp/harness-slurm (HARNESS_SLURM_ROOT)
#   bash slurm/stop_cluster.sh [--purge]    # stop every daemon by pid; --purge deletes the state root
#
# Daemons (no systemd here, and policy-rc.d forbids service starts, so each is started by hand):
#   munged -> mariadbd (127.0.0.1:3307) -> slurmdbd (6819) -> slurmctld (6817) -> slurmd (6818)
# Clients find the config without SLURM_CONF: /etc/slurm/slurm.conf and slurmdbd.conf link to it.
set -euo pipefail

R=${HARNESS_SLURM_ROOT:-/var/tmp/harness-slurm}
NODE=$(hostname -s)
CLUSTER=localci
PACKAGES=(slurmctld slurmd slurm-client munge slurmdbd mariadb-server)
MUNGE_SOCKET=$R/munge/run/munge.socket.2
DB_SOCKET=$R/mysql/run/mysqld.sock
DB_PORT=3307
WAIT_S=${HARNESS_SLURM_WAIT_S:-90}
export SLURM_CONF=$R/etc/slurm.conf
RESTART=()  # daemons whose config changed while they ran

step() { printf '[start_cluster] %s\n' "$*"; }
die() { printf '[start_cluster] ERROR: %s\n' "$*" >&2; exit 1; }

# ----------------------------------------------------------------------------- packages

install_packages() {
  local missing=() p
  for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  if [ ${#missing[@]} -eq 0 ]; then step "packages: installed"; return; fi
  step "packages: installing ${missing[*]}"
  if apt-cache policy "${missing[@]}" 2>/dev/null | grep -q 'Candidate: (none)' \
     || ! apt-cache show "${missing[@]}" >/dev/null 2>&1; then
    step "packages: apt-get update (no candidate in the package lists)"
    apt-get update -qq || die "apt-get update failed"
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" \
    >"$R/log/apt.log" 2>&1 || die "apt-get install failed; read $R/log/apt.log"
}

# ----------------------------------------------------------------------------- daemons

# Whether PID is a live (not zombie) process named COMM.
running() {  # running PID COMM
  [ -n "$1" ] && [ "$(cat "/proc/$1/comm" 2>/dev/null)" = "$2" ] \
    && [ "$(cut -d' ' -f3 "/proc/$1/stat" 2>/dev/null)" != Z ]
}

# pid of a running daemon from its pid file, or nothing.
alive_pid() {  # alive_pid PIDFILE COMM
  local pid
  pid=$(cat "$1" 2>/dev/null || true)
  if running "$pid" "$2"; then echo "$pid"; fi
}

# Starts COMMAND unless COMM already runs from PIDFILE; waits until the pid file names a live COMM.
ensure_daemon() {  # ensure_daemon COMM PIDFILE LOGFILE COMMAND...
  local comm=$1 pidfile=$2 log=$3 pid i
  shift 3
  pid=$(alive_pid "$pidfile" "$comm")
  if [ -n "$pid" ] && [[ " ${RESTART[*]} " == *" $comm "* ]]; then
    step "$comm: config changed, restarting (pid $pid)"
    kill "$pid"
    for i in $(seq 1 100); do running "$pid" "$comm" || break; sleep 0.1; done
    pid=""
    rm -f "$pidfile"
  fi
  if [ -n "$pid" ]; then step "$comm: running (pid $pid)"; return; fi
  if [ -e "$pidfile" ]; then step "$comm: removing stale pid file $pidfile"; rm -f "$pidfile"; fi
  step "$comm: starting (log $log)"
  setsid "$@" </dev/null >>"$log.stdout" 2>&1 9>&- &  # 9>&-: the daemon must not hold the lock
  for i in $(seq 1 $((WAIT_S * 5))); do
    pid=$(alive_pid "$pidfile" "$comm")
    [ -n "$pid" ] && { step "$comm: up (pid $pid)"; return; }
    sleep 0.2
  done
  local logs=("$log")
  [ -s "$log.stdout" ] && logs+=("$log.stdout")
  tail -n 5 "${logs[@]}" 2>/dev/null | sed 's/^/    /' >&2 || true
  die "$comm did not come up within ${WAIT_S}s; read ${logs[*]}"
}

# Runs CHECK (a command) until it succeeds, or fails naming LOGFILE.
wait_for() {  # wait_for WHAT LOGFILE CHECK...
  local what=$1 log=$2 i
  shift 2
  for i in $(seq 1 $((WAIT_S * 2))); do
    "$@" >/dev/null 2>&1 && return
    sleep 0.5
  done
  die "$what not ready within ${WAIT_S}s; read $log"
}

# ----------------------------------------------------------------------------- munge, MariaDB

start_munge() {
  local key=$R/munge/etc/munge.key
  if [ ! -s "$key" ]; then
    step "munge: creating key $key"
    mungekey --create --keyfile="$key" >/dev/null
    chmod 600 "$key"
  fi
  ensure_daemon munged "$R/munge/run/munged.pid" "$R/log/munged.log" \
    munged --socket="$MUNGE_SOCKET" --key-file="$key" --log-file="$R/log/munged.log" \
    --pid-file="$R/munge/run/munged.pid" --seed-file="$R/munge/lib/munged.seed"
  wait_for "munge" "$R/log/munged.log" bash -c "munge -S '$MUNGE_SOCKET' -n | unmunge -S '$MUNGE_SOCKET'"
}

db() { mariadb --no-defaults --socket="$DB_SOCKET" -uroot "$@"; }

start_mariadb() {
  local data=$R/mysql/data pass
  if [ ! -d "$data/mysql" ]; then
    step "mariadb: creating data dir $data"
    mariadb-install-db --no-defaults --datadir="$data" --user=root --skip-test-db \
      >"$R/log/mariadb-install.log" 2>&1 || die "mariadb-install-db failed; read $R/log/mariadb-install.log"
  fi
  ensure_daemon mariadbd "$R/mysql/run/mariadbd.pid" "$R/log/mariadb.log" \
    mariadbd --no-defaults --datadir="$data" --socket="$DB_SOCKET" --port=$DB_PORT \
    --bind-address=127.0.0.1 --user=root --pid-file="$R/mysql/run/mariadbd.pid" \
    --log-error="$R/log/mariadb.log"
  wait_for "mariadb" "$R/log/mariadb.log" db -e "SELECT 1"
  pass=$(cat "$R/etc/dbpass")
  db -e "CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$pass';
         CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$pass';
         GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
         GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';" \
    || die "mariadb: could not create the slurm user; read $R/log/mariadb.log"
}

# ----------------------------------------------------------------------------- config

# The node line: full topology from `slurmd -C` (else slurmd "reconfigured socket/core boundaries"),
# RealMemory 95% of what it reports (slurmd drains a node that has less than RealMemory).
node_line() {
  local c mem
  c=$(slurmd -C | head -n 1)
  mem=$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$c")
  echo "NodeName=$NODE NodeAddr=127.0.0.1 $(grep -o '\(CPUs\|Boards\|SocketsPerBoard\|CoresPerSocket\|ThreadsPerCore\)=[0-9]*' <<<"$c" | tr '\n' ' ')RealMemory=$((mem * 95 / 100)) State=UNKNOWN"
}

slurm_conf() {
  cat <<EOF
# Generated by slurm/start_cluster.sh: the one-node cluster of this machine. Edits are overwritten.
ClusterName=$CLUSTER
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
SlurmdUser=root
SlurmctldPort=6817
SlurmdPort=6818
AuthType=auth/munge
CredType=cred/munge
# cred_expire=10 (minimum 5): a requeued job runs again in ~10 s, not ~2 min
AuthInfo=socket=$MUNGE_SOCKET,cred_expire=10
StateSaveLocation=$R/state/ctld
SlurmdSpoolDir=$R/state/d
SlurmctldPidFile=$R/run/slurmctld.pid
SlurmdPidFile=$R/run/slurmd.pid
SlurmctldLogFile=$R/log/slurmctld.log
SlurmdLogFile=$R/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
# accounting: submitit reads job states with sacct
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=6819
AccountingStoragePass=$MUNGE_SOCKET
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1024
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2,bf_interval=2
# batch jobs may be requeued (submitit's Checkpointable requeues on preemption / time limit)
JobRequeue=1
KillWait=5
MpiDefault=none
MailProg=/bin/true
SwitchType=switch/none
ReturnToService=2
$(node_line)
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
}

slurmdbd_conf() {
  cat <<EOF
# Generated by slurm/start_cluster.sh. Edits are overwritten.
AuthType=auth/munge
AuthInfo=socket=$MUNGE_SOCKET
DbdHost=localhost
DbdPort=6819
SlurmUser=root
LogFile=$R/log/slurmdbd.log
PidFile=$R/run/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=$(cat "$R/etc/dbpass")
StorageLoc=slurm_acct_db
EOF
}

# Writes CONTENT to FILE if it changed; marks DAEMONS for a restart when it did.
write_conf() {  # write_conf FILE CONTENT DAEMON...
  local file=$1 new=$2
  shift 2
  if [ -f "$file" ] && [ "$(cat "$file")" = "$new" ]; then return; fi
  [ -f "$file" ] && RESTART+=("$@")
  step "config: writing $file"
  (umask 077 && printf '%s\n' "$new" >"$file")
}

# /etc/slurm/NAME -> the generated file, so that sinfo, sbatch, sacct and jobs need no SLURM_CONF.
link_conf() {  # link_conf NAME
  local etc=/etc/slurm/$1
  [ "$(readlink "$etc" 2>/dev/null)" = "$R/etc/$1" ] && return
  if [ -e "$etc" ] && [ ! -L "$etc" ]; then
    step "config: keeping the existing $etc as $etc.orig"
    mv "$etc" "$etc.orig"
  fi
  step "config: linking $etc -> $R/etc/$1"
  ln -sfn "$R/etc/$1" "$etc"
}

write_configs() {
  [ -s "$R/etc/dbpass" ] || (umask 077 && head -c 18 /dev/urandom | base64 | tr -d '/+=' >"$R/etc/dbpass")
  local conf dbd_conf
  conf=$(slurm_conf)
  dbd_conf=$(slurmdbd_conf)
  write_conf "$R/etc/slurm.conf" "$conf" slurmctld slurmd
  chmod 644 "$R/etc/slurm.conf"
  write_conf "$R/etc/slurmdbd.conf" "$dbd_conf" slurmdbd
  chmod 600 "$R/etc/slurmdbd.conf"
  mkdir -p /etc/slurm
  link_conf slurm.conf
  link_conf slurmdbd.conf
}

# ----------------------------------------------------------------------------- slurm

start_slurm() {
  ensure_daemon slurmdbd "$R/run/slurmdbd.pid" "$R/log/slurmdbd.log" slurmdbd
  wait_for "slurmdbd (sacctmgr)" "$R/log/slurmdbd.log" sacctmgr -n show cluster
  if ! sacctmgr -n -P show cluster format=cluster | grep -qx "$CLUSTER"; then
    step "accounting: adding cluster $CLUSTER"
    sacctmgr -i add cluster "$CLUSTER" >/dev/null || die "sacctmgr add cluster failed; read $R/log/slurmdbd.log"
  fi
  ensure_daemon slurmctld "$R/run/slurmctld.pid" "$R/log/slurmctld.log" slurmctld
  ensure_daemon slurmd "$R/run/slurmd.pid" "$R/log/slurmd.log" slurmd
}

node_state() { sinfo -h -n "$NODE" -o %T 2>/dev/null | head -n 1; }

# Waits for the node to be usable; resumes it once if an earlier run left it DOWN or DRAINED.
wait_node() {
  local i state resumed=0
  for i in $(seq 1 $((WAIT_S * 2))); do
    state=$(node_state)
    case "$state" in
      idle | mixed | allocated | completing) step "node $NODE: $state"; return ;;
      down* | drain* | fail*)
        if [ $resumed -eq 0 ]; then
          step "node $NODE: $state, resuming"
          scontrol update NodeName="$NODE" State=RESUME || true
          resumed=1
        fi ;;
    esac
    sleep 0.5
  done
  die "node $NODE is '${state:-unreachable}' after ${WAIT_S}s; read $R/log/slurmd.log and $R/log/slurmctld.log"
}

main() {
  [ "$(id -u)" -eq 0 ] || die "run as root (it installs packages and runs the daemons as root)"
  mkdir -p "$R"/{etc,run,log,state/ctld,state/d,munge/etc,munge/run,munge/lib,mysql/run}
  chmod 700 "$R/munge/etc"
  exec 9>"$R/start.lock"  # two concurrent runs (test.sh, a test fixture) would start daemons twice
  flock -w 600 9 || die "another start_cluster.sh holds $R/start.lock"
  step "state root: $R"
  install_packages
  write_configs
  start_munge
  start_mariadb
  start_slurm
  wait_node
  wait_for "sacct" "$R/log/slurmdbd.log" sacct -n -X -S now-1minutes
  step "sacct: answers"
  step "cluster $CLUSTER ready: partition debug, node $NODE (logs in $R/log)"
}

main "$@"
