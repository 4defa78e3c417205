"""The Docker engine restarted under a container service, while it deploys and while it serves.

The engine is one of the test's own (``private_docker.py``): the machine's dockerd is shared. One
repository holds two Supervisor services and a Docker service. While the engine is down,
``/healthz`` and the page say so, the Supervisor services keep serving and deploying, and the container's
change waits; once the engine is back the container service converges to what git says, with one
container, not two.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers import GitRepo, local_source, start_daemon, stop_supervisord, wait_for, write_config
from tests.reliability.harness import SERVER, RequestLoop, answer, serving, state_of, wait_idle_history
from tests.reliability.private_docker import PrivateEngine

TOKEN = "docker-restart-token"
BUSYBOX = Path("/bin/busybox")
DOCKERFILE = """FROM scratch
COPY busybox /bin/busybox
COPY www /www
CMD ["/bin/busybox", "sh", "-c", "/bin/busybox sleep 2 && exec /bin/busybox httpd -f -p \\"$PORT\\" -h /www"]
"""
# The request loop calls "bystander", which no push changes: without the gateway a redeploy restarts in place.
MANIFEST = """services:
  - name: bystander
    path: steady
    command: python server.py ${PORT}
    health: {path: /health, timeout: 30}
  - name: steady
    path: steady
    command: python server.py ${PORT}
    env: {GREETING: %s}
    health: {path: /health, timeout: 30}
  - name: boxed
    path: boxed
    runtime: docker
    health: {path: /health, timeout: 30}
