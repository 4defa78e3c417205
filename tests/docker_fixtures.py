"""Pytest plugin for the Docker and Swarm tests: the engine, a scratch busybox image, services.

Nothing is pulled: the base image is ``FROM scratch`` + Debian's static busybox serving
``busybox httpd -f -p $PORT -h /www``; ``/health`` is a file, and since busybox httpd runs
scripts only under ``/cgi-bin/``, the contract's ``POST /predict`` is ``POST /cgi-bin/predict``.
Teardown removes, by label and this session's name prefix, everything the tests created.
"""

from __future__ import annotations

import hashlib
import io
import secrets
import shutil
import tarfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import docker.errors
import httpx
import pytest

from deployer.model.deployment import Deployment
from deployer.model.desired import DesiredService
from deployer.model.manifest import DockerSpec, HealthSpec, ResourcesSpec
from deployer.runtimes.docker import LABEL_SERVICE, MANAGED_FILTER
from tests.conftest import unavailable
from tests.helpers import ROOT, free_port

BUSYBOX = Path("/bin/busybox")
TEST_LABEL = "deployer-test"
TEMPLATES = ROOT / "templates"
REGISTRY = "127.0.0.1:5000"
SESSION_PREFIX = f"dt{secrets.token_hex(2)}"

# Stand-ins for the Python base image, so the Dockerfile.j2 path builds with no network:
# "python -c ..." (the template's health check) probes /health, "pip" records its arguments.
_FAKE_PYTHON = '#!/bin/sh\nexec wget -q -O /dev/null "http://127.0.0.1:${PORT}/health"\n'
_FAKE_PIP = '#!/bin/sh\necho "fake pip: $*"\nmkdir -p /srv && echo "$*" > /srv/pip-args\n'
_PREDICT_CGI = (
    "#!/bin/sh\n"
    'echo "Content-Type: application/json"\n'
    "echo\n"
    'echo "{\\"version\\": \\"$(cat /www/version)\\", \\"method\\": \\"$REQUEST_METHOD\\"}"\n'
)
_BASE_DOCKERFILE = f"""FROM scratch
COPY busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]
COPY python pip /usr/local/bin/
COPY www /www
ENV PATH=/usr/local/bin:/bin
LABEL {TEST_LABEL}=base
HEALTHCHECK --interval=1s --timeout=2s --retries=3 CMD wget -q -O /dev/null "http://127.0.0.1:$PORT/health"
CMD ["/bin/sh", "-c", "exec httpd -f -p \\"$PORT\\" -h /www"]
"""


@pytest.fixture(scope="session")
def docker_api() -> Iterator[Any]:
    """A low-level client of the local engine; skips (fails in CI) without one."""
    try:
        api = docker.APIClient(base_url="unix:///var/run/docker.sock", version="auto", timeout=120)
        api.ping()
    except (docker.errors.DockerException, OSError) as exc:
        unavailable(f"no Docker engine on /var/run/docker.sock ({type(exc).__name__}); "
                    "run scripts/docker-services.sh")
        raise AssertionError("unreachable") from exc
    yield api
    _cleanup(api)
    api.close()


@pytest.fixture(scope="session")
def busybox_image(docker_api: Any) -> str:
    """``FROM scratch`` + static busybox + /www (health file, predict CGI): built, never pulled."""
    if not BUSYBOX.is_file() or b"ld-linux" in BUSYBOX.read_bytes()[:8192]:  # an ELF interpreter: dynamic
        unavailable("a static /bin/busybox is needed (Debian's busybox-static); run scripts/docker-services.sh")
    files = _base_files()
    tag = f"deployer-test/busybox:{hashlib.sha256(repr(sorted(files.items())).encode()).hexdigest()[:12]}"
    context = _tar_context(files)
    for event in docker_api.build(fileobj=context, custom_context=True, tag=tag, rm=True, decode=True,
                                  pull=False, labels={TEST_LABEL: "base"}):
        if "error" in event:
            raise AssertionError(f"building the busybox test image failed: {event['error']}")
    return tag


@pytest.fixture(scope="session")
def registry() -> str:
    """The loopback registry that scripts/docker-services.sh runs; skips (fails in CI) without it."""
    try:
        httpx.get(f"http://{REGISTRY}/v2/", timeout=3).raise_for_status()
    except httpx.HTTPError as exc:
        unavailable(f"no image registry on {REGISTRY} ({type(exc).__name__}); run scripts/docker-services.sh")
    return REGISTRY


@pytest.fixture(scope="session")
def swarm_manager(docker_api: Any) -> None:
    swarm = docker_api.info().get("Swarm") or {}
    if swarm.get("LocalNodeState") != "active" or not swarm.get("ControlAvailable"):
        unavailable("this engine is not a swarm manager; run scripts/docker-services.sh")


