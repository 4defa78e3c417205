"""deployer serving a swarm service on the two-node swarm, behind its gateway: a rolling update that
loses no request through the gateway, a lost node shown as degraded, then converged, and a drain.

The daemon's ``[docker] url`` is node 1 (the manager); the gateway's nginx runs on this host and
lists both nodes' published addresses as servers of the service's upstream.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx

from tests.e2e.test_gateway_bluegreen import make_world, settled, tear_down
from tests.helpers import Background, wait_for
from tests.swarm2.conftest import TwoNodes

NAME = "spread"


class GatewayLoop(Background):
    """Requests through the gateway path, counting answers, failures and the versions seen."""

    def __init__(self, url: str) -> None:
        super().__init__()
        self.url = url
        self.answered = 0
        self.failures: list[str] = []
        self.versions: set[str] = set()

    def _run(self) -> None:
        with httpx.Client(timeout=3.0) as client:
            while not self._stop.is_set():
                try:
                    response = client.get(self.url)
                    if response.status_code == 200:
                        self.answered += 1
                        self.versions.add(response.text.strip())
                    else:
                        self.failures.append(f"{response.status_code}: {response.text[:80]}")
                except httpx.HTTPError as exc:
                    self.failures.append(repr(exc))
                time.sleep(0.02)


def _files(base: str, version: str, replicas: int = 2) -> dict[str, str | bytes | None]:
    manifest = (f"name: {NAME}\nruntime: swarm\nreplicas: {replicas}\nplacement: {{spread: node.id}}\n"
                f"health: {{path: /health, timeout: 30}}\ngateway: {{path: /ai/{NAME}/}}\n")
    return {"service.yaml": manifest, "Dockerfile": f"FROM {base}\nCOPY www/version /www/version\n",
            "www/version": f"{version}\n"}


def test_rolling_update_through_the_gateway_and_a_lost_node(tmp_path: Path, two_nodes: TwoNodes,
                                                            manager_busybox: str, manager_api: Any) -> None:
    docker = (f'[docker]\nenabled = true\nurl = "{two_nodes.manager}"\nregistry = "{two_nodes.registry}"\n'
              f'base_image = "{manager_busybox}"\n')
    world = make_world(tmp_path, _files(manager_busybox, "v1"), extra=docker)
    daemon, repo, gateway = world["daemon"], world["repo"], world["gateway"]
    try:
        daemon.request_pass()
        first = settled(daemon, repo.shas[-1], name=NAME)
        assert first["last_attempt"]["outcome"] == "succeeded", first["last_attempt"]
        # each task's node and state, as data: one running task on each node
        running = lambda s: sorted(task["node"] for task in s["tasks"] if task["state"] == "running")  # noqa: E731
        tasks = wait_for(lambda: (s := daemon.service(NAME)) and running(s) == sorted(two_nodes.nodes) and s, 30,
                         "a running task on each node in the API")["tasks"]
        assert all(set(task) == {"node", "state", "error"} for task in tasks), tasks
        steps = [step["output"] for step in first["attempts"][0]["steps"] if step["name"] == "health"]
        assert steps and all(node in " ".join(steps) for node in two_nodes.nodes), steps  # gated on each node
        url = f"{gateway}/ai/{NAME}/version"
        wait_for(lambda: httpx.get(url, timeout=3).text.strip() == "v1", 30, "v1 through the gateway")
        upstream = (tmp_path / "state" / "gateway").rglob("*.conf")
        assert any(f"{two_nodes.nodes[1]}:{first['port']}" in path.read_text() for path in upstream)

        with GatewayLoop(url) as loop:
            sha = repo.commit(_files(manager_busybox, "v2"), "v2")
            daemon.request_pass()
            second = settled(daemon, sha, name=NAME)
            time.sleep(0.5)
        assert second["last_attempt"]["outcome"] == "succeeded", second["last_attempt"]
        assert loop.failures == [] and loop.versions == {"v1", "v2"}, (loop.failures[:5], loop.versions)
        print(f"\nthrough the gateway during the two-node update: {loop.answered} answers, 0 failed")

        _lose_node_two(daemon, two_nodes, url)
        _drain_node_two(daemon, two_nodes, manager_api)
        _start_first_on_the_spare_node(daemon, repo, url, manager_busybox, manager_api)
    finally:
        tear_down(world)


def _lose_node_two(daemon: Any, two_nodes: TwoNodes, url: str) -> None:
    lost = two_nodes.nodes[1]
    two_nodes.script("stop-node", "2")
    try:
        stopped = time.monotonic()
        service = wait_for(lambda: (s := daemon.service(NAME)) and s["state"] == "degraded" and s, 30,
                           "the service degraded")
        print(f"degraded on the API {time.monotonic() - stopped:.1f}s after node 2's engine stopped")
        assert f"node {lost} down" in service["detail"] and "1/2 tasks running" in service["detail"]
        # swarm's own reason for the task it cannot place, once it has tried to place it again
        service = wait_for(lambda: (s := daemon.service(NAME)) and "no suitable node" in s["detail"] and s, 30,
                           "swarm's reason for the task it cannot place")
        assert service["state"] == "degraded", service
        assert NAME in daemon.get("/healthz").json()["degraded"]
        page = daemon.get(f"/services/{NAME}").text
        assert "degraded" in page and f"node {lost} down" in page
        assert httpx.get(url, timeout=3).text.strip() == "v2"  # node 1 serves alone
    finally:
        two_nodes.script("start-node", "2")
    service = wait_for(lambda: (s := daemon.service(NAME)) and s["state"] == "running" and s, 60,
                       "the service converged")
    assert "2/2 tasks running" in service["detail"] and lost in service["detail"]
    reasons = [attempt["reason"] for attempt in service["attempts"] if attempt["trigger"] == "drift"]
    assert reasons[:2] == ["Recovered", "Degraded"], reasons  # newest first
    assert service["detail"].count(" running") == 3  # 2/2 tasks running (A running, B running): no duplicate


def _drain_node_two(daemon: Any, two_nodes: TwoNodes, api: Any) -> None:
    """``docker node update --availability drain``: the page says degraded, naming the drained node."""
    node = next(n for n in api.nodes() if n["Status"]["Addr"] == two_nodes.nodes[1])

    def availability(value: str) -> None:
        current = api.inspect_node(node["ID"])
        api.update_node(node["ID"], current["Version"]["Index"], {**current["Spec"], "Availability": value})

    availability("drain")
    try:
        wait_for(lambda: (s := daemon.service(NAME)) and s["state"] == "degraded" and s, 30, "degraded by the drain")
        page = daemon.get(f"/services/{NAME}").text
        assert f"node {two_nodes.nodes[1]} drained" in page and "no suitable node" in page, page[:3000]
    finally:
        availability("active")
    wait_for(lambda: (s := daemon.service(NAME)) and s["state"] == "running" and s, 60, "running again after the drain")


def _start_first_on_the_spare_node(daemon: Any, repo: Any, url: str, base: str, api: Any) -> None:
    """One replica on two nodes: the update starts the new task first (on a node with room) and the
    gateway, widened to every node before the update, loses no request while the task moves."""
    sha = repo.commit(_files(base, "v3", replicas=1), "one replica")
    daemon.request_pass()
    attempt = settled(daemon, sha, name=NAME)["last_attempt"]
    assert attempt["outcome"] == "succeeded", attempt
    with GatewayLoop(url) as loop:
        for version in ("v4", "v5"):
            sha = repo.commit(_files(base, version, replicas=1), version)
            daemon.request_pass()
            attempt = settled(daemon, sha, name=NAME)["last_attempt"]
            assert attempt["outcome"] == "succeeded", attempt
        time.sleep(0.5)
    assert api.inspect_service(NAME)["Spec"]["UpdateConfig"]["Order"] == "start-first"
    assert loop.failures == [] and loop.versions >= {"v4", "v5"}, (loop.failures[:5], loop.versions)
