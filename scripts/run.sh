#!/usr/bin/env bash
# Runs the daemon with its embedded defaults: SQLite and its own supervisord under ./state,
# status page on http://127.0.0.1:8700, serving the bundled example service.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/example-repo.sh
# Fewer glibc malloc arenas: less memory fragmentation across the daemon's threads.
export MALLOC_ARENA_MAX=${MALLOC_ARENA_MAX:-2}
exec .venv/bin/deployer serve --config deployer.toml "$@"
