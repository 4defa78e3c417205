"""One slow gate never holds other services or sources.

A service that never becomes healthy waits out its whole ``health.timeout`` (120 s here). Its
siblings in the same repository and the services of other sources must deploy meanwhile: a
source's changes run side by side (``[reconcile] parallel``), sources run on their own workers
(``[reconcile] workers``), and only builds are bounded across the daemon (``[reconcile] builds``).
Two sources whose gates hang, with the default settings, leave a third source's push deploying
as fast as it does alone.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers import GitRepo, start_daemon, stop_supervisord, wait_for, write_config
from tests.reliability.harness import SERVER

HANGS = 120  # seconds a never-healthy gate waits: far longer than the test may take


def service(name: str, *, greeting: str, healthy: bool = True) -> str:
    health = "/health" if healthy else "/never"  # the server answers 404 there: never healthy
    return (f"  - name: {name}\n    path: app\n    command: python server.py ${{PORT}}\n"
            f"    env: {{GREETING: {greeting}}}\n    health: {{path: {health}, timeout: {HANGS}}}\n")


def manifest(*services: str) -> str:
    return "services:\n" + "".join(services)


@pytest.fixture
def world(tmp_path: Path) -> Iterator[dict[str, Any]]:
    repos = {}
    for name in ("slow-a", "slow-b", "quick"):
        repo = GitRepo.create(tmp_path / f"{name}.git", tmp_path / f"work-{name}")
        repos[name] = repo
    repos["slow-a"].commit({"app/server.py": SERVER, "service.yaml": manifest(
        service("sibling", greeting="v1"))}, "sibling only")
    repos["slow-b"].commit({"app/server.py": SERVER, "service.yaml": manifest(
        service("steady-b", greeting="v1"))}, "steady")
    repos["quick"].commit({"app/server.py": SERVER, "service.yaml": manifest(
        service("quick", greeting="v1"))}, "quick")
    sources = "".join(f'[[sources]]\nurl = "{name}.git"\nname = "{name}"\n' for name in repos)
    config, _ = write_config(tmp_path, sources=sources, interval=1)
    daemon = start_daemon(config, tmp_path / "state", env={"DEPLOYER_API_TOKEN": "t"})
    try:
        yield {"daemon": daemon, "repos": repos}
    finally:
        # A SIGTERM would wait for the running passes, whose gates hang for HANGS seconds (it gave up
        # after 30 s): the test is over, so the daemon is killed, as a crash would; its state is thrown away.
        daemon.process.kill()
        daemon.process.wait(10)
        stop_supervisord(tmp_path / "state")


def greeting(daemon: Any, name: str) -> str | None:
    found = daemon.service(name)
    if not found or not found.get("port"):
        return None
    try:
        return httpx.get(f"http://127.0.0.1:{found['port']}/health", timeout=2).text
    except httpx.HTTPError:
        return None


def attempt_running(daemon: Any, name: str) -> bool:
    found = daemon.service(name)
    return bool(found and found["last_attempt"] and found["last_attempt"]["outcome"] == "running")


def test_hanging_gates_hold_neither_their_siblings_nor_other_sources(world: dict[str, Any]) -> None:
    daemon, repos = world["daemon"], world["repos"]
    for name in ("sibling", "steady-b", "quick"):
        wait_for(lambda name=name: greeting(daemon, name) == "v1", 60, f"{name} healthy at v1")

    # Two sources each start a service whose gate hangs, beside a change to a sibling.
    repos["slow-a"].commit({"service.yaml": manifest(service("sibling", greeting="v2"),
                                                     service("hang-a", greeting="x", healthy=False))}, "hang a")
    repos["slow-b"].commit({"service.yaml": manifest(service("steady-b", greeting="v1"),
                                                     service("hang-b", greeting="x", healthy=False))}, "hang b")
    assert daemon.request_pass("t").status_code == 202  # as a push's webhook would: fetch every source
    wait_for(lambda: (attempt_running(daemon, "hang-a") and attempt_running(daemon, "hang-b")) or None, 60,
             "both hanging gates to be under way")

    # The sibling of a hanging gate deploys while that gate waits.
    wait_for(lambda: greeting(daemon, "sibling") == "v2", 60, "the sibling's change, beside a hanging gate")
    assert attempt_running(daemon, "hang-a"), "the hanging gate ended: the test proves nothing"

    # A third source is not held either: its change deploys while both gates still hang.
    pushed = time.monotonic()
    repos["quick"].commit({"service.yaml": manifest(service("quick", greeting="v2"))}, "quick change")
    assert daemon.request_pass("t").status_code == 202
    wait_for(lambda: greeting(daemon, "quick") == "v2", 60, "the third source's change, while two gates hang")
    took = time.monotonic() - pushed
    assert attempt_running(daemon, "hang-a") and attempt_running(daemon, "hang-b"), (
        "a hanging gate ended before the third source deployed: the test proves nothing")
    assert took < HANGS / 2, f"the third source waited {took:.0f}s"
