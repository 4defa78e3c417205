"""The Swarm runtime on a single-node swarm, images pushed to the registry on 127.0.0.1:5000.

Ports are published in host mode (no ingress mesh on this kernel), so one node runs one
task of a service: on one node updates are stop-first, and start-first with replicas 2 is
checked in the service spec built for a three-node swarm (a pure function).
"""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from deployer.errors import ApplyError, BuildError
from deployer.model.actual import ServiceState
from deployer.runtimes.docker import ContainerConflict, SwarmRuntime, service_spec
from tests.docker_fixtures import REGISTRY, TEMPLATES, ServiceFolder, engine_calls, http_get, predict, served_version
from tests.helpers import wait_for

engine = pytest.mark.usefixtures("docker_api", "swarm_manager", "registry")


@pytest.fixture
def runtime(busybox_image: str) -> SwarmRuntime:
    return SwarmRuntime(templates_dir=TEMPLATES, base_image=busybox_image, registry=REGISTRY, keep_images=3,
                        monitor=1.0, start_seconds=0.5, converge_timeout=60)


@pytest.fixture
def folder(service_folder: ServiceFolder, busybox_image: str) -> ServiceFolder:
    service_folder.runtime = "swarm"
    service_folder.write("v1", base=busybox_image)
    return service_folder


def test_spec_spreads_replicas_and_updates_start_first_when_a_node_is_spare(service_folder: ServiceFolder) -> None:
    service_folder.runtime = "swarm"
    service_folder.write("v1", base="scratch")
    deployment = service_folder.deployment(4, replicas=2)
    spec = service_spec(deployment, "127.0.0.1:5000/deployer/x:abc", ready_nodes=3, monitor=2.0)
    update, rollback = spec["update_config"], spec["rollback_config"]
    assert (update["Order"], update["FailureAction"], update["Parallelism"]) == ("start-first", "rollback", 1)
    assert update["Monitor"] == 2_000_000_000 and rollback["Order"] == "start-first"
    assert spec["mode"]["replicated"]["Replicas"] == 2
    template = spec["task_template"]
    assert template["Placement"]["MaxReplicas"] == 1  # one task per node: each binds the host port
    assert spec["endpoint_spec"]["Ports"] == [
        {"Protocol": "tcp", "PublishedPort": service_folder.port, "TargetPort": service_folder.port,
         "PublishMode": "host"}]
    container = template["ContainerSpec"]
    assert container["Init"] is True and container["Healthcheck"]["Test"] is None  # the image's own test
    assert "HOST=0.0.0.0" in container["Env"] and container["Labels"]["deployer.service"] == service_folder.name
    assert "deployer.managed" not in container["Labels"]  # task containers are invisible to the docker runtime
    assert spec["labels"]["deployer.spec-hash"] == deployment.desired.spec_hash
    single = service_spec(deployment, "img", ready_nodes=2, monitor=1.0)
    assert single["update_config"]["Order"] == "stop-first"  # no spare node: the host port is taken
    shrinking = service_spec(service_folder.deployment(5, replicas=1), "img", ready_nodes=2, monitor=1.0,
                             current_replicas=2)
    assert shrinking["update_config"]["Order"] == "stop-first"  # 2 tasks run now: no node is free for a new one


@engine
def test_deploy_update_and_roll_back(runtime: SwarmRuntime, folder: ServiceFolder, docker_api: Any) -> None:
    first = folder.deployment(1)
    started = time.monotonic()
    runtime.apply(first)
    wait_for(lambda: served_version(folder.port) == "v1", 10, "v1 through the host-mode port")
    push_to_running = time.monotonic() - started
    assert predict(folder.port)["version"] == "v1"
    seen = runtime.observe()[folder.name]
    assert runtime.inspect(folder.name) == seen
    assert (seen.state, seen.spec_hash, seen.revision) == (ServiceState.RUNNING, first.desired.spec_hash, 1)
    assert "1/1 tasks running" in seen.detail
    service = docker_api.inspect_service(folder.name)
    image = service["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"]
    assert image.startswith(f"{REGISTRY}/deployer/{folder.name}:") and "@sha256:" in image
    tags = httpx.get(f"http://{REGISTRY}/v2/deployer/{folder.name}/tags/list", timeout=5).json()["tags"]
    assert image.split("@")[0].rsplit(":", 1)[1] in tags
    assert service["Spec"]["UpdateConfig"]["FailureAction"] == "rollback"
    (task,) = docker_api.containers(filters={"label": f"com.docker.swarm.service.id={service['ID']}"})
    health = docker_api.inspect_container(task["Id"])["State"]["Health"]  # the image's HEALTHCHECK, inherited
    assert health["Status"] == "healthy"

    folder.write("v2", base=runtime.images.base_image)
    started = time.monotonic()
    runtime.apply(folder.deployment(2))
    update = time.monotonic() - started
    assert served_version(folder.port) == "v2"  # apply returns once swarm completed the update
    assert runtime.observe()[folder.name].revision == 2

    assert runtime.build(first).reused
    started = time.monotonic()
    runtime.apply(first)
    rollback = time.monotonic() - started
    assert served_version(folder.port) == "v1"
    print(f"\nswarm figures: create-to-running {push_to_running:.2f}s, update {update:.2f}s, "
          f"rollback apply {rollback:.2f}s")


