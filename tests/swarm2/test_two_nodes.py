"""The Swarm runtime on a real two-node swarm (tests/swarm2/conftest.py): spread one task per node, rollback.

Each node publishes the service's port in host mode on its own address (10.201.0.11, .12), so
every task is reached where it runs. The update under a request loop (through the gateway) and
a lost node are the daemon's test (test_daemon_two_nodes.py); ``bench/swarm_nodes.py`` times the
update against one node, with a loop asking both nodes directly.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from deployer.errors import ApplyError
from deployer.model.actual import ServiceState
from deployer.runtimes.docker import SwarmRuntime
from tests.docker_fixtures import TEMPLATES, ServiceFolder
from tests.helpers import wait_for
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
