"""Pytest plugin: ``gitea``, a running stand-in for Gitea's REST API (tests/gitea_standin.py).

One server per test session; each test gets it up, with no repos, statuses or
injected failures left over from the test before.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.gitea_standin import GiteaStandIn


@pytest.fixture(scope="session")
def gitea_server() -> Iterator[GiteaStandIn]:
    server = GiteaStandIn()
    server.up()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def gitea(gitea_server: GiteaStandIn) -> Iterator[GiteaStandIn]:
    gitea_server.up()  # a test may have left it down
    gitea_server.reset()
    yield gitea_server
    gitea_server.up()