@dataclass
class ServiceFolder:
    """A service's folder as a checkout would hold it, and the deployments made from it."""

    name: str
    path: Path
    port: int
    runtime: str = "docker"
    commits: int = 0
    desired_fields: dict[str, Any] = field(default_factory=dict)

    def write(self, version: str, *, dockerfile: str | None = "default", base: str = "",
              files: dict[str, str] | None = None) -> None:
        """Replace the folder's content: /www/version says ``version``."""
        shutil.rmtree(self.path, ignore_errors=True)
        (self.path / "www").mkdir(parents=True)
        (self.path / "www" / "version").write_text(version + "\n")
        if dockerfile == "default":
            dockerfile = f"FROM {base}\nCOPY www/version /www/version\n"
        if dockerfile is not None:
            (self.path / "Dockerfile").write_text(dockerfile)
        for name, text in (files or {}).items():
            (self.path / name).parent.mkdir(parents=True, exist_ok=True)
            (self.path / name).write_text(text)

    def deployment(self, revision: int, **fields: Any) -> Deployment:
        """A deployment of the folder as it is now (a new commit each call, tree from the content)."""
        self.commits += 1
        values: dict[str, Any] = {
            "name": self.name, "source": "test",
            "sha": hashlib.sha1(f"{self.name}-{self.commits}".encode()).hexdigest(),
            "tree": _tree_id(self.path), "runtime": self.runtime, "port": self.port,
            "health": HealthSpec(path="/health", timeout=20), "resources": ResourcesSpec(), "docker": DockerSpec(),
            **self.desired_fields, **fields,
        }
        desired = DesiredService(**values)
        environment = {"PORT": str(self.port), "HOST": "127.0.0.1", "SERVICE_VERSION": str(revision)}
        return Deployment(desired=desired, revision=revision, workdir=self.path, environment=environment,
                          secret_env={"TEST_SECRET": "s3cret"})


@pytest.fixture
def service_folder(tmp_path: Path, request: pytest.FixtureRequest) -> ServiceFolder:
    """A fresh service (unique name, free port) in this test's tmp dir."""
    slug = "".join(ch for ch in request.node.name.lower().replace("_", "-") if ch.isalnum() or ch == "-")
    name = f"{SESSION_PREFIX}-{slug.removeprefix('test-')}"[:40].rstrip("-")
    return ServiceFolder(name=name, path=tmp_path / name, port=free_port())


def http_get(port: int, path: str = "/health", timeout: float = 3.0) -> httpx.Response:
    """Through the port published on loopback: the only way tests reach a container."""
    return httpx.get(f"http://127.0.0.1:{port}{path}", timeout=timeout)


def served_version(port: int) -> str:
    return http_get(port, "/version").text.strip()


def predict(port: int) -> dict[str, Any]:
    """The contract's POST /predict, which busybox httpd serves through CGI at /cgi-bin/predict."""
    response = httpx.post(f"http://127.0.0.1:{port}/cgi-bin/predict", content=b"{}", timeout=3.0)
    response.raise_for_status()
    result: dict[str, Any] = response.json()
    return result


def _base_files() -> dict[str, tuple[bytes, int]]:
    return {
        "Dockerfile": (_BASE_DOCKERFILE.encode(), 0o644),
        "busybox": (BUSYBOX.read_bytes(), 0o755),
        "python": (_FAKE_PYTHON.encode(), 0o755),
        "pip": (_FAKE_PIP.encode(), 0o755),
        "www/health": (b"ok\n", 0o644),
        "www/version": (b"base\n", 0o644),
        "www/cgi-bin/predict": (_PREDICT_CGI.encode(), 0o755),
    }


def _tar_context(files: dict[str, tuple[bytes, int]]) -> io.BytesIO:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, (data, mode) in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), mode
            tar.addfile(info, io.BytesIO(data))
    buffer.seek(0)
    return buffer


def _tree_id(path: Path) -> str:
    """What the reconciler's git tree id stands for: a hash of the folder's content."""
    digest = hashlib.sha1()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(str(file.relative_to(path)).encode() + b"\0" + file.read_bytes())
    return digest.hexdigest()


def _cleanup(api: Any) -> None:
    """Remove what this session created: its services, containers and images, by label and prefix."""
    ours = f"{SESSION_PREFIX}-"
    for service in _safe(lambda: api.services(filters={"label": MANAGED_FILTER}), []):
        if str((service["Spec"].get("Labels") or {}).get(LABEL_SERVICE, "")).startswith(ours):
            _safe(lambda s=service: api.remove_service(s["ID"]), None)
    for label in (MANAGED_FILTER, TEST_LABEL):
        for container in api.containers(all=True, filters={"label": label}):
            labels = container.get("Labels") or {}
            if str(labels.get(LABEL_SERVICE, "")).startswith(ours) or labels.get(TEST_LABEL) == SESSION_PREFIX:
                _safe(lambda c=container: api.remove_container(c["Id"], force=True), None)
    for image in api.images(filters={"label": MANAGED_FILTER}):
        if str((image.get("Labels") or {}).get(LABEL_SERVICE, "")).startswith(ours):
            _remove_image(api, image)
    for image in api.images(filters={"label": f"{TEST_LABEL}=base"}):
        _remove_image(api, image)


def _remove_image(api: Any, image: dict[str, Any]) -> None:
    tags = [tag for tag in image.get("RepoTags") or [] if tag != "<none>:<none>"]
    for tag in tags or [image["Id"]]:
        _safe(lambda t=tag: api.remove_image(t, force=True), None)


def _safe(call: Any, default: Any) -> Any:
    try:
        return call()
    except docker.errors.APIError:
        return default


@contextmanager
def engine_calls(runtime: Any) -> Iterator[list[str]]:
    """The names of the engine API calls ``runtime`` makes inside the block."""
    api = runtime.engine.api()
    calls: list[str] = []

    class Counting:
        def __getattr__(self, name: str) -> Any:
            calls.append(name)
            return getattr(api, name)

    runtime.engine._clients[runtime.engine.timeout] = Counting()
    try:
        yield calls
    finally:
        runtime.engine._clients[runtime.engine.timeout] = api
