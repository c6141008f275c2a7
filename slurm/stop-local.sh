#!/usr/bin/env bash
# Stop the single-node SLURM that start-local.sh started, by PID (checking each PID is still the
# program we started: PIDs wrap). Idempotent; keeps config, state and logs for inspection.
set -uo pipefail

DIR=${TUNEBENCH_SLURM_DIR:-/tmp/tunebench-slurm}

stop() {
  local pidfile=$1 comm=$2 pid
  [[ -s $pidfile ]] || return 0
  pid=$(<"$pidfile")
  if [[ -r /proc/$pid/comm && $(</proc/"$pid"/comm) == "$comm"* ]]; then
    kill "$pid" 2>/dev/null
    for ((i = 0; i < 40; i++)); do [[ -d /proc/$pid ]] || break; sleep 0.25; done
    [[ -d /proc/$pid ]] && kill -9 "$pid" 2>/dev/null
    echo "stop-local: stopped $comm ($pid)" >&2
  fi
  rm -f "$pidfile"
}

stop "$DIR/run/slurmd.pid" slurmd
stop "$DIR/run/slurmctld.pid" slurmctld
stop "$DIR/run/slurmdbd.pid" slurmdbd
stop "$DIR/run/mariadbd.pid" mariadbd
if [[ -e $DIR/run/munged.ours ]]; then
  stop /run/munge/munged.pid munged
  rm -f "$DIR/run/munged.ours"
fi
exit 0
