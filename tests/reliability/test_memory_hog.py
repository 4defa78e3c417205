"""A service that eats memory: its deploy fails with a clear reason, the previous revision is put
back, and a sibling keeps serving throughout.

Supervisor programs have no memory limit of deployer's (``resources.memory`` is for containers),
so the hog caps itself: ``RLIMIT_AS`` at its current size + 200 MB before it grows, and the
kernel refuses the allocation that would pass it (``MemoryError``). The machine is never at risk.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import GitRepo, local_source, start_daemon, stop_supervisord, wait_for, write_config
from tests.reliability.harness import SERVER, RequestLoop, answer, serving, state_of, wait_idle_history

TOKEN = "memory-hog-token"
CAP = 200 << 20
# Loads a "model" that needs more memory than the process may have: each chunk is touched, so it is
# resident, until the allocation past the cap fails.
HOG = f"""import resource
def size():
    for line in open("/proc/self/status"):
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024
limit = size() + {CAP}
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
weights = []
while True:
    weights.append(b"\\1" * (10 << 20))
"""
MANIFEST = """services:
  - name: steady
    path: steady
    command: python server.py ${PORT}
    env: {GREETING: v1}
    health: {path: /health, timeout: 30}
  - name: hog
    path: hog
    command: python server.py ${PORT}
    env: {GREETING: %s}
    health: {path: /health, timeout: 60}
"""


@pytest.fixture
def world(tmp_path: Path) -> Iterator[dict[str, Any]]:
    repo = GitRepo.create(tmp_path / "repo.git", tmp_path / "work")
    repo.commit({"service.yaml": MANIFEST % "v1", "steady/server.py": SERVER, "hog/server.py": SERVER}, "v1")
    config, _ = write_config(tmp_path, sources=local_source("hogs"), interval=1)
    daemon = start_daemon(config, tmp_path / "state", env={"DEPLOYER_API_TOKEN": TOKEN})
    try:
        yield {"daemon": daemon, "repo": repo}
    finally:
        daemon.stop()
        stop_supervisord(tmp_path / "state")


def test_a_service_that_eats_memory_fails_its_deploy_and_the_previous_revision_serves(
        world: dict[str, Any]) -> None:
    daemon, repo = world["daemon"], world["repo"]
    serving(daemon, "steady", "v1", 60)
    serving(daemon, "hog", "v1", 60)
    before = wait_idle_history(daemon, "hog")[0]["id"]
    steady, hog = state_of(daemon, "steady")["port"], state_of(daemon, "hog")["port"]

    with RequestLoop(steady) as loop:
        pushed = time.monotonic()
        repo.commit({"service.yaml": MANIFEST % "v2", "hog/server.py": HOG + SERVER}, "v2 loads too big a model")
        assert daemon.request_pass(TOKEN).status_code == 202

        def ended() -> dict[str, Any] | None:
            attempt = state_of(daemon, "hog")["attempts"][0]
            return attempt if attempt["id"] > before and attempt["outcome"] != "running" else None

        attempt = wait_for(ended, 60, "the hog's deploy to end")
        took = time.monotonic() - pushed
        wait_for(lambda: answer(hog) == "v1", 30, "the previous revision answering again")
    loop.assert_served()

    # supervisord gives up on a process that dies before startsecs (ApplyFailed); one that dies after
    # it, during the gate, fails the gate (HealthCheckFailed): either way the log's last error is said.
    assert attempt["outcome"] == "rolled_back", attempt
    assert attempt["reason"] in ("ApplyFailed", "HealthCheckFailed"), attempt
    assert "MemoryError" in attempt["message"], attempt["message"]
    assert took < 30, f"the failure took {took:.0f}s to be found: the gate waited out its timeout"
    service = state_of(daemon, "hog")
    assert service["running_sha"] != service["desired_sha"]  # the broken revision is not running
    assert "MemoryError" in daemon.get("/services/hog").text
    wait_idle_history(daemon, "hog")
    print(f"\nmemory hog: deploy failed and rolled back {took:.1f}s after the push; "
          f"sibling loop {loop.sent} requests, 0 failed")
