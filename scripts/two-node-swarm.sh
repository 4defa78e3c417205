#!/usr/bin/env bash
# A real two-node Docker swarm on this one machine, apart from the system engine:
#
#   root namespace ── veth ──┐            registry on 10.201.0.1:5001 (both nodes pull from it)
#                            │ bridge in namespace deployer-swnet (its own, empty iptables)
#   deployer-sw1 (10.201.0.11) ┤  dockerd "node 1": swarm manager, socket $RUN/node1.sock
#   deployer-sw2 (10.201.0.12) ┘  dockerd "node 2": worker,        socket $RUN/node2.sock
#
# Each dockerd is private (own --data-root, --exec-root, --pidfile, unix socket, its own
# containerd), started with `nsenter --net=…` (not `ip netns exec`, which remounts /sys and
# dockerd dies with "Devices cgroup isn't mounted"). The bridge lives in its own namespace so
# the root namespace's iptables (FORWARD DROP, bridge-nf-call-iptables) never see node-to-node
# traffic: nothing of the system engine, its swarm or its firewall is touched.
#
#   two-node-swarm.sh up              build what is missing (idempotent), print the environment
#   two-node-swarm.sh down            tear everything down, also a half-made setup (idempotent)
#   two-node-swarm.sh status          what exists and answers; exit 1 when not complete
#   two-node-swarm.sh stop-node N     stop node N's dockerd (a node lost); start-node N brings it back
#   two-node-swarm.sh env             the variables tests and people use (DOCKER_HOST of the manager …)
#
# Root only. Needs iproute2 (ip netns), util-linux (nsenter), docker.io, docker-registry.
set -euo pipefail

RUN=${DEPLOYER_SWARM2_RUN:-/run/deployer-swarm2}
DATA=${DEPLOYER_SWARM2_DATA:-/var/lib/deployer-swarm2}
NET_NS=deployer-swnet
NODE_NS=(deployer-sw1 deployer-sw2)
SUBNET_PREFIX=10.201.0
HOST_ADDR=$SUBNET_PREFIX.1
NODE_ADDR=("$SUBNET_PREFIX.11" "$SUBNET_PREFIX.12")
REGISTRY_ADDR=$HOST_ADDR:5001
DOCKER=/usr/bin/docker
HOST_LINK=dsw0

log() { echo "two-node-swarm: $*" >&2; }

node_sock() { echo "$RUN/node$1.sock"; }
node_docker() { local n=$1; shift; timeout 20 "$DOCKER" -H "unix://$(node_sock "$n")" "$@"; }
node_answers() { [ -S "$(node_sock "$1")" ] && node_docker "$1" info >/dev/null 2>&1; }
registry_answers() { curl -fs -o /dev/null --max-time 2 "http://$REGISTRY_ADDR/v2/"; }
ns_exists() { [ -e "/var/run/netns/$1" ]; }
pid_alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

# shellcheck source=scripts/wait-until.sh
. "$(dirname "${BASH_SOURCE[0]}")/wait-until.sh"

