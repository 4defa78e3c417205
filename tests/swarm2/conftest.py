"""A real two-node swarm for the tests: ``scripts/two-node-swarm.sh`` (two private dockerds in network namespaces).

Nothing here touches the system engine or its swarm: node 1 (manager) and node 2 (worker) are
dockerds of their own, each in a namespace with its own address, pulling from a registry on the
host side of their bridge. Made once per session, torn down at its end (``down`` also cleans a
half-made one). Outside CI a machine that cannot make namespaces (not root, no iproute2) skips.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import docker
import docker.errors
import pytest

from tests.conftest import unavailable
from tests.docker_fixtures import TEST_LABEL, _base_files, _tar_context
from tests.helpers import ROOT

SCRIPT = ROOT / "scripts" / "two-node-swarm.sh"


@dataclass(frozen=True)
class TwoNodes:
    """Where the two-node swarm answers: its manager's and worker's engines, the registry, the node addresses."""

    manager: str
    worker: str
    registry: str
    nodes: tuple[str, str]

    def script(self, *args: str, timeout: float = 120) -> str:
        return _script(*args, timeout=timeout)


def _script(*args: str, timeout: float = 120) -> str:
    done = subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"two-node-swarm.sh {' '.join(args)} exited {done.returncode}: "
                           f"{done.stderr.strip()[-2000:]}")
    return done.stdout


@pytest.fixture(scope="session")
def two_nodes() -> Iterator[TwoNodes]:
    if os.geteuid() != 0:
        unavailable("the two-node swarm needs root (network namespaces, its own dockerds)")
    try:
        out = _script("up")
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
        _script_quietly("down")
        unavailable(f"could not make the two-node swarm: {exc}")
        raise AssertionError("unreachable") from exc
    values = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    first, second = values["DEPLOYER_SWARM2_NODES"].split(",")
    try:
        yield TwoNodes(values["DEPLOYER_SWARM2_MANAGER"], values["DEPLOYER_SWARM2_WORKER"],
                       values["DEPLOYER_SWARM2_REGISTRY"], (first, second))
    finally:
        _script_quietly("down")


def _script_quietly(*args: str) -> None:
    try:
        _script(*args, timeout=180)
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
        print(f"two-node-swarm.sh {' '.join(args)}: {exc}")


@pytest.fixture(scope="session")
def manager_api(two_nodes: TwoNodes) -> Iterator[Any]:
    api = docker.APIClient(base_url=two_nodes.manager, version="auto", timeout=120)
    yield api
    api.close()


@pytest.fixture(scope="session")
def manager_busybox(manager_api: Any) -> str:
    """The tests' ``FROM scratch`` busybox base image, built on the manager's engine (node 1)."""
    files = _base_files()
    tag = f"deployer-test/busybox:{hashlib.sha256(repr(sorted(files.items())).encode()).hexdigest()[:12]}"
    for event in manager_api.build(fileobj=_tar_context(files), custom_context=True, tag=tag, rm=True, decode=True,
                                   pull=False, labels={TEST_LABEL: "base"}):
        if "error" in event:
            raise AssertionError(f"building the busybox test image on node 1 failed: {event['error']}")
    return tag


@pytest.fixture(autouse=True)
def _services_removed(request: pytest.FixtureRequest) -> Iterator[None]:
    """Each test leaves the two-node swarm without services (the next one counts tasks per node)."""
    yield
    if "two_nodes" not in request.fixturenames:
        return
    api = request.getfixturevalue("manager_api")
    for service in api.services():
        with contextlib.suppress(docker.errors.APIError):
            api.remove_service(service["ID"])
