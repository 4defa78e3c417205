"""Artifacts reach containers: placed in the service folder, they are part of the build context.

A real engine builds from the scratch busybox image (tests/docker_fixtures.py); its httpd
serves the weight file, so the bytes are read back from inside the container. A new digest
with the same git tree is a new context: the image is built again, never reused with old weights.
"""

from __future__ import annotations

import os
from typing import Any

import pytest

from deployer.artifacts import Artifacts, ContentCache, Fetchers, FetchOptions
from deployer.model.manifest import ArtifactSpec
from deployer.runtimes.docker import DockerRuntime
from tests.artifact_servers import FileServer, sha256
from tests.docker_fixtures import TEMPLATES, ServiceFolder, http_get
from tests.helpers import wait_for

pytestmark = pytest.mark.usefixtures("docker_api")


def test_weights_in_the_build_context_reach_the_container(
        service_folder: ServiceFolder, busybox_image: str, file_server: FileServer, tmp_path: Any) -> None:
    runtime = DockerRuntime(templates_dir=TEMPLATES, base_image=busybox_image, keep_images=3)
    artifacts = Artifacts(ContentCache(tmp_path / "cache", budget=10**9), Fetchers(FetchOptions()))
    dockerfile = f"FROM {busybox_image}\nCOPY www/version /www/version\nCOPY models/w.bin /www/w.bin\n"
    versions = [os.urandom(50_000), os.urandom(50_000)]
    images = []
    for revision, weights in enumerate(versions, start=1):
        service_folder.write("v1", dockerfile=dockerfile)  # the same tree both times: only the weights change
        entry = ArtifactSpec(url=file_server.put(f"w{revision}.bin", weights), sha256=sha256(weights),
                             path="models/w.bin")
        artifacts.place(service_folder.name, [entry], service_folder.path)
        deployment = service_folder.deployment(revision, artifacts=(entry,))
        built = runtime.build(deployment)
        assert not built.reused  # a new digest is a new build context
        images.append(built.image)
        runtime.apply(deployment)
        wait_for(lambda w=weights: http_get(service_folder.port, "/w.bin").content == w, 20,  # type: ignore[misc]
                 f"revision {revision}'s weights served from the container")
    assert images[0] != images[1]
    runtime.remove(service_folder.name)
