#!/usr/bin/env bash
# Start a single-node SLURM on this machine: munge, a private MariaDB, slurmdbd, slurmctld, slurmd.
#
# Config, state, logs and pid files live under $TUNEBENCH_SLURM_DIR (default /tmp/tunebench-slurm).
# Idempotent: daemons that already run are left alone. Prints the line to source for the client
# environment (SLURM_CONF) and writes it to $TUNEBENCH_SLURM_DIR/env.sh.
#
# Why each non-default setting is here (Debian 12, slurm-wlm 22.05, no systemd, no cgroups):
# - accounting (slurmdbd + MariaDB): without sacct, submitit waits forever on a cancelled job;
# - DefMemPerCPU: otherwise one job takes the whole node's memory and jobs run one at a time;
# - the full `slurmd -C` topology on the NodeName line: otherwise the node is drained;
# - fast scheduler / cred_expire settings: a requeued job starts again within seconds.
set -euo pipefail

DIR=${TUNEBENCH_SLURM_DIR:-/tmp/tunebench-slurm}
DB_PORT=${TUNEBENCH_SLURM_DB_PORT:-3399}
CTLD_PORT=${TUNEBENCH_SLURM_PORT:-6917}   # slurmd uses +1, slurmdbd +2; not the defaults, to avoid a site SLURM
PACKAGES=(slurmctld slurmd slurm-client slurmdbd munge mariadb-server)
HOST=$(hostname -s)
export SLURM_CONF=$DIR/etc/slurm.conf

say() { echo "start-local: $*" >&2; }
die() { say "ERROR: $*"; exit 1; }

# A pid file names a live process of the expected program (PIDs wrap, so check /proc/PID/comm).
running() {
  local pidfile=$1 comm=$2 pid
  [[ -s $pidfile ]] || return 1
  pid=$(<"$pidfile")
  [[ -r /proc/$pid/comm ]] && [[ $(</proc/"$pid"/comm) == "$comm"* ]]
}

wait_for() {
  local what=$1 seconds=$2; shift 2
  for ((i = 0; i < seconds * 2; i++)); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.5
  done
  die "$what did not come up within ${seconds}s; logs are in $DIR/log"
}

install_packages() {
  local missing=()
  command -v slurmctld >/dev/null || missing+=(slurmctld)
  command -v slurmd >/dev/null || missing+=(slurmd)
  command -v sbatch >/dev/null || missing+=(slurm-client)
  command -v slurmdbd >/dev/null || missing+=(slurmdbd)
  command -v munged >/dev/null || missing+=(munge)
  command -v mariadbd >/dev/null || missing+=(mariadb-server)
  ((${#missing[@]} == 0)) && return 0
  [[ $(id -u) == 0 ]] || die "missing ${missing[*]}; run as root or: sudo apt-get install --no-install-recommends ${PACKAGES[*]}"
  command -v apt-get >/dev/null || die "missing ${missing[*]} and no apt-get; install SLURM 22.05+, munge and MariaDB yourself"
  say "installing ${missing[*]} (apt-get) ..."
  # Keep package scripts from starting daemons (there is no systemd here; we start our own).
  local policy=/usr/sbin/policy-rc.d placed=0
  if [[ ! -e $policy ]]; then printf '#!/bin/sh\nexit 101\n' >"$policy"; chmod +x "$policy"; placed=1; fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}" >"$DIR/log/apt.log" 2>&1 || {
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >>"$DIR/log/apt.log" 2>&1
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}" >>"$DIR/log/apt.log" 2>&1
  } || { ((placed)) && rm -f "$policy"; die "apt-get install failed; see $DIR/log/apt.log"; }
  ((placed)) && rm -f "$policy"
  return 0
}

