"""The Docker runtime against a real engine: deploy, replace, roll back, drift, bad input.

Containers are reached only through ports published on 127.0.0.1; every image is built
locally from the scratch busybox image (tests/docker_fixtures.py), nothing is pulled.
"""

from __future__ import annotations

import socket
import time
import uuid
from dataclasses import replace
from typing import Any

import pytest
from pydantic import ValidationError

from deployer.errors import ApplyError, BuildError, Reason, RuntimeUnavailable
from deployer.model.actual import ServiceState
from deployer.model.manifest import FileSpec, ResourcesSpec, ServiceManifest
from deployer.runtimes.docker import LABEL_SERVICE, MANAGED_FILTER, ContainerConflict, ContainerExited, DockerRuntime
from tests.docker_fixtures import TEMPLATES, TEST_LABEL, ServiceFolder, engine_calls, http_get, predict, served_version
from tests.helpers import wait_for

pytestmark = pytest.mark.usefixtures("docker_api")


@pytest.fixture
def runtime(busybox_image: str) -> DockerRuntime:
    return DockerRuntime(templates_dir=TEMPLATES, base_image=busybox_image, keep_images=3)


@pytest.fixture
def folder(service_folder: ServiceFolder, busybox_image: str) -> ServiceFolder:
    service_folder.write("v1", base=busybox_image)
    return service_folder


def containers_of(api: Any, name: str) -> list[dict[str, Any]]:
    return list(api.containers(all=True, filters={"label": [MANAGED_FILTER, f"{LABEL_SERVICE}={name}"]}))


def images_of(api: Any, name: str) -> list[dict[str, Any]]:
    return list(api.images(filters={"label": [MANAGED_FILTER, f"{LABEL_SERVICE}={name}"]}))


def healthy(port: int) -> bool:
    return http_get(port).status_code == 200


def test_unreachable_engine_is_runtime_unavailable() -> None:
    runtime = DockerRuntime(base_url="unix:///nonexistent.sock", templates_dir=TEMPLATES)
    with pytest.raises(RuntimeUnavailable, match="unreachable"):
        runtime.check()
    with pytest.raises(RuntimeUnavailable):
        runtime.observe()


def test_deploy_change_and_roll_back(runtime: DockerRuntime, folder: ServiceFolder, docker_api: Any) -> None:
    first = folder.deployment(1)
    built = runtime.build(first)
    assert not built.reused and built.image.startswith(f"deployer/{folder.name}:")
    started = time.monotonic()
    runtime.apply(first)
    wait_for(lambda: healthy(folder.port), 10, "the first container's /health")
    push_to_running = time.monotonic() - started
    assert served_version(folder.port) == "v1" and predict(folder.port)["version"] == "v1"
    seen = runtime.observe()[folder.name]
    assert (seen.state, seen.spec_hash, seen.revision) == (ServiceState.RUNNING, first.desired.spec_hash, 1)
    first_id = containers_of(docker_api, folder.name)[0]["Id"]
    assert first_id[:12] in seen.detail and built.image in seen.detail

    folder.write("v2", base=runtime.images.base_image)
    second = folder.deployment(2)
    assert not runtime.build(second).reused
    runtime.apply(second)
    wait_for(lambda: served_version(folder.port) == "v2", 10, "v2 to be served")
    (current,) = containers_of(docker_api, folder.name)  # the old container is gone
    assert current["Id"] != first_id and current["Names"] == [f"/{folder.name}"]
    assert current["Labels"]["deployer.revision"] == "2"

    # Rollback: the reconciler applies revision 1's deployment again; its image is still tagged.
    images_before = {image["Id"] for image in images_of(docker_api, folder.name)}
    assert runtime.build(first).reused
    started = time.monotonic()
    runtime.apply(first)
    rollback = time.monotonic() - started
    wait_for(lambda: served_version(folder.port) == "v1", 10, "v1 to be served again")
    assert {image["Id"] for image in images_of(docker_api, folder.name)} == images_before
    print(f"\nfigures: build {built.duration:.2f}s, push-to-healthy {push_to_running:.2f}s, "
          f"rollback apply {rollback:.2f}s")


