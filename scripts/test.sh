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
.venv/bin/pytest "$@"