start_munge() {
  if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then return 0; fi
  if [[ ! -s /etc/munge/munge.key ]]; then
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
  fi
  chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
  mkdir -p /run/munge /var/lib/munge /var/log/munge
  chown munge:munge /run/munge /var/lib/munge /var/log/munge
  runuser -u munge -- /usr/sbin/munged
  touch "$DIR/run/munged.ours"   # stop-local.sh stops munged only if we started it
  wait_for munged 10 bash -c 'munge -n | unmunge'
}

start_mariadb() {
  local sock=$DIR/mysql.sock
  if ! running "$DIR/run/mariadbd.pid" mariadbd; then
    if [[ ! -d $DIR/mysql/mysql ]]; then
      mariadb-install-db --user=root --datadir="$DIR/mysql" --auth-root-authentication-method=socket \
        >"$DIR/log/mariadb-install.log" 2>&1 || die "mariadb-install-db failed; see $DIR/log/mariadb-install.log"
    fi
    nohup mariadbd --user=root --datadir="$DIR/mysql" --socket="$sock" --port="$DB_PORT" \
      --bind-address=127.0.0.1 --pid-file="$DIR/run/mariadbd.pid" --skip-log-bin \
      --log-error="$DIR/log/mariadb.log" >/dev/null 2>&1 &
    wait_for MariaDB 60 mariadb --socket="$sock" -u root -e 'select 1'
  fi
  mariadb --socket="$sock" -u root <<SQL
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'slurm';
CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurm';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
SQL
}

write_configs() {
  local node
  node=$(slurmd -C | head -n 1)   # NodeName=... CPUs=... Boards=... ... RealMemory=...
  [[ $node == NodeName=* ]] || die "slurmd -C printed no node line: $node"
  cat >"$DIR/etc/slurm.conf" <<CONF
# Written by tunebench slurm/start-local.sh; single node, for tests and local use.
ClusterName=tunebench
SlurmctldHost=$HOST
SlurmUser=root
SlurmdUser=root
SlurmctldPort=$CTLD_PORT
SlurmdPort=$((CTLD_PORT + 1))
AuthType=auth/munge
CredType=cred/munge
AuthInfo=cred_expire=15
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=$((CTLD_PORT + 2))
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=2048
MailProg=/bin/true
SchedulerParameters=batch_sched_delay=0,sched_interval=5,bf_interval=5
ReturnToService=2
JobRequeue=1
MaxArraySize=10001
KillWait=10
$node State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
CONF
  cat >"$DIR/etc/slurmdbd.conf" <<CONF
AuthType=auth/munge
DbdHost=localhost
DbdPort=$((CTLD_PORT + 2))
SlurmUser=root
PidFile=$DIR/run/slurmdbd.pid
LogFile=$DIR/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=slurm
StorageLoc=slurm_acct_db
CONF
  chmod 600 "$DIR/etc/slurmdbd.conf"
}

node_ready() {
  local state
  state=$(sinfo -h -n "$HOST" -o %t 2>/dev/null) || return 1
  case $state in
    idle|mix|alloc) return 0 ;;
    down*|drain*|drng*|fail*) scontrol update nodename="$HOST" state=resume >/dev/null 2>&1; return 1 ;;
    *) return 1 ;;
  esac
}

main() {
  mkdir -p "$DIR"/{etc,state,spool,run,log}
  install_packages
  start_munge
  start_mariadb
  write_configs
  if ! running "$DIR/run/slurmdbd.pid" slurmdbd; then
    slurmdbd
    wait_for slurmdbd 60 sacctmgr -n list cluster
  fi
  sacctmgr -i -Q add cluster tunebench >/dev/null 2>&1 || true
  if ! running "$DIR/run/slurmctld.pid" slurmctld; then slurmctld; fi
  if ! running "$DIR/run/slurmd.pid" slurmd; then slurmd; fi
  wait_for "node $HOST (idle)" 60 node_ready
  echo "export SLURM_CONF=$SLURM_CONF" >"$DIR/env.sh"
  say "SLURM is up: node $HOST idle, cluster 'tunebench', logs in $DIR/log"
  echo "export SLURM_CONF=$SLURM_CONF"
}

main "$@"