"""


def boxed(version: str) -> dict[str, str | bytes | None]:
    return {"boxed/www/health": f"{version}\n"}


@pytest.fixture
def world(tmp_path: Path) -> Iterator[dict[str, Any]]:
    if not BUSYBOX.is_file() or b"ld-linux" in BUSYBOX.read_bytes()[:8192]:
        pytest.skip("a static /bin/busybox is needed (Debian's busybox-static)")
    engine = PrivateEngine()
    daemon = None
    try:
        engine.create_bridge()
        engine.start()
        repo = GitRepo.create(tmp_path / "repo.git", tmp_path / "work")
        repo.commit({"service.yaml": MANIFEST % "v1", "steady/server.py": SERVER, "boxed/Dockerfile": DOCKERFILE,
                     "boxed/busybox": BUSYBOX.read_bytes(), **boxed("v1")}, "v1", push=False)
        (repo.work / "boxed" / "busybox").chmod(0o755)
        repo.commit({}, "busybox is executable")
        extra = f'[docker]\nenabled = true\nurl = "{engine.url}"\n'
        config, _ = write_config(tmp_path, sources=local_source("mixed"), extra=extra, interval=1)
        daemon = start_daemon(config, tmp_path / "state", env={"DEPLOYER_API_TOKEN": TOKEN})
        yield {"daemon": daemon, "repo": repo, "engine": engine}
    finally:
        if daemon is not None:
            daemon.stop()
        stop_supervisord(tmp_path / "state")
        engine.remove()


def containers(engine: PrivateEngine, name: str) -> list[dict[str, Any]]:
    client = engine.api()
    try:
        return list(client.containers(all=True, filters={"label": f"deployer.service={name}"}))
    finally:
        client.close()


def one_running(engine: PrivateEngine, name: str) -> bool:
    found = containers(engine, name)
    if len(found) == 1 and found[0]["State"] == "running":
        return True
    raise LookupError(f"containers of {name}: {[(c['Names'], c['State']) for c in found]}")  # shown on timeout


def boxed_answer(daemon: Any) -> str | None:
    found = daemon.service("boxed")
    if not found or not found.get("port"):
        return None
    try:
        return httpx.get(f"http://127.0.0.1:{found['port']}/health", timeout=2).text.strip()
    except httpx.HTTPError:
        return None


def test_a_docker_restart_is_reported_other_services_deploy_and_the_container_converges(
        world: dict[str, Any]) -> None:
    daemon, repo, engine = world["daemon"], world["repo"], world["engine"]
    serving(daemon, "steady", "v1", 90)
    wait_for(lambda: boxed_answer(daemon) == "v1", 90, "the container serving v1")
    wait_idle_history(daemon, "boxed")
    serving(daemon, "bystander", "hi", 30)
    steady_port = state_of(daemon, "steady")["port"]

    with RequestLoop(state_of(daemon, "bystander")["port"]) as loop:
        # A change to both services, and the engine goes down as the pass starts: mid-deploy.
        repo.commit({"service.yaml": MANIFEST % "v2", **boxed("v2")}, "v2 of both")
        assert daemon.request_pass(TOKEN).status_code == 202
        stopped = time.monotonic()
        engine.stop()

        health = wait_for(lambda: (found := daemon.get("/healthz")).status_code == 503 and found.json(), 60,
                          "/healthz to say the engine is down")
        detected = time.monotonic() - stopped
        assert "docker engine" in health["checks"]["docker"] and "unreachable" in health["checks"]["docker"], health
        assert all(value == "ok" for name, value in health["checks"].items() if name != "docker"), health
        wait_for(lambda: "unreachable" in daemon.get("/").text, 60, "the page to say the engine is unreachable")
        serving(daemon, "steady", "v2", 60)  # the Supervisor service deploys while the engine is down

        # Another push while the engine is down: it deploys too.
        repo.commit({"service.yaml": MANIFEST % "v3"}, "v3 of the process")
        assert daemon.request_pass(TOKEN).status_code == 202
        serving(daemon, "steady", "v3", 60)
        down_for = time.monotonic() - stopped

        restarted = time.monotonic()
        engine.start()
        wait_for(lambda: boxed_answer(daemon) == "v2", 90, "the container serving v2 after the engine returned")
        converged = time.monotonic() - restarted
        wait_for(lambda: daemon.get("/healthz").status_code == 200, 30, "/healthz ok again")
    loop.assert_served()

    wait_idle_history(daemon, "boxed")
    wait_idle_history(daemon, "steady")
    found = containers(engine, "boxed")
    assert len(found) == 1 and found[0]["State"] == "running", [(c["Names"], c["State"]) for c in found]
    assert state_of(daemon, "boxed")["running_sha"] == state_of(daemon, "boxed")["desired_sha"]
    assert answer(steady_port) == "v3"

    # The engine restarted while the container's next revision waits on its gate (a 2 s boot).
    before = state_of(daemon, "boxed")["attempts"][0]["id"]
    repo.commit(boxed("v4"), "v4 of the container")
    assert daemon.request_pass(TOKEN).status_code == 202

    def gating() -> bool:
        attempt = state_of(daemon, "boxed")["attempts"][0]
        return attempt["id"] > before and attempt["outcome"] == "running" and \
            any(step["name"] == "apply" for step in attempt["steps"])

    wait_for(gating, 60, "the container's v4 deploy under way", interval=0.05)
    engine.stop()
    engine.start()
    restarted = time.monotonic()
    wait_for(lambda: boxed_answer(daemon) == "v4", 90, "the container serving v4 after a restart mid-deploy")
    mid_deploy = time.monotonic() - restarted
    wait_idle_history(daemon, "boxed")
    # A NAME.next the interrupted apply left is removed at the daemon's next listing, not at once.
    wait_for(lambda: one_running(engine, "boxed"), 30, "exactly one container for boxed, running")
    assert answer(steady_port) == "v3"
    print(f"\ndocker restart mid-deploy: v4 served {mid_deploy:.1f}s after the engine was back")
    print(f"\ndocker restart: detected in {detected:.1f}s, engine down {down_for:.1f}s, container converged "
          f"{converged:.1f}s after the engine started; bystander loop {loop.sent} requests, 0 failed")