def test_container_settings(runtime: DockerRuntime, folder: ServiceFolder, docker_api: Any) -> None:
    deployment = folder.deployment(7, resources=ResourcesSpec(memory="64m", cpus=0.5))
    runtime.apply(deployment)
    info = docker_api.inspect_container(folder.name)
    labels = info["Config"]["Labels"]
    assert labels["deployer.managed"] == "true" and labels["deployer.service"] == folder.name
    assert labels["deployer.spec-hash"] == deployment.desired.spec_hash and labels["deployer.revision"] == "7"
    host = info["HostConfig"]
    assert host["Init"] is True and host["RestartPolicy"]["Name"] == "unless-stopped"
    assert host["PortBindings"] == {f"{folder.port}/tcp": [{"HostIp": "127.0.0.1", "HostPort": str(folder.port)}]}
    assert host["Memory"] == 64 * 1024**2 and host["NanoCpus"] == 500_000_000
    env = set(info["Config"]["Env"])
    assert {"HOST=0.0.0.0", f"PORT={folder.port}", "TEST_SECRET=s3cret", "SERVICE_VERSION=7"} <= env
    assert "s3cret" not in repr(deployment)
    wait_for(lambda: healthy(folder.port), 10, "/health")


def test_same_build_context_reuses_the_image(runtime: DockerRuntime, folder: ServiceFolder, docker_api: Any) -> None:
    first = folder.deployment(1)
    runtime.apply(first)
    changed = folder.deployment(2, env={"MODEL": "other"})  # a new commit and spec, same folder content
    built = runtime.build(changed)
    assert built.reused and built.image != runtime.build(first).image
    assert docker_api.inspect_image(built.image)["Id"] == docker_api.inspect_image(runtime.build(first).image)["Id"]


def test_template_dockerfile(runtime: DockerRuntime, service_folder: ServiceFolder, docker_api: Any) -> None:
    folder = service_folder
    # A requirements file of this run's own: the engine's build cache (kept across runs on one machine)
    # must not answer the install step from an earlier run.
    requirements = f"nothing==1  # {uuid.uuid4().hex}\n"
    folder.write("tpl", dockerfile=None, files={"www/health": "ok\n", "requirements.txt": requirements})
    command = "httpd -f -p ${PORT} -h /srv/service/www"
    deployment = folder.deployment(1, command=command, requirements="requirements.txt")
    built = runtime.build(deployment)
    assert "fake pip: install --no-cache-dir -r requirements.txt" in built.output_tail
    runtime.apply(deployment)
    wait_for(lambda: served_version(folder.port) == "tpl", 10, "the templated service")
    config = docker_api.inspect_image(built.image)["Config"]
    assert config["Cmd"] == ["httpd", "-f", "-p", str(folder.port), "-h", "/srv/service/www"]
    assert config["Healthcheck"]["Test"][:2] == ["CMD", "python"]
    assert sorted(_listing(docker_api, built.image, "/srv/service")) == ["requirements.txt", "www"]
    # Only the command changed: the requirements layer and the code come from the build cache.
    rebuilt = runtime.build(folder.deployment(2, command=command + " -v", requirements="requirements.txt"))
    assert not rebuilt.reused and "Using cache" in rebuilt.output_tail and "fake pip" not in rebuilt.output_tail


def test_template_needs_a_command(runtime: DockerRuntime, service_folder: ServiceFolder) -> None:
    service_folder.write("x", dockerfile=None)
    with pytest.raises(BuildError, match="needs 'command'"):
        runtime.build(service_folder.deployment(1))


def test_drift_stopped_and_removed(runtime: DockerRuntime, folder: ServiceFolder, docker_api: Any) -> None:
    runtime.apply(folder.deployment(1))
    docker_api.stop(folder.name, timeout=5)  # what a dockerd restart can leave too: an exited container
    assert runtime.observe()[folder.name].state is ServiceState.STOPPED
    assert runtime.inspect(folder.name) == runtime.observe()[folder.name]
    runtime.start(folder.name)
    assert runtime.observe()[folder.name].state is ServiceState.RUNNING
    wait_for(lambda: healthy(folder.port), 10, "/health after start")
    docker_api.remove_container(folder.name, force=True)
    assert folder.name not in runtime.observe()
    assert runtime.inspect(folder.name) is None
    with pytest.raises(ApplyError, match="deploy it first"):
        runtime.start(folder.name)


