#!/usr/bin/env bash
# The whole test suite, with everything it needs installed and started first (idempotent):
# the virtualenv, PostgreSQL on 127.0.0.1:5432, then ruff, mypy --strict, import-linter, pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/services.sh

echo "== ruff"
.venv/bin/ruff check deployer tests
echo "== mypy --strict"
.venv/bin/mypy
echo "== import-linter"
.venv/bin/lint-imports
echo "== pytest"
# Most tests wait on real processes (supervisord, git, Docker, nginx), so a few workers overlap the
# waits; modules and the Docker engine's tests stay grouped (tests/conftest.py). TEST_WORKERS=0 runs serially.
workers=${TEST_WORKERS:-3}
if [ "$workers" = 0 ]; then
  .venv/bin/pytest "$@"
else
  # A short base for the temporary dirs: xdist adds popen-gwN/ to each, and supervisord's unix socket
  # (under a test's state dir) must stay within the 107 bytes a socket path may have.
  .venv/bin/pytest -n "$workers" --dist loadgroup --basetemp="${TEST_BASETEMP:-/tmp/deployer-tests}" "$@"
fi
