"""End to end with a real Docker engine: one repository holds a Supervisor service and a
Docker service; the daemon deploys both, a change to the container's folder redeploys
only it (new image, same port), a container removed by hand comes back, and a broken
image is rolled back to the previous one."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers import (
    EXAMPLE,
    GitRepo,
    local_source,
    start_daemon,
    stop_supervisord,
    wait_for,
    write_config,
)

DOCKERFILE = """FROM scratch
COPY busybox /bin/busybox
COPY www /www
CMD ["/bin/busybox", "sh", "-c", "exec /bin/busybox httpd -f -p \\"$PORT\\" -h /www"]
"""


def manifest(health: str = "/health") -> str:
    return f"""services:
  - name: text-classify
    path: text-classify
    command: python server.py --port ${{PORT}}
    health: {{path: /health, timeout: 30}}
  - name: static-model
    path: static-model
    runtime: docker
    health: {{path: {health}, timeout: 20}}
"""


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, docker_api: Any) -> Iterator[dict[str, Any]]:
    busybox = Path("/bin/busybox")
    root = tmp_path_factory.mktemp("side")
    repo = GitRepo.create(root / "repo.git", root / "work")
    tree = {f"text-classify/{name}": data for name, data in repo.copy_tree(EXAMPLE).items()}
    tree.update({"service.yaml": manifest(), "static-model/Dockerfile": DOCKERFILE,
                 "static-model/busybox": busybox.read_bytes(), "static-model/www/health": "ok\n",
                 "static-model/www/info": '{"version": "1"}\n'})
    repo.commit(tree, "a process and a container", push=False)
    (repo.work / "static-model" / "busybox").chmod(0o755)
    repo.commit({}, "busybox is executable")
    config, _ = write_config(root, sources=local_source("mixed"), extra="[docker]\nenabled = true", interval=2)
    daemon = start_daemon(config, root / "state", env={"DEPLOYER_API_TOKEN": "t"})
    try:
        yield {"root": root, "repo": repo, "daemon": daemon, "api": docker_api}
    finally:
        daemon.stop()
        stop_supervisord(root / "state")
        for container in docker_api.containers(all=True, filters={"label": "deployer.service=static-model"}):
            docker_api.remove_container(container["Id"], force=True)
        for image in docker_api.images(name="deployer/static-model"):
            docker_api.remove_image(image["Id"], force=True)


def healthy(daemon: Any, name: str, sha: str | None = None, timeout: float = 90) -> dict[str, Any]:
    """``name`` healthy and converged: running what it desires (at ``sha``, when given)."""
    def check() -> dict[str, Any] | None:
        service = daemon.service(name)
        done = service and service["last_attempt"] and service["last_attempt"]["outcome"] != "running"
        converged = done and service["running_revision"] == service["desired_revision"]
        return service if converged and service["healthy"] and sha in (None, service["running_sha"]) else None

    return wait_for(check, timeout, f"{name} healthy" + (f" at {sha[:7]}" if sha else ""))


def settled(world: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Both services healthy at a head whose manifest is the good one (each test starts from here)."""
    daemon, repo = world["daemon"], world["repo"]
    if (repo.work / "service.yaml").read_text() != manifest():
        repo.commit({"service.yaml": manifest()}, "the good manifest again")
        daemon.request_pass("t")
    # A commit that leaves a service's folder and spec alone does not give it a new revision: converged is enough.
    return healthy(daemon, "text-classify"), healthy(daemon, "static-model")


def info_of(container: dict[str, Any]) -> Any:
    return httpx.get(f"http://127.0.0.1:{container['port']}/info", timeout=5).json()


def test_a_process_and_a_container_from_one_repo(world: dict[str, Any]) -> None:
    process, container = settled(world)
    assert (process["runtime"], container["runtime"]) == ("supervisor", "docker")
    steps = [step["name"] for step in container["attempts"][0]["steps"]]
    assert steps[:3] == ["checkout", "build", "apply"]
    assert set(info_of(container)) == {"version"}
    labels = world["api"].containers(filters={"label": "deployer.service=static-model"})[0]["Labels"]
    assert labels["deployer.managed"] == "true" and labels["deployer.revision"] == str(container["running_revision"])


def test_a_change_to_the_container_redeploys_only_it(world: dict[str, Any]) -> None:
    daemon, repo = world["daemon"], world["repo"]
    before, old = settled(world)
    version = str(int(info_of(old)["version"]) + 1)
    sha = repo.commit({"static-model/www/info": f'{{"version": "{version}"}}\n'}, f"container v{version}")
    assert daemon.request_pass("t").status_code == 202
    container = healthy(daemon, "static-model", sha)
    assert container["port"] == old["port"]
    assert info_of(container) == {"version": version}
    after = daemon.service("text-classify")
    assert before is not None and after is not None
    assert after["attempts"][0]["id"] == before["attempts"][0]["id"], "the process was left alone"


def test_a_container_removed_by_hand_comes_back(world: dict[str, Any]) -> None:
    daemon, api = world["daemon"], world["api"]
    port = settled(world)[1]["port"]
    for container in api.containers(filters={"label": "deployer.service=static-model"}):
        api.remove_container(container["Id"], force=True)
    def healed() -> dict[str, Any] | None:
        newest = daemon.service("static-model")["attempts"][0]
        return newest if newest["trigger"] == "drift" and newest["outcome"] != "running" else None

    assert wait_for(healed, 60, "the container to be recreated")["outcome"] == "succeeded"
    assert httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200


def test_a_broken_container_is_rolled_back_to_the_previous_image(world: dict[str, Any]) -> None:
    daemon, repo = world["daemon"], world["repo"]
    _, before = settled(world)
    serving = info_of(before)
    repo.commit({"service.yaml": manifest(health="/missing")}, "container health path that never answers")
    daemon.request_pass("t")

    def finished() -> dict[str, Any] | None:
        service = daemon.service("static-model")
        newest = service["attempts"][0] if service else None
        return newest if newest and newest["id"] > before["attempts"][0]["id"] and \
            newest["outcome"] != "running" else None

    attempt = wait_for(finished, 90, "the failing container deploy to finish")
    assert attempt["outcome"] == "rolled_back" and attempt["reason"] == "HealthCheckFailed", attempt
    rebuilt = next(step for step in attempt["steps"] if step["name"] == "rollback-build")
    assert rebuilt["output"].startswith("reused image"), rebuilt
    assert info_of(before) == serving
