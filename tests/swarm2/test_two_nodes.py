"""The Swarm runtime on a real two-node swarm (tests/swarm2/conftest.py): spread, update, rollback, a node lost.

Each node publishes the service's port in host mode on its own address (10.201.0.11, .12), so
every task is reached where it runs. The request loop during an update goes to both node
addresses directly, the way a load balancer does: a request counts as failed only when neither
node answered it (a node whose task is being replaced refuses for a moment; that is what the
gateway's second upstream is for).
"""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from deployer.errors import ApplyError
from deployer.model.actual import ServiceState
from deployer.runtimes.docker import SwarmRuntime
from tests.docker_fixtures import TEMPLATES, ServiceFolder
from tests.helpers import Background, wait_for
from tests.swarm2.conftest import TwoNodes


@pytest.fixture
def runtime(two_nodes: TwoNodes, manager_busybox: str) -> SwarmRuntime:
    return SwarmRuntime(two_nodes.manager, templates_dir=TEMPLATES, base_image=manager_busybox,
                        registry=two_nodes.registry, monitor=1.0, start_seconds=0.5, converge_timeout=90)


@pytest.fixture
def folder(service_folder: ServiceFolder, manager_busybox: str) -> ServiceFolder:
    service_folder.runtime = "swarm"
    service_folder.write("v1", base=manager_busybox)
    return service_folder


def version(address: str, port: int) -> str:
    return httpx.get(f"http://{address}:{port}/version", timeout=2).text.strip()


def versions(nodes: tuple[str, str], port: int) -> list[str]:
    return [version(address, port) for address in nodes]


class Requests(Background):
    """Requests in turn to each node, falling over to the other one; ``failed`` counts those neither answered."""

    def __init__(self, nodes: tuple[str, ...], port: int) -> None:
        super().__init__()
        self.nodes, self.port = nodes, port
        self.answered = self.failed = 0
        self.seen: dict[str, list[str]] = {node: [] for node in nodes}

    def _run(self) -> None:
        turn = 0
        with httpx.Client(timeout=1.0) as client:
            while not self._stop.is_set():
                turn += 1
                order = self.nodes[turn % 2:] + self.nodes[:turn % 2]
                if not any(self._ask(client, node) for node in order):
                    self.failed += 1
                time.sleep(0.02)

    def _ask(self, client: httpx.Client, node: str) -> bool:
        try:
            response = client.get(f"http://{node}:{self.port}/version")
        except httpx.HTTPError:
            return False
        if response.status_code != 200:
            return False
        self.answered += 1
        said = response.text.strip()
        if not self.seen[node] or self.seen[node][-1] != said:
            self.seen[node].append(said)
        return True


def test_two_replicas_run_one_per_node_and_both_answer(runtime: SwarmRuntime, folder: ServiceFolder,
                                                     two_nodes: TwoNodes, manager_api: Any) -> None:
    deployment = folder.deployment(1, replicas=2)
    runtime.apply(deployment)
    assert versions(two_nodes.nodes, folder.port) == ["v1", "v1"]
    seen = runtime.observe()[folder.name]
    assert seen.state is ServiceState.RUNNING and seen.degraded == ""
    assert seen.addresses == two_nodes.nodes == runtime.addresses(folder.name)
    assert sorted((task.node, task.state) for task in seen.tasks) == [(node, "running") for node in two_nodes.nodes]
    assert f"2/2 tasks running ({two_nodes.nodes[0]} running, {two_nodes.nodes[1]} running)" in seen.detail
    placement = manager_api.inspect_service(folder.name)["Spec"]["TaskTemplate"]["Placement"]
    assert placement["Preferences"] == [{"Spread": {"SpreadDescriptor": "node.id"}}] and placement["MaxReplicas"] == 1


def test_update_rolls_across_both_nodes_with_no_failed_request(runtime: SwarmRuntime, folder: ServiceFolder,
                                                             two_nodes: TwoNodes, manager_api: Any) -> None:
    runtime.apply(folder.deployment(1, replicas=2))
    folder.write("v2", base=runtime.images.base_image)
    with Requests(two_nodes.nodes, folder.port) as loop:
        time.sleep(0.5)
        started = time.monotonic()
        runtime.apply(folder.deployment(2, replicas=2))
        took = time.monotonic() - started
        time.sleep(0.5)
    assert versions(two_nodes.nodes, folder.port) == ["v2", "v2"]
    assert loop.failed == 0 and loop.answered > 20, (loop.failed, loop.answered)
    assert all(said == ["v1", "v2"] for said in loop.seen.values()), loop.seen  # each node moved once, v1 → v2
    update = manager_api.inspect_service(folder.name)["Spec"]["UpdateConfig"]
    assert (update["Order"], update["Parallelism"]) == ("stop-first", 1)  # no spare node: one node at a time
    print(f"\ntwo-node rolling update: {took:.2f}s, {loop.answered} answers, 0 failed")


def test_failing_update_rolls_back_on_both_nodes(runtime: SwarmRuntime, folder: ServiceFolder,
                                                two_nodes: TwoNodes) -> None:
    first = folder.deployment(1, replicas=2)
    runtime.apply(first)
    with pytest.raises(ApplyError, match=r"the update failed .* and swarm rollback completed"):
        runtime.apply(folder.deployment(2, replicas=2, command="sh -c 'echo no-model-here; exit 3'"))
    seen = wait_for(lambda: (s := runtime.observe()[folder.name]).addresses == two_nodes.nodes and s, 30,
                    "a task on each node again")
    assert seen.spec_hash == first.desired.spec_hash and seen.degraded == ""
    assert versions(two_nodes.nodes, folder.port) == ["v1", "v1"]


def test_a_lost_node_degrades_the_service_until_it_returns(runtime: SwarmRuntime, folder: ServiceFolder,
                                                           two_nodes: TwoNodes) -> None:
    runtime.apply(folder.deployment(1, replicas=2))
    two_nodes.script("stop-node", "2")
    try:
        seen = wait_for(lambda: (s := runtime.observe()[folder.name]).degraded and s, 30, "the service degraded")
        assert seen.state is ServiceState.RUNNING and seen.addresses == (two_nodes.nodes[0],)
        assert f"node {two_nodes.nodes[1]} down" in seen.degraded and "no suitable node" in seen.degraded
        assert "1/2 tasks running" in seen.detail
    finally:
        two_nodes.script("start-node", "2")
    seen = wait_for(lambda: (s := runtime.observe()[folder.name]).addresses == two_nodes.nodes and s, 60,
                    "a task on each node again")
    assert seen.degraded == "" and len(seen.tasks) == 2  # no duplicate: the lost node's old task is gone
    assert versions(two_nodes.nodes, folder.port) == ["v1", "v1"]