need_tools() {
  local need=()
  command -v ip >/dev/null || need+=(iproute2)
  command -v nsenter >/dev/null || need+=(util-linux)
  command -v curl >/dev/null || need+=(curl)
  [ -x /usr/sbin/dockerd ] || need+=(docker.io)
  [ -x /usr/bin/docker-registry ] || need+=(docker-registry)
  if [ ${#need[@]} -gt 0 ]; then
    log "installing ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  fi
}

# -- network ---------------------------------------------------------------------

make_network() {
  ns_exists "$NET_NS" || ip netns add "$NET_NS"
  ip -n "$NET_NS" link set lo up
  ip -n "$NET_NS" link show br0 >/dev/null 2>&1 || ip -n "$NET_NS" link add br0 type bridge
  ip -n "$NET_NS" link set br0 up
  if ! ip link show "$HOST_LINK" >/dev/null 2>&1; then
    ip link add "$HOST_LINK" type veth peer name host netns "$NET_NS"
  fi
  ip -n "$NET_NS" link set host master br0 up
  ip addr replace "$HOST_ADDR/24" dev "$HOST_LINK"
  ip link set "$HOST_LINK" up
  local i
  for i in 0 1; do
    local ns=${NODE_NS[$i]} port="node$((i + 1))"
    ns_exists "$ns" || ip netns add "$ns"
    ip -n "$ns" link set lo up
    if ! ip -n "$ns" link show eth0 >/dev/null 2>&1; then
      ip -n "$NET_NS" link del "$port" 2>/dev/null || true
      ip -n "$NET_NS" link add "$port" type veth peer name eth0 netns "$ns"
    fi
    ip -n "$NET_NS" link set "$port" master br0 up
    ip -n "$ns" addr replace "${NODE_ADDR[$i]}/24" dev eth0
    ip -n "$ns" link set eth0 up
    ip -n "$ns" route replace default via "$HOST_ADDR" dev eth0
  done
}

remove_network() {
  ip link del "$HOST_LINK" 2>/dev/null || true
  local ns
  for ns in "${NODE_NS[@]}" "$NET_NS"; do
    ns_exists "$ns" || continue
    kill_namespace_processes "$ns"
    ip netns del "$ns" 2>/dev/null || true
  done
}

kill_namespace_processes() {  # only processes inside the namespace this script made
  local pids
  pids=$(ip netns pids "$1" 2>/dev/null || true)
  [ -n "$pids" ] || return 0
  log "stopping processes left in $1: $(echo $pids)"
  kill $pids 2>/dev/null || true
  sleep 1
  pids=$(ip netns pids "$1" 2>/dev/null || true)
  [ -z "$pids" ] || kill -9 $pids 2>/dev/null || true
}

# -- registry --------------------------------------------------------------------

start_registry() {
  registry_answers && return 0
  mkdir -p "$RUN" "$DATA/registry"
  cat >"$RUN/registry.yml" <<EOF
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $DATA/registry
  delete:
    enabled: true
http:
  addr: $REGISTRY_ADDR
EOF
  log "starting docker-registry on $REGISTRY_ADDR"
  setsid /usr/bin/docker-registry serve "$RUN/registry.yml" >>"$RUN/registry.log" 2>&1 </dev/null 9>&- &
  echo $! >"$RUN/registry.pid"
  wait_until 30 docker-registry registry_answers || { tail -n 20 "$RUN/registry.log" >&2; return 1; }
}

stop_registry() {
  stop_pid "$RUN/registry.pid" registry
}

stop_pid() {  # stop_pid PIDFILE WHAT: TERM, wait up to 20 s, then KILL; the pidfile goes
  local file=$1 what=$2 pid
  [ -s "$file" ] || { rm -f "$file"; return 0; }
  pid=$(cat "$file")
  if kill -0 "$pid" 2>/dev/null; then
    log "stopping $what (pid $pid)"
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$file"
}

# -- engines ---------------------------------------------------------------------

start_node() {
  local n=$1 i=$(($1 - 1))
  node_answers "$n" && return 0
  local exec_root="$RUN/node$n" pidfile="$RUN/node$n/docker.pid"
  mkdir -p "$exec_root" "$DATA/node$n"
  # A dockerd killed hard leaves its pidfile behind and refuses to start with it.
  pid_alive "$pidfile" || rm -f "$pidfile"
  log "starting dockerd node $n in ${NODE_NS[$i]} (${NODE_ADDR[$i]})"
  setsid nsenter --net="/var/run/netns/${NODE_NS[$i]}" /usr/sbin/dockerd \
    --data-root "$DATA/node$n" --exec-root "$exec_root/exec" --pidfile "$pidfile" \
    -H "unix://$(node_sock "$n")" --insecure-registry "$REGISTRY_ADDR" \
    --bip "172.29.$n.1/24" --default-address-pool "base=172.30.0.0/16,size=24" \
    >>"$RUN/node$n.log" 2>&1 </dev/null 9>&- &
  wait_until 60 "dockerd node $n" node_answers "$n" || { tail -n 20 "$RUN/node$n.log" >&2; return 1; }
}

stop_node() {
  stop_pid "$RUN/node$1/docker.pid" "dockerd node $1"
  rm -f "$(node_sock "$1")"
}

unmount_under() {  # whatever a killed dockerd left mounted under its roots
  local root
  for root in "$@"; do
    [ -d "$root" ] || continue
    { grep -o " $root[^ ]*" /proc/self/mounts || true; } | sort -r | while read -r mount; do
      umount -l "$mount" 2>/dev/null || true
    done
  done
}

swarm_state() { node_docker "$1" info --format '{{.Swarm.LocalNodeState}}' 2>/dev/null || echo unknown; }

make_swarm() {
  if [ "$(swarm_state 1)" != active ]; then
    log "initialising the swarm on node 1 (advertising ${NODE_ADDR[0]})"
    node_docker 1 swarm init --advertise-addr "${NODE_ADDR[0]}" --listen-addr "${NODE_ADDR[0]}:2377" \
      --default-addr-pool 10.202.0.0/16 >/dev/null
  fi
  if [ "$(swarm_state 2)" != active ]; then
    local token
    token=$(node_docker 1 swarm join-token -q worker)
    log "joining node 2 (${NODE_ADDR[1]}) as a worker"
    node_docker 2 swarm join --token "$token" --advertise-addr "${NODE_ADDR[1]}" \
      --listen-addr "${NODE_ADDR[1]}:2377" "${NODE_ADDR[0]}:2377" >/dev/null
  fi
  wait_until 30 "two ready nodes" two_nodes_ready
}

two_nodes_ready() {
  [ "$(node_docker 1 node ls --format '{{.Status}}' 2>/dev/null | grep -c '^Ready$')" = 2 ]
}

# -- commands --------------------------------------------------------------------

print_env() {
  echo "DEPLOYER_SWARM2_MANAGER=unix://$(node_sock 1)"
  echo "DEPLOYER_SWARM2_WORKER=unix://$(node_sock 2)"
  echo "DEPLOYER_SWARM2_REGISTRY=$REGISTRY_ADDR"
  echo "DEPLOYER_SWARM2_NODES=${NODE_ADDR[0]},${NODE_ADDR[1]}"
}

up() {
  [ "$(id -u)" = 0 ] || { log "needs root (network namespaces, dockerd)"; exit 1; }
  need_tools
  mkdir -p "$RUN" "$DATA"
  make_network
  start_registry
  start_node 1
  start_node 2
  make_swarm
  print_env
}

down() {
  stop_node 2
  stop_node 1
  stop_registry
  remove_network
  unmount_under "$RUN" "$DATA"
  rm -rf "$RUN" "$DATA"
  log "down: nothing left"
}

status() {
  local ok=0 what
  for what in "$NET_NS" "${NODE_NS[@]}"; do
    if ns_exists "$what"; then echo "namespace $what: present"; else echo "namespace $what: missing"; ok=1; fi
  done
  if registry_answers; then echo "registry $REGISTRY_ADDR: answers"; else echo "registry $REGISTRY_ADDR: down"; ok=1; fi
  for what in 1 2; do
    if node_answers "$what"; then
      echo "node $what (${NODE_ADDR[$((what - 1))]}): dockerd answers, swarm $(swarm_state "$what")"
    else
      echo "node $what (${NODE_ADDR[$((what - 1))]}): dockerd down"; ok=1
    fi
  done
  if node_answers 1; then node_docker 1 node ls || true; fi
  return $ok
}

# One command at a time (two test sessions, or a person and a test): the same names are used.
# The daemons started here must not inherit the lock (9>&- on each), or it would never be free.
exec 9>"${RUN%/}.lock"
flock -w 300 9 || { log "another two-node-swarm.sh still runs after 300 s (lock ${RUN%/}.lock)"; exit 1; }

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  env) print_env ;;
  stop-node) stop_node "${2:?node number}" ;;
  start-node) start_node "${2:?node number}" ;;
  *) echo "usage: $0 up|down|status|env|stop-node N|start-node N" >&2; exit 2 ;;
esac
