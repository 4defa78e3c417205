# The two commands of the README: `make run` and `make test`.
.PHONY: run test setup lint

run:
	scripts/run.sh

test:
	scripts/test.sh

setup:
	scripts/setup.sh

lint:
	.venv/bin/ruff check deployer tests && .venv/bin/mypy && .venv/bin/lint-imports
