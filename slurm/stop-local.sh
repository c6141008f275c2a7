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

# Jobs still running when the controller stops come back as RUNNING at the next start and hold the node
# until their time limit (a test's requeued job did: the next start waited 2 minutes for it). So let them
# end (up to TUNEBENCH_SLURM_DRAIN seconds), then cancel the rest, before the daemons go.
drain() {
  export SLURM_CONF=$DIR/etc/slurm.conf
  local wait=${TUNEBENCH_SLURM_DRAIN:-30} jobs i
  [[ -s $DIR/run/slurmctld.pid ]] && command -v squeue >/dev/null || return 0
  for ((i = 0; i < wait * 2; i++)); do
    jobs=$(squeue -h -o %A 2>/dev/null) || return 0
    [[ -z $jobs ]] && return 0
    sleep 0.5
  done
  echo "stop-local: cancelling jobs still in the queue after ${wait}s: $(echo $jobs)" >&2
  scancel $jobs 2>/dev/null
  for ((i = 0; i < 60; i++)); do [[ -z $(squeue -h -o %A 2>/dev/null) ]] && return 0; sleep 0.5; done
}

drain
stop "$DIR/run/slurmd.pid" slurmd
stop "$DIR/run/slurmctld.pid" slurmctld
stop "$DIR/run/slurmdbd.pid" slurmdbd
stop "$DIR/run/mariadbd.pid" mariadbd
if [[ -e $DIR/run/munged.ours ]]; then
  stop /run/munge/munged.pid munged
  rm -f "$DIR/run/munged.ours"
fi
exit 0
