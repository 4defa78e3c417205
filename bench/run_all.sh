#!/usr/bin/env bash
# Runs every benchmark once, in sequence, then prints all their tables together.
#   bench/run_all.sh            full runs (about 12-15 minutes on the 2-core CI machine)
#   bench/run_all.sh --quick    fewer runs and 50 services only (about 5 minutes)
#   bench/run_all.sh --no-docker  (with or without --quick) no container of the bench's own: Supervisor
#                               figures only, for a machine where someone else's tests use Docker
# PY=/path/to/python overrides the interpreter (default .venv/bin/python of this checkout).
# Each script stops by itself (its own deadline) and cleans up what it started; results are
# JSON files in bench/results/. py-spy profiles are taken when py-spy is on PATH (optional).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || { echo "run_all: $PY not found; run 'make setup' (or scripts/setup.sh) first" >&2; exit 2; }

quick=0
docker=on
for arg in "$@"; do
  case "$arg" in
    --quick) quick=1 ;;
    --no-docker) docker=off ;;
    *) echo "run_all: unknown option $arg (known: --quick, --no-docker)" >&2; exit 2 ;;
  esac
done

if [ "$docker" = on ] && ! timeout 10 docker info >/dev/null 2>&1; then
  echo "run_all: no Docker engine answering; starting it with scripts/docker-services.sh" >&2
  scripts/docker-services.sh || echo "run_all: Docker is unavailable; its benchmarks will fail" >&2
fi

spy=off
command -v py-spy >/dev/null 2>&1 && spy=auto
if [ "$docker" = on ]; then
  docker_sizes=()  # each script's own default
  drift_docker=on
else
  docker_sizes=(--docker-sizes 0)
  drift_docker=off
fi

marker=$(date -u +%Y%m%dT%H%M%SZ)
failed=()
bench() {  # bench LIMIT_SECONDS SCRIPT ARGS...
  local limit=$1
  shift
  echo
  echo "### $*"
  # The scripts have their own deadline (--timeout); this outer one is a last resort.
  if ! timeout --signal=TERM --kill-after=60 "$((limit + 120))" "$PY" "$@" --timeout "$limit"; then
    failed+=("$1")
  fi
}

if [ "$quick" = 1 ]; then
  bench 300 bench/push_to_healthy.py --runs 3
  bench 300 bench/env_build.py --rounds 3
  bench 400 bench/webhook_burst.py --rate 100 --seconds 5 --repos 10
  bench 600 bench/reconcile_scale.py --quick --no-daemon-check --py-spy "$spy" "${docker_sizes[@]}"
  bench 300 bench/drift.py --runs 2 --docker "$drift_docker"
  bench 600 bench/zero_downtime.py --redeploys 3 --failing 1 --boot 2
  bench 300 bench/reload_keepalive.py --changes 60
  bench 300 bench/artifacts.py --size-mb 50 --runs 2
  [ "$docker" = on ] && bench 400 bench/swarm_nodes.py --runs 2
else
  bench 420 bench/push_to_healthy.py --runs 7
  bench 420 bench/env_build.py --rounds 5
  bench 600 bench/webhook_burst.py --py-spy "$spy"
  bench 900 bench/reconcile_scale.py --py-spy "$spy" "${docker_sizes[@]}"
  bench 420 bench/drift.py --runs 4 --docker "$drift_docker"
  bench 1200 bench/zero_downtime.py
  bench 600 bench/reload_keepalive.py
  bench 600 bench/artifacts.py
  [ "$docker" = on ] && bench 600 bench/swarm_nodes.py --runs 4
fi

echo
echo "################ all results of this run ################"
"$PY" bench/summary.py --since "$marker"
if [ ${#failed[@]} -gt 0 ]; then
  echo "run_all: these benchmarks did not finish: ${failed[*]}" >&2
  exit 1
fi
