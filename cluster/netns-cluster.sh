#!/usr/bin/env bash
# cluster/netns-cluster.sh: N test "hosts" on one Linux machine, for multi-host MPI tests
# without a cluster. Each host is a network namespace (lsh0 .. lsh<N-1>) with its own
# address 10.77.0.<k+1>/24 on a veth joined to a bridge (lsbr0) in the root namespace, its
# own hostname (a UTS namespace per launched process) and /etc/hosts (ip netns exec binds
# /etc/netns/<host>/hosts), so Open MPI sees N nodes talking TCP. The file system is shared
# (the output file is written by MPI-IO from every host, as on a cluster's shared FS); with
# --hide DIR, DIR is hidden on every host but lsh0 (an empty directory bound over it), to
# check that only rank 0 touches the model.
#
#   netns-cluster.sh up N [--hide DIR]   create the hosts (tearing down leftovers first)
#   netns-cluster.sh down                remove every host, the bridge and /etc/netns/lsh*
#   netns-cluster.sh mpirun N ARGS...    mpirun from lsh0 over lsh0..lsh<N-1>, one rank each,
#                                        btl/oob tcp on 10.77.0.0/24, this script as the
#                                        rsh agent, TCP keepalive of the daemons' links at
#                                        1 + 1 x 3 s (Open MPI's default, 300 + 20 x 9 s,
#                                        keeps mpirun waiting 8 minutes for a lost host)
#   netns-cluster.sh cut K | heal K      take host K's link down / up (a lost link)
#   netns-cluster.sh pids K              the processes running on host K
#   netns-cluster.sh agent HOST CMD...   (Open MPI's plm_rsh_agent: runs CMD on HOST)
# Needs root and iproute2 (ip netns), util-linux (unshare, mount). A test that cannot
# create namespaces here should report itself skipped: `up` exits 77 then.
set -euo pipefail
self=$(readlink -f "$0")
state=/run/layersweep-netns
prefix=lsh
bridge=lsbr0

# host script: run the shell command line `script` on host (its own UTS namespace, and
# with --hide a mount namespace where the hidden directory is empty, on hosts > 0). An rsh
# agent gets the remote command as words of one shell line, as rsh and ssh do.
enter() {
  local host=$1 script=$2
  local hide=""
  [ -f "$state/hide" ] && hide=$(cat "$state/hide")
  local setup="hostname $host"
  if [ -n "$hide" ] && [ "$host" != "${prefix}0" ]; then
    setup="$setup && mount --bind $state/empty $(printf %q "$hide")"
    exec ip netns exec "$host" unshare --uts --mount --propagation private sh -c "$setup && $script"
  fi
  exec ip netns exec "$host" unshare --uts sh -c "$setup && $script"
}

down() {
  for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep "^${prefix}[0-9]*$" || true); do
    ip netns pids "$ns" 2>/dev/null | xargs -r kill -9 2>/dev/null || true
    ip netns del "$ns" 2>/dev/null || true
    rm -rf "/etc/netns/$ns"
  done
  for v in $(ip -o link show 2>/dev/null | sed -n "s/^[0-9]*: \(lsv[0-9]*\)@.*/\1/p"); do
    ip link del "$v" 2>/dev/null || true
  done
  ip link del "$bridge" 2>/dev/null || true
  rm -rf "$state"
}

up() {
  local n=$1; shift
  local hide=""
  if [ "${1:-}" = --hide ]; then hide=$(readlink -f "$2"); fi
  [ "$(id -u)" = 0 ] || { echo "netns-cluster: needs root (ip netns)" >&2; exit 77; }
  command -v ip >/dev/null && command -v unshare >/dev/null ||
    { echo "netns-cluster: needs iproute2 and util-linux" >&2; exit 77; }
  down
  if ! ip link add "$bridge" type bridge 2>/dev/null; then
    echo "netns-cluster: cannot create a bridge here (no CAP_NET_ADMIN?)" >&2
    exit 77
  fi
  ip link set "$bridge" up
  mkdir -p "$state/empty"
  [ -n "$hide" ] && printf '%s' "$hide" >"$state/hide"
  local hosts=""
  for ((k = 0; k < n; k++)); do hosts+="10.77.0.$((k + 1)) ${prefix}$k"$'\n'; done
  for ((k = 0; k < n; k++)); do
    local ns=${prefix}$k
    ip netns add "$ns" || { echo "netns-cluster: ip netns add failed" >&2; down; exit 77; }
    ip link add "lsv$k" type veth peer name eth0 netns "$ns"
    ip link set "lsv$k" master "$bridge" up
    ip -n "$ns" addr add "10.77.0.$((k + 1))/24" dev eth0
    ip -n "$ns" link set eth0 up
    ip -n "$ns" link set lo up
    mkdir -p "/etc/netns/$ns"
    printf '127.0.0.1 localhost\n%s' "$hosts" >"/etc/netns/$ns/hosts"
  done
  echo "$n" >"$state/n"
}

case "${1:-}" in
  up) shift; up "$@" ;;
  down) down ;;
  agent) shift; host=$1; shift; enter "$host" "$*" ;;
  cut) ip link set "lsv$2" down ;;
  heal) ip link set "lsv$2" up ;;
  pids) ip netns pids "${prefix}$2" ;;
  mpirun)
    shift
    n=$1; shift
    hosts=""
    for ((k = 0; k < n; k++)); do hosts+="${hosts:+,}${prefix}$k:1"; done
    args=$(printf ' %q' "$@")
    enter "${prefix}0" "exec mpirun --host $hosts --mca plm_rsh_agent '$self agent' \
      --mca btl tcp,self --mca btl_tcp_if_include 10.77.0.0/24 --mca oob_tcp_if_include 10.77.0.0/24 \
      --mca plm_rsh_no_tree_spawn 1 --mca routed direct \
      --mca oob_tcp_keepalive_time 1 --mca oob_tcp_keepalive_intvl 1 --mca oob_tcp_keepalive_probes 3$args" ;;
  *) sed -n '2,22p' "$self"; exit 2 ;;
esac
