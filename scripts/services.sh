#!/usr/bin/env bash
# Installs and starts what the integration tests use. Idempotent: each step checks first.
set -euo pipefail

need_apt=()
command -v git >/dev/null || need_apt+=(git)
command -v git-lfs >/dev/null || need_apt+=(git-lfs)   # model weights kept in Git LFS (tests/integration/test_lfs.py)
command -v pg_ctlcluster >/dev/null || need_apt+=(postgresql)
command -v promtool >/dev/null || need_apt+=(prometheus)   # promtool checks /metrics
if [ ${#need_apt[@]} -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

# PostgreSQL: this machine kind runs one on 127.0.0.1:5432 with trust auth; start it if it is down.
if ! pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
  version=$(ls /etc/postgresql | sort -V | tail -n 1)
  pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
  for _ in $(seq 1 30); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 1; done
fi
pg_isready -h 127.0.0.1 -p 5432 || echo "warning: PostgreSQL is not answering on 127.0.0.1:5432" >&2

# nginx for the gateway tests (Debian's, on PATH as /usr/sbin/nginx). Each test runs its own master under
# its state dir; the system nginx the package starts on port 80 is not wanted: stop it again, and only
# when the install started it (a system nginx that ran before is left alone).
if ! command -v nginx >/dev/null && [ ! -x /usr/sbin/nginx ]; then
  ran_before=no
  [ -s /run/nginx.pid ] && kill -0 "$(cat /run/nginx.pid)" 2>/dev/null && ran_before=yes
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nginx >/dev/null
  if [ "$ran_before" = no ] && [ -s /run/nginx.pid ]; then
    /usr/sbin/nginx -s quit 2>/dev/null || service nginx stop >/dev/null 2>&1 || true
  fi
  command -v systemctl >/dev/null && systemctl disable nginx >/dev/null 2>&1 || true
fi

# Docker engine, busybox-static, the loopback registry and a single-node swarm.
"$(dirname "$0")/docker-services.sh"
# Headless Chromium for the page tests.
if [ -x "$(dirname "$0")/browser-services.sh" ]; then
  "$(dirname "$0")/browser-services.sh"
fi