def test_unmanaged_container_with_the_same_name_is_a_conflict(
    runtime: DockerRuntime, folder: ServiceFolder, docker_api: Any, busybox_image: str
) -> None:
    from tests.docker_fixtures import SESSION_PREFIX

    deployment = folder.deployment(1)
    runtime.apply(deployment)
    docker_api.remove_container(folder.name, force=True)
    intruder = docker_api.create_container(busybox_image, name=folder.name, command=["sleep", "300"],
                                           labels={TEST_LABEL: SESSION_PREFIX})["Id"]
    docker_api.start(intruder)
    assert folder.name not in runtime.observe()  # never reported, so never managed
    with pytest.raises(ContainerConflict) as caught:
        runtime.apply(deployment)
    assert f"service {folder.name}" in str(caught.value) and f"named '{folder.name}'" in str(caught.value)
    assert docker_api.inspect_container(intruder)["State"]["Running"]  # left alone
    runtime.remove(folder.name)
    assert docker_api.inspect_container(intruder)["State"]["Running"]


def test_keeps_the_last_three_images(runtime: DockerRuntime, folder: ServiceFolder, docker_api: Any) -> None:
    references = []
    for version in range(1, 6):
        folder.write(f"v{version}", base=runtime.images.base_image)
        deployment = folder.deployment(version)
        runtime.apply(deployment)
        references.append(runtime.images.reference(deployment.desired))
        assert len(images_of(docker_api, folder.name)) <= 3
    tags = {tag for image in images_of(docker_api, folder.name) for tag in image["RepoTags"]}
    assert tags == set(references[2:])


def test_failing_dockerfile_is_a_build_error(runtime: DockerRuntime, service_folder: ServiceFolder,
                                             busybox_image: str, docker_api: Any) -> None:
    service_folder.write("x", dockerfile=f"FROM {busybox_image}\nRUN echo compiling-model && exit 3\n")
    deployment = service_folder.deployment(1)
    with pytest.raises(BuildError) as caught:
        runtime.apply(deployment)
    assert caught.value.reason is Reason.BUILD_FAILED and "returned a non-zero code: 3" in str(caught.value)
    assert "compiling-model" in caught.value.output
    assert containers_of(docker_api, service_folder.name) == []


def test_container_exiting_at_once_keeps_the_previous_one(runtime: DockerRuntime, folder: ServiceFolder,
                                                         docker_api: Any) -> None:
    runtime.apply(folder.deployment(1))
    previous = docker_api.inspect_container(folder.name)["Id"]
    broken = folder.deployment(2, command="sh -c 'echo model-file-missing >&2; exit 3'")
    with pytest.raises(ContainerExited) as caught:
        runtime.apply(broken)
    assert "exit code 3" in str(caught.value) and "model-file-missing" in caught.value.output
    (left,) = containers_of(docker_api, folder.name)  # no NAME.next left behind
    assert left["Id"] == previous and left["State"] == "running"
    wait_for(lambda: served_version(folder.port) == "v1", 10, "the previous container to serve again")
    assert runtime.observe()[folder.name].revision == 1


def test_crash_loop_is_observed_as_failed(runtime: DockerRuntime, folder: ServiceFolder) -> None:
    runtime.start_seconds = 0.0  # let a late crash through apply, as a slow-loading model would
    runtime.apply(folder.deployment(1, command="sh -c 'sleep 0.3; exit 4'"))
    seen = wait_for(lambda: (s := runtime.observe()[folder.name]).state is ServiceState.FAILED and s, 10,
                    "observe to report the crash loop")
    assert "restarting" in seen.detail


def test_port_already_bound(runtime: DockerRuntime, folder: ServiceFolder, docker_api: Any) -> None:
    with socket.socket() as holder:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        holder.bind(("127.0.0.1", folder.port))
        holder.listen()
        with pytest.raises(ApplyError) as caught:
            runtime.apply(folder.deployment(1))
    assert caught.value.reason is Reason.PORT_CONFLICT
    assert f"127.0.0.1:{folder.port} is already in use" in str(caught.value)
    assert containers_of(docker_api, folder.name) == []
    assert docker_api.containers(all=True, filters={"name": folder.name}) == []


