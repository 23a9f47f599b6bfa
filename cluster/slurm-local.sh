#!/usr/bin/env bash
# cluster/slurm-local.sh: a one-node Slurm cluster on this machine, for tests and for
# trying the sbatch templates: munged, slurmctld and slurmd with their state, sockets,
# logs and ports under DIR (nothing in /etc), the node's CPUs and memory as found.
#   slurm-local.sh up DIR     start it; prints `export SLURM_CONF=DIR/slurm.conf`
#   slurm-local.sh down DIR   stop it (and every job on it)
# Needs root and Debian's slurm-wlm and munge (exits 77 without them).
set -euo pipefail
cmd=${1:-} dir=${2:-}
[ -n "$cmd" ] && [ -n "$dir" ] || { sed -n '2,8p' "$0"; exit 2; }
export SLURM_CONF=$dir/slurm.conf
case "$cmd" in
  up)
    for b in munged slurmctld slurmd sbatch srun scontrol; do
      command -v "$b" >/dev/null || { echo "slurm-local: $b not installed (apt-get install slurm-wlm munge)" >&2; exit 77; }
    done
    [ "$(id -u)" = 0 ] || { echo "slurm-local: needs root" >&2; exit 77; }
    mkdir -p "$dir"/{state,spool,log,munge}
    dir=$(readlink -f "$dir")
    export SLURM_CONF=$dir/slurm.conf
    [ -e "$dir/munge/key" ] || { dd if=/dev/urandom of="$dir/munge/key" bs=1024 count=1 status=none; chmod 400 "$dir/munge/key"; }
    munged -f --socket="$dir/munge/sock" --key-file="$dir/munge/key" --pid-file="$dir/munge/pid" \
      --log-file="$dir/munge/log" --seed-file="$dir/munge/seed"
    host=$(hostname)
    cpus=$(getconf _NPROCESSORS_ONLN) # not nproc: it answers OMP_NUM_THREADS
    mem=$(awk '/MemTotal/ { print int($2 / 1024 * 0.8) }' /proc/meminfo)
    # two ports below the ephemeral range (32768-), from the directory's name so that two
    # clusters on one machine do not collide, moved on while either is in use
    base=$(( 10000 + $(printf '%s' "$dir" | cksum | cut -d' ' -f1) % 20000 ))
    for _ in $(seq 1 100); do
      ss -Htan 2>/dev/null | awk -v a=":$base" -v b=":$((base + 1))" \
        '{ if (substr($4, length($4) - length(a) + 1) == a || substr($4, length($4) - length(b) + 1) == b) u = 1 } END { exit !u }' ||
        break
      base=$(( base + 2 > 32000 ? 10000 : base + 2 ))
    done
    cat >"$dir/slurm.conf" <<CONF
ClusterName=lslocal
SlurmctldHost=$host(127.0.0.1)
AuthType=auth/munge
AuthInfo=socket=$dir/munge/sock
CredType=cred/munge
SlurmUser=root
SlurmdUser=root
SlurmctldPort=$base
SlurmdPort=$((base + 1))
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=pmix
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
KillWait=30
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=local Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
CONF
    slurmctld -c
    slurmd
    for _ in $(seq 1 50); do
      sinfo -h -o %T 2>/dev/null | grep -q idle && { echo "export SLURM_CONF=$dir/slurm.conf"; exit 0; }
      sleep 0.2
    done
    echo "slurm-local: the node did not come up: $(tail -n 2 "$dir/log/slurmctld.log" "$dir/log/slurmd.log" | tr '\n' ' ')" >&2
    exit 1 ;;
  down)
    scancel --full -u root >/dev/null 2>&1 || true
    scontrol shutdown >/dev/null 2>&1 || true
    for p in slurmctld slurmd munge/pid; do
      f=$dir/$p; [ "$p" != munge/pid ] && f=$dir/$p.pid
      [ -f "$f" ] && kill "$(cat "$f")" 2>/dev/null || true
    done
    sleep 0.5 ;;
  *) sed -n '2,8p' "$0"; exit 2 ;;
esac
