#!/usr/bin/env bash
# Installs and starts what the Docker and Swarm tests use, as root with no systemd:
# Debian's docker.io (dockerd in the background), busybox-static (test images are built
# FROM scratch), docker-registry on 127.0.0.1:5000 and a single-node swarm; iproute2 for the
# two-node swarm the tests make themselves (scripts/two-node-swarm.sh, apart from this engine).
# Idempotent: every step checks first, so it is safe to run before every test run.
set -euo pipefail

DOCKERD_LOG=/var/log/dockerd-deployer.log
REGISTRY_LOG=/var/log/docker-registry-deployer.log
REGISTRY_ADDR=127.0.0.1:5000
REGISTRY_CONFIG=/etc/docker/registry/deployer.yml
REGISTRY_STORAGE=/var/lib/docker-registry
# Debian's engine and client; /usr/local/bin may hold a newer client of another origin.
DOCKER=/usr/bin/docker

log() { echo "docker-services: $*" >&2; }

install_packages() {
  local need=()
  [ -x /usr/sbin/dockerd ] || need+=(docker.io)
  dpkg -s busybox-static >/dev/null 2>&1 || need+=(busybox-static)
  [ -x /usr/bin/docker-registry ] || need+=(docker-registry)
  command -v ip >/dev/null 2>&1 || need+=(iproute2)  # namespaces and bridges: the reliability suite's private dockerd, the two-node swarm
  command -v nsenter >/dev/null 2>&1 || need+=(util-linux)
  if [ ${#need[@]} -gt 0 ]; then
    log "installing ${need[*]}"
    apt-get update -qq
    # policy-rc.d (or no systemd) keeps the packages' services from starting: started below.
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  fi
}

engine_answers() { timeout 10 "$DOCKER" info >/dev/null 2>&1; }

# shellcheck source=scripts/wait-until.sh
. "$(dirname "${BASH_SOURCE[0]}")/wait-until.sh"

start_dockerd() {
  engine_answers && return 0
  # A dockerd killed hard leaves its pidfile behind and refuses to start with it.
  if [ -f /var/run/docker.pid ] && ! kill -0 "$(cat /var/run/docker.pid)" 2>/dev/null; then
    rm -f /var/run/docker.pid
  fi
  log "starting dockerd (log: $DOCKERD_LOG)"
  setsid nohup /usr/sbin/dockerd >>"$DOCKERD_LOG" 2>&1 </dev/null &
  wait_until 60 dockerd engine_answers || { tail -n 30 "$DOCKERD_LOG" >&2; exit 1; }
}

registry_answers() { curl -fs -o /dev/null --max-time 2 "http://$REGISTRY_ADDR/v2/"; }

write_registry_config() {
  # Debian's own config listens on every address with htpasswd auth; tests want loopback, no auth.
  mkdir -p "$(dirname "$REGISTRY_CONFIG")" "$REGISTRY_STORAGE"
  cat >"$REGISTRY_CONFIG.tmp" <<EOF
version: 0.1
log:
  level: warn
  fields:
    service: registry
storage:
  filesystem:
    rootdirectory: $REGISTRY_STORAGE
  delete:
    enabled: true
http:
  addr: $REGISTRY_ADDR
EOF
  mv "$REGISTRY_CONFIG.tmp" "$REGISTRY_CONFIG"
}

start_registry() {
  registry_answers && return 0
  write_registry_config
  log "starting docker-registry on $REGISTRY_ADDR (log: $REGISTRY_LOG)"
  setsid nohup /usr/bin/docker-registry serve "$REGISTRY_CONFIG" >>"$REGISTRY_LOG" 2>&1 </dev/null &
  wait_until 30 docker-registry registry_answers || { tail -n 30 "$REGISTRY_LOG" >&2; exit 1; }
}

init_swarm() {
  local state
  state=$("$DOCKER" info --format '{{.Swarm.LocalNodeState}}')
  [ "$state" = active ] && return 0
  log "initialising a single-node swarm (was: $state)"
  "$DOCKER" swarm init --advertise-addr 127.0.0.1 >/dev/null
}

install_packages
start_dockerd
start_registry
init_swarm
# 127.0.0.0/8 registries are insecure-allowed by dockerd's defaults: plain HTTP to
# $REGISTRY_ADDR needs no daemon.json entry. Say so if an operator config removed that.
if ! "$DOCKER" info --format '{{range .RegistryConfig.IndexConfigs}}{{.Name}} {{end}}{{json .RegistryConfig.InsecureRegistryCIDRs}}' \
    | grep -q '127.0.0.0/8'; then
  log "warning: 127.0.0.0/8 is not an insecure registry CIDR; pushes to $REGISTRY_ADDR may fail"
fi
log "ready: engine $("$DOCKER" version --format '{{.Server.Version}}'), registry $REGISTRY_ADDR, swarm active"