def test_resources_the_host_cannot_give(runtime: DockerRuntime, folder: ServiceFolder, docker_api: Any) -> None:
    with pytest.raises(ApplyError, match="more than this host has"):
        runtime.apply(folder.deployment(1, resources=ResourcesSpec(memory="4096g")))
    with pytest.raises(ApplyError, match="CPU"):
        runtime.apply(folder.deployment(2, resources=ResourcesSpec(cpus=1000)))
    if "nvidia" not in (docker_api.info().get("Runtimes") or {}):
        with pytest.raises(ApplyError, match="did not start"):
            runtime.apply(folder.deployment(3, resources=ResourcesSpec(gpus=1)))
    assert containers_of(docker_api, folder.name) == []


def test_privileged_and_host_network_are_not_in_the_manifest() -> None:
    for key, value in (("privileged", True), ("network_mode", "host"), ("host_network", True)):
        with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
            ServiceManifest.model_validate({"name": "svc", key: value})


def test_observe_is_one_listing(runtime: DockerRuntime, folder: ServiceFolder) -> None:
    runtime.apply(folder.deployment(1))
    with engine_calls(runtime) as calls:
        assert folder.name in runtime.observe()
    assert calls == ["containers"]


def test_logs_and_remove(runtime: DockerRuntime, folder: ServiceFolder, docker_api: Any) -> None:
    command = "sh -c 'echo hello-from-$SERVICE_VERSION; exec httpd -f -p $PORT -h /www'"
    runtime.apply(folder.deployment(3, command=command))
    assert "hello-from-3" in wait_for(lambda: runtime.logs(folder.name), 5, "log output")
    runtime.stop(folder.name)
    assert runtime.observe()[folder.name].state is ServiceState.STOPPED
    runtime.stop(folder.name)  # already stopped is fine
    runtime.remove(folder.name)
    assert folder.name not in runtime.observe()
    assert containers_of(docker_api, folder.name) == [] and images_of(docker_api, folder.name) == []
    runtime.remove(folder.name)  # already absent is fine
    assert runtime.logs(folder.name) == ""


def _listing(api: Any, image: str, path: str) -> list[str]:
    container = api.create_container(image, command=["ls", "-A", path], labels={TEST_LABEL: "listing"})["Id"]
    try:
        api.start(container)
        api.wait(container, timeout=10)
        return api.logs(container).decode().split()  # type: ignore[no-any-return]
    finally:
        api.remove_container(container, force=True)


def test_files_are_copied_into_the_container_before_start(runtime: DockerRuntime, folder: ServiceFolder,
                                                          docker_api: Any) -> None:
    """``files:`` reach the container (mode 0600, under the image's WORKDIR), never the image or the folder."""
    entries = (FileSpec.model_validate({"path": "www/conf.txt", "secret": "CONF"}),)
    deployment = replace(folder.deployment(3, files=entries), files=(("www/conf.txt", b"value-from-a-secret\n"),))
    runtime.apply(deployment)
    wait_for(lambda: healthy(folder.port), 10, "/health")
    assert http_get(folder.port, "/conf.txt").text == "value-from-a-secret\n"
    def stat() -> str:  # an exec's output is now and then empty on a loaded engine (attach race): ask again
        run = docker_api.exec_create(folder.name, ["stat", "-c", "%a %u", "/www/conf.txt"])
        return str(docker_api.exec_start(run["Id"]).decode().strip())

    assert wait_for(stat, 10, "stat of /www/conf.txt in the container") == "600 0"
    assert not (folder.path / "www" / "conf.txt").exists()  # nothing written into the build context
    image = docker_api.inspect_container(folder.name)["Image"]
    fresh = docker_api.create_container(image, command=["cat", "/www/conf.txt"], labels={TEST_LABEL: "true"})
    try:
        docker_api.start(fresh["Id"])
        docker_api.wait(fresh["Id"], timeout=10)
        assert b"value-from-a-secret" not in docker_api.logs(fresh["Id"])  # the image does not hold it
    finally:
        docker_api.remove_container(fresh["Id"], force=True)
