"""Shared test set-up. In CI (``CI`` set) a component that cannot be had fails the
test instead of skipping it: CI must run everything."""

from __future__ import annotations

import os

import pytest

pytest_plugins = ["tests.store_fixtures", "tests.gitea_fixtures", "tests.docker_fixtures", "tests.artifact_servers"]

IN_CI = bool(os.environ.get("CI"))


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the marks into the node ids
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Groups for pytest-xdist's ``--dist loadgroup`` (scripts/test.sh runs the suite on a few workers).

    A module's tests stay on one worker, so its module fixtures (a daemon, a repository) are made
    once and its tests see them in order; every test that uses the shared Docker engine runs on one
    worker, since those tests share the engine, its swarm and the images a session removes at its end;
    so do the two-node swarm's (tests/swarm2: one swarm, made by the session that runs them).
    Without xdist the marks do nothing.
    """
    for item in items:
        module = item.nodeid.split("::")[0]
        if "docker_api" in item.fixturenames:
            group = "docker-engine"
        elif module.startswith("tests/swarm2/"):  # one two-node swarm per session, made and removed by a worker
            group = "swarm2"
        else:
            group = module
        item.add_marker(pytest.mark.xdist_group(group))


def unavailable(reason: str) -> None:
    """Skip outside CI, fail inside it."""
    if IN_CI:
        pytest.fail(f"required in CI: {reason}")
    pytest.skip(reason)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    outcome = yield
    report = outcome.get_result()
    if IN_CI and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"skipped in CI, which must run every test: {report.longrepr}"
