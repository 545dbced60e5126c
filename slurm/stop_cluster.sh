#!/usr/bin/env bash
# Stops the one-node SLURM cluster that start_cluster.sh started: every daemon by its pid file, in the
# reverse order of their start. Running jobs are not waited for.
#
#   bash slurm/stop_cluster.sh            # stop; state (job ids, accounting, munge key) is kept
#   bash slurm/stop_cluster.sh --purge    # stop, then delete the state root and the /etc/slurm links
set -euo pipefail

R=${HARNESS_SLURM_ROOT:-/var/tmp/harness-slurm}
PURGE=0
case "${1:-}" in
  "") ;;
  --purge) PURGE=1 ;;
  *) echo "usage: $0 [--purge]" >&2; exit 2 ;;
esac

step() { printf '[stop_cluster] %s\n' "$*"; }

# Whether PID is a live (not zombie) process named COMM.
running() {  # running PID COMM
  [ -n "$1" ] && [ "$(cat "/proc/$1/comm" 2>/dev/null)" = "$2" ] \
    && [ "$(cut -d' ' -f3 "/proc/$1/stat" 2>/dev/null)" != Z ]
}

# SIGTERM, then SIGKILL after 20 s; a pid file naming no live COMM is only removed.
stop_daemon() {  # stop_daemon COMM PIDFILE
  local comm=$1 pidfile=$2 pid i
  pid=$(cat "$pidfile" 2>/dev/null || true)
  if ! running "$pid" "$comm"; then
    step "$comm: not running"
    rm -f "$pidfile"
    return
  fi
  step "$comm: stopping (pid $pid)"
  kill "$pid" 2>/dev/null || true
  for i in $(seq 1 200); do
    running "$pid" "$comm" || break
    sleep 0.1
  done
  if running "$pid" "$comm"; then
    step "$comm: still running after 20 s, killing (pid $pid)"
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$pidfile"
}

stop_daemon slurmd "$R/run/slurmd.pid"
stop_daemon slurmctld "$R/run/slurmctld.pid"
stop_daemon slurmdbd "$R/run/slurmdbd.pid"
stop_daemon mariadbd "$R/mysql/run/mariadbd.pid"
stop_daemon munged "$R/munge/run/munged.pid"

if [ $PURGE -eq 1 ]; then
  for f in slurm.conf slurmdbd.conf; do
    if [ "$(readlink "/etc/slurm/$f" 2>/dev/null)" = "$R/etc/$f" ]; then
      step "removing the link /etc/slurm/$f"
      rm -f "/etc/slurm/$f"
    fi
  done
  case "$R" in /|/var|/var/tmp|/tmp|"$HOME") echo "refusing to purge $R" >&2; exit 1 ;; esac
  step "purging $R"
  rm -rf "$R"
fi
step "stopped"
