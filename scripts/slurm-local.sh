#!/usr/bin/env bash
# A one-node SLURM cluster on this machine, for the tests marked `slurm` (and for trying the SLURM launcher):
#   scripts/slurm-local.sh start    install what is missing (Debian, as root), configure, start, wait for the node
#   scripts/slurm-local.sh stop     stop slurmd, slurmctld and munged by their pid files
#   scripts/slurm-local.sh status   the daemons and `sinfo`
# Idempotent: `start` on a running cluster only checks it. The node is this host with all its CPUs, in one
# partition `debug`; no accounting (submitit works without sacct: it waits for each job's result file).
set -euo pipefail

STATE=${SLURM_LOCAL_STATE:-/var/tmp/slurm-local}
CONF=/etc/slurm/slurm.conf   # where sbatch, srun and scontrol look, also inside the jobs
NODE=$(hostname -s)
MUNGE_PID=/run/munge/munged.pid
CTLD_PID=$STATE/slurmctld.pid
SLURMD_PID=$STATE/slurmd.pid

die() { echo "slurm-local: $*" >&2; exit 1; }

running() {  # running <pid file>: the process it names is alive
  [[ -s $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null
}

install_packages() {
  local missing=()
  command -v munged >/dev/null || missing+=(munge)
  command -v slurmctld >/dev/null || missing+=(slurmctld)
  command -v slurmd >/dev/null || missing+=(slurmd)
  command -v sbatch >/dev/null || missing+=(slurm-client)
  ((${#missing[@]} == 0)) && return
  echo "slurm-local: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
    || { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; }
}

write_conf() {
  local cpus memory
  cpus=$(nproc)
  memory=$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)   # MB, leaving some to the system
  mkdir -p "$STATE/ctld" "$STATE/d" /etc/slurm
  cat >"$CONF" <<EOF
# Written by scripts/slurm-local.sh: a one-node cluster on this host.
ClusterName=local
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
# A requeued job waits cred_expire + 1 s before it starts again (SLURM's default: 120 s).
AuthInfo=cred_expire=5
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/d
SlurmctldPidFile=$CTLD_PID
SlurmdPidFile=$SLURMD_PID
SlurmctldLogFile=$STATE/slurmctld.log
SlurmdLogFile=$STATE/slurmd.log
# No cgroups needed: processes are tracked by parent, tasks are not bound.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
# Look at pending jobs every 2 s (default 60): a requeued job starts as soon as it may.
SchedulerParameters=sched_interval=2,bf_interval=2
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
ReturnToService=2
MinJobAge=300
KillWait=30
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$memory State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
}

start() {
  [[ $(id -u) == 0 ]] || die "start needs root (it installs packages and starts daemons)"
  install_packages
  if ! running "$MUNGE_PID"; then
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    chown munge:munge /run/munge /var/log/munge /var/lib/munge
    [[ -s /etc/munge/munge.key ]] || { /usr/sbin/mungekey --create 2>/dev/null || create-munge-key -f; }
    chown munge:munge /etc/munge/munge.key
    runuser -u munge -- /usr/sbin/munged
  fi
  if ! running "$CTLD_PID" || ! running "$SLURMD_PID"; then
    write_conf
    running "$CTLD_PID" || /usr/sbin/slurmctld -c   # -c: no saved jobs from an earlier cluster
    running "$SLURMD_PID" || /usr/sbin/slurmd
  fi
  for _ in $(seq 60); do
    if [[ $(sinfo -h -n "$NODE" -o %t 2>/dev/null) == idle* ]]; then
      echo "slurm-local: node $NODE idle ($(nproc) CPUs, partition debug)"
      return
    fi
    [[ $(sinfo -h -n "$NODE" -o %t 2>/dev/null) == down* ]] && scontrol update nodename="$NODE" state=resume
    sleep 1
  done
  sinfo || true
  die "the node did not become idle in 60 s; logs: $STATE/slurmctld.log, $STATE/slurmd.log"
}

stop_one() {  # stop_one <name> <pid file>
  running "$2" || return 0
  local pid
  pid=$(cat "$2")
  kill "$pid"
  for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
  echo "slurm-local: $1 ($pid) killed after 10 s"
}

stop() {
  # Jobs first: their processes would outlive slurmd.
  if running "$CTLD_PID"; then
    scancel --full --quiet --partition=debug 2>/dev/null || true
  fi
  stop_one slurmd "$SLURMD_PID"
  stop_one slurmctld "$CTLD_PID"
  stop_one munged "$MUNGE_PID"
  echo "slurm-local: stopped"
}

status() {
  local name file code=0
  for name in munged:$MUNGE_PID slurmctld:$CTLD_PID slurmd:$SLURMD_PID; do
    file=${name#*:}
    if running "$file"; then echo "${name%%:*}: running ($(cat "$file"))"; else echo "${name%%:*}: stopped"; code=3; fi
  done
  ((code == 0)) && sinfo
  return $code
}

case ${1:-} in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) die "usage: $0 start|stop|status" ;;
esac