@engine
def test_failed_update_is_rolled_back_by_swarm(runtime: SwarmRuntime, folder: ServiceFolder) -> None:
    first = folder.deployment(1)
    runtime.apply(first)
    with pytest.raises(ApplyError, match=r"the update failed .* and swarm rollback completed") as caught:
        runtime.apply(folder.deployment(2, command="sh -c 'echo no-model-here; exit 3'"))
    assert "non-zero exit (3)" in str(caught.value) and "no-model-here" in str(caught.value)
    wait_for(lambda: http_get(folder.port).status_code == 200, 20, "the previous task to serve again")
    assert served_version(folder.port) == "v1"
    assert runtime.observe()[folder.name].spec_hash == first.desired.spec_hash


@engine
def test_failed_first_deploy_leaves_nothing(runtime: SwarmRuntime, folder: ServiceFolder, docker_api: Any) -> None:
    with pytest.raises(ApplyError, match="a task failed"):
        runtime.apply(folder.deployment(1, command="sh -c 'exit 5'"))
    assert folder.name not in runtime.observe()
    assert [s for s in docker_api.services(filters={"name": folder.name}) if s["Spec"]["Name"] == folder.name] == []


@engine
def test_more_replicas_than_nodes_is_refused(runtime: SwarmRuntime, folder: ServiceFolder) -> None:
    with pytest.raises(ApplyError, match="replicas 2 need 2 swarm nodes, 1 ready"):
        runtime.apply(folder.deployment(1, replicas=2))
    assert folder.name not in runtime.observe()


@engine
def test_stop_start_remove_and_logs(runtime: SwarmRuntime, folder: ServiceFolder) -> None:
    command = "sh -c 'echo swarm-hello; exec httpd -f -p $PORT -h /www'"
    runtime.apply(folder.deployment(1, command=command))
    assert "swarm-hello" in wait_for(lambda: runtime.logs(folder.name), 10, "service logs")
    runtime.stop(folder.name)
    assert runtime.observe()[folder.name].state is ServiceState.STOPPED
    runtime.start(folder.name)
    assert runtime.observe()[folder.name].state is ServiceState.RUNNING
    wait_for(lambda: http_get(folder.port).status_code == 200, 10, "/health after start")
    runtime.remove(folder.name)
    assert folder.name not in runtime.observe()
    runtime.remove(folder.name)  # already absent is fine


@engine
def test_unmanaged_service_with_the_same_name_is_a_conflict(
    runtime: SwarmRuntime, folder: ServiceFolder, docker_api: Any, busybox_image: str
) -> None:
    import docker.types

    from tests.docker_fixtures import TEST_LABEL

    # Zero replicas: the stranger only needs to exist (its local-only image is never pulled).
    stranger = docker_api.create_service(
        docker.types.TaskTemplate(docker.types.ContainerSpec(busybox_image, args=["sleep", "300"])),
        name=folder.name, mode=docker.types.ServiceMode("replicated", replicas=0), labels={TEST_LABEL: "stranger"},
    )["ID"]
    try:
        with pytest.raises(ContainerConflict, match=f"swarm service named '{folder.name}'"):
            runtime.apply(folder.deployment(1))
        assert folder.name not in runtime.observe()
        assert docker_api.inspect_service(stranger)["Spec"]["Labels"] == {TEST_LABEL: "stranger"}
    finally:
        docker_api.remove_service(stranger)


def test_swarm_needs_a_registry(busybox_image: str, folder: ServiceFolder) -> None:
    runtime = SwarmRuntime(templates_dir=TEMPLATES, base_image=busybox_image, registry="")
    with pytest.raises(BuildError, match="needs \\[docker\\] registry"):
        runtime.apply(folder.deployment(1))


@engine
def test_observe_is_one_listing(runtime: SwarmRuntime, folder: ServiceFolder) -> None:
    runtime.apply(folder.deployment(1))
    with engine_calls(runtime) as calls:
        assert runtime.observe()[folder.name].state is ServiceState.RUNNING
    assert calls == ["services", "tasks", "nodes"]  # one listing of each: services, their tasks, the nodes
