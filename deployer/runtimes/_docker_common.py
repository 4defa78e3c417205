"""What the Docker and Swarm runtimes share: the engine connection, error translation,
ownership labels, image builds and retention, and container settings from a deployment.

Nothing from ``docker.errors`` (or the HTTP library under it) leaves this package:
an unreachable engine is ``RuntimeUnavailable``, a failed build ``BuildError``, any
other refusal ``ApplyError``. Neither runtime module imports the other; both import this.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import re
import shlex
import tempfile
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import docker.errors
import docker.types
import jinja2
import requests.exceptions

from deployer.errors import ApplyError, BuildError, DeployerError, Reason, RuntimeUnavailable
from deployer.model.deployment import Deployment
from deployer.model.desired import DesiredService
from deployer.safety import UnsafePath, contained

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "unix:///var/run/docker.sock"
DOCKERFILE_TEMPLATE = "docker/Dockerfile.j2"
LABEL_MANAGED = "deployer.managed"
LABEL_SERVICE = "deployer.service"
LABEL_SPEC_HASH = "deployer.spec-hash"
LABEL_REVISION = "deployer.revision"
LABEL_CONTEXT = "deployer.context"
MANAGED_FILTER = f"{LABEL_MANAGED}=true"
# Inside a container the service must listen on every interface to be reachable through
# the published port; the host side of the port is what is bound to loopback.
CONTAINER_HOST = "0.0.0.0"
OUTPUT_TAIL_CHARS = 4000
# A quick client for check(): /healthz must not hang for the long operations' timeout.
_CHECK_TIMEOUT = 5.0
_MEMORY_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}
_IMAGE_REFERENCE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/:@-]{0,254}$")
_CREDENTIALS = re.compile(r"//[^/@]*@")


@dataclass(frozen=True)
class ImageBuild:
    """The image a deployment runs: its reference, whether it was reused, and the build's tail."""

    image: str
    reused: bool
    output_tail: str
    duration: float


class ContainerConflict(ApplyError):
    """A container or swarm service holds the name deployer needs but is not deployer's."""


def safe_url(url: str) -> str:
    """``url`` without credentials, for messages."""
    return _CREDENTIALS.sub("//", url)


def explanation(exc: Exception) -> str:
    """The engine's own sentence for an API error, else the exception text."""
    text = getattr(exc, "explanation", None) or str(exc)
    return str(text).strip()


class Engine:
    """A lazily connected ``docker.APIClient`` (API version negotiated: Debian's engine speaks 1.41).

    Connecting is deferred to the first call so a daemon whose engine is down still
    starts; a failed connection is retried on the next call.
    """

    def __init__(self, base_url: str = "", *, timeout: float = 120.0) -> None:
        self.base_url = base_url or DEFAULT_BASE_URL
        self.timeout = timeout
        self._clients: dict[float, Any] = {}
        self._lock = threading.Lock()

    def api(self) -> Any:
        return self._client(self.timeout)

    def ping(self) -> None:
        """Raise ``RuntimeUnavailable`` unless the engine answers within a few seconds."""
        with self.errors("docker engine"):
            self._client(_CHECK_TIMEOUT).ping()

    def _client(self, timeout: float) -> Any:
        with self._lock:
            client = self._clients.get(timeout)
            if client is None:
                client = docker.APIClient(base_url=self.base_url, version="auto", timeout=timeout)
                self._clients[timeout] = client
            return client

    @contextmanager
    def errors(self, where: str) -> Iterator[None]:
        """Translate docker and connection errors raised inside into ``deployer.errors``."""
        try:
            yield
        except DeployerError:
            raise
        except docker.errors.APIError as exc:
            raise ApplyError(f"{where}: the docker engine refused: {explanation(exc)}") from exc
        except (docker.errors.DockerException, requests.exceptions.RequestException, ConnectionError) as exc:
            # The SDK talks HTTP through requests (connection errors, timeouts); DockerException
            # covers a failed API version negotiation when the socket is missing.
            raise RuntimeUnavailable(
                f"docker engine at {safe_url(self.base_url)} is unreachable ({type(exc).__name__}); "
                "docker and swarm services wait until it is back"
            ) from exc


# -- deployment → container settings ----------------------------------------------------


def labels(deployment: Deployment) -> dict[str, str]:
    """Ownership labels: deployer only ever touches what carries ``deployer.managed=true``."""
    return {
        LABEL_MANAGED: "true",
        LABEL_SERVICE: deployment.name,
        LABEL_SPEC_HASH: deployment.desired.spec_hash,
        LABEL_REVISION: str(deployment.revision),
    }


def command(desired: DesiredService) -> list[str] | None:
    """The manifest command split like a shell (none runs it), ``${PORT}``/``${HOST}`` substituted.

    ``None`` when the manifest has no command: the image's own CMD runs.
    """
    if not desired.command:
        return None
    port = str(desired.port)
    return [part.replace("${PORT}", port).replace("${HOST}", CONTAINER_HOST) for part in shlex.split(desired.command)]


def environment(deployment: Deployment) -> list[str]:
    """``KEY=value`` entries, sorted: the deployment's environment with HOST for a container."""
    env = {**deployment.environment, "HOST": CONTAINER_HOST, "PORT": str(deployment.port), **deployment.secret_env}
    return [f"{key}={value}" for key, value in sorted(env.items())]


def memory_bytes(text: str | None) -> int | None:
    """``resources.memory`` ("512m", "2g", "1.5g", "1000000") in bytes."""
    if not text:
        return None
    unit = text[-1].lower() if text[-1].isalpha() else ""
    number = text[:-1] if unit else text
    return int(float(number) * _MEMORY_UNITS[unit])


def nano_cpus(cpus: float | None) -> int | None:
    return int(cpus * 1_000_000_000) if cpus else None


def check_memory(api: Any, deployment: Deployment) -> None:
    """Refuse a memory limit above the host's memory (the engine would accept it silently)."""
    wanted = memory_bytes(deployment.desired.resources.memory)
    if wanted is None:
        return
    total = int(api.info().get("MemTotal") or 0)
    if total and wanted > total:
        raise ApplyError(
            f"service {deployment.name}: resources.memory {deployment.desired.resources.memory} is more than "
            f"this host has ({total / 1024**3:.1f} GiB); lower it in service.yaml"
        )


def decode_tail(data: bytes, max_bytes: int) -> str:
    """The last ``max_bytes`` of ``data``, starting on a UTF-8 character boundary."""
    tail = data[-max_bytes:] if max_bytes > 0 else b""
    start = 0
    while start < min(3, len(tail)) and tail[start] & 0xC0 == 0x80:
        start += 1  # skip continuation bytes of a character cut by the window
    return tail[start:].decode("utf-8", errors="replace")


def log_lines(max_bytes: int) -> int:
    """How many lines to ask the engine for (it tails by lines, not bytes)."""
    return max(50, max_bytes // 16)


def ensure_names_free(kind: str, names: Iterable[str], service: str, found: Iterable[dict[str, Any]]) -> None:
    """Raise ``ContainerConflict`` naming both sides when an unmanaged object holds one of ``names``."""
    wanted = set(names)
    for item in found:
        name, item_labels = item["name"], item.get("labels") or {}
        if name in wanted and (item_labels.get(LABEL_MANAGED) != "true" or item_labels.get(LABEL_SERVICE) != service):
            raise ContainerConflict(
                f"service {service}: a {kind} named {name!r} ({str(item['id'])[:12]}) already exists and is not "
                f"managed by deployer for this service; deployer never takes one over: rename or remove {name!r}"
            )


# -- images -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Recipe:
    """How to build a service's image: its Dockerfile, or the rendered template."""

    dockerfile: str | None
    rendered: str | None
    context_key: str


class ImageBuilder:
    """Builds, reuses, pushes and prunes the images of deployer's services.

    Tag ``[registry/]deployer/<service>:<short sha>-<spec hash>``. Before building, an
    image with the same *context key* is looked up and tagged again: the key covers the
    git tree of the service folder, the Dockerfile (or rendered template) and build
    args, so a push that does not change the build context reuses the image. Images
    carry the ownership labels, so retention and removal touch only deployer's own.
    """

    def __init__(
        self, engine: Engine, *, base_image: str, templates_dir: Path, keep_images: int = 3,
        registry: str = "", build_timeout: float = 1800.0,
    ) -> None:
        self.engine = engine
        self.base_image = base_image
        self.templates_dir = templates_dir
        self.keep_images = max(1, keep_images)
        self.registry = registry.rstrip("/")
        self.build_timeout = build_timeout

    def reference(self, desired: DesiredService) -> str:
        prefix = f"{self.registry}/" if self.registry else ""
        return f"{prefix}deployer/{desired.name}:{desired.sha[:7]}-{desired.short_hash}"

    def exists(self, reference: str) -> bool:
        try:
            self.engine.api().inspect_image(reference)
        except docker.errors.ImageNotFound:
            return False
        return True

    def ensure(self, deployment: Deployment) -> ImageBuild:
        """The deployment's image: already tagged, reused by context key, or built now."""
        started = time.monotonic()
        reference = self.reference(deployment.desired)
        if self.exists(reference):
            return ImageBuild(reference, True, f"reused image {reference}", time.monotonic() - started)
        recipe = self.recipe(deployment)
        if self._retag(deployment.name, recipe.context_key, reference):
            return ImageBuild(reference, True, f"reused image with the same build context as {reference}",
                              time.monotonic() - started)
        tail = self._build(deployment, recipe, reference)
        return ImageBuild(reference, False, tail, time.monotonic() - started)

    def recipe(self, deployment: Deployment) -> Recipe:
        desired = deployment.desired
        dockerfile = _service_dockerfile(deployment)
        rendered = None if dockerfile else render_dockerfile(self.templates_dir, self._template_context(desired))
        key = _context_key(desired, dockerfile, rendered)
        return Recipe(dockerfile, rendered, key)

    def _template_context(self, desired: DesiredService) -> dict[str, Any]:
        argv = command(desired)
        if argv is None:
            raise BuildError(f"service {desired.name}: runtime {desired.runtime} needs 'command' in service.yaml "
                             "when the service folder has no Dockerfile")
        if not _IMAGE_REFERENCE.fullmatch(self.base_image):
            raise BuildError(f"[docker] base_image {self.base_image!r} is not an image reference")
        requirements = desired.requirements
        return {
            "name": desired.name,
            "base_image": self.base_image,
            "requirements": requirements,
            "pyproject": bool(requirements and Path(requirements).name == "pyproject.toml"),
            "command": argv,
            "health_command": _python_health_command(desired.health.path),
        }

    def _retag(self, name: str, context_key: str, reference: str) -> bool:
        api = self.engine.api()
        found = api.images(filters={"label": [MANAGED_FILTER, f"{LABEL_SERVICE}={name}",
                                              f"{LABEL_CONTEXT}={context_key}"]})
        if not found:
            return False
        repository, tag = reference.rsplit(":", 1)
        api.tag(found[0]["Id"], repository, tag)
        return True

    def _build(self, deployment: Deployment, recipe: Recipe, reference: str) -> str:
        with tempfile.TemporaryDirectory(prefix="deployer-dockerfile-") as scratch:
            dockerfile = recipe.dockerfile
            if recipe.rendered is not None:
                # Outside the context: docker-py sends it under a name the engine drops from COPY.
                path = Path(scratch) / "Dockerfile"
                path.write_text(recipe.rendered, encoding="utf-8")
                dockerfile = str(path)
            try:
                stream = self.engine.api().build(
                    path=str(deployment.workdir), dockerfile=dockerfile, tag=reference, rm=True, forcerm=True,
                    pull=False, decode=True, timeout=self.build_timeout, use_config_proxy=False,
                    buildargs=dict(deployment.desired.docker.build_args) or None,
                    labels={LABEL_MANAGED: "true", LABEL_SERVICE: deployment.name, LABEL_CONTEXT: recipe.context_key},
                )
            except docker.errors.APIError as exc:
                raise BuildError(f"service {deployment.name}: docker build failed: {explanation(exc)}") from exc
            return _follow_build(deployment.name, stream)

    def push(self, reference: str) -> str:
        """Push ``reference`` to the registry; return it pinned by digest (``name:tag@sha256:…``)."""
        repository, tag = reference.rsplit(":", 1)
        digest = ""
        for event in self.engine.api().push(repository, tag=tag, stream=True, decode=True):
            if "error" in event:
                raise BuildError(f"push of {reference} to {self.registry} failed: {event['error']}",
                                 output=str(event.get("errorDetail", "")))
            digest = (event.get("aux") or {}).get("Digest", digest)
        return f"{reference}@{digest}" if digest else reference

    def prune(self, name: str, current: str) -> list[str]:
        """Keep the ``keep_images`` newest images of ``name`` (``current`` always); remove the rest.

        An image a container still uses is refused by the engine and simply kept.
        """
        api = self.engine.api()
        current_id = api.inspect_image(current)["Id"]
        images = api.images(filters={"label": [MANAGED_FILTER, f"{LABEL_SERVICE}={name}"]})
        ordered = sorted(images, key=lambda image: (image["Id"] != current_id, -int(image.get("Created") or 0)))
        removed: list[str] = []
        for image in ordered[self.keep_images:]:
            removed.extend(self._remove_image(image))
        return removed

    def remove_all(self, name: str) -> None:
        for image in self.engine.api().images(filters={"label": [MANAGED_FILTER, f"{LABEL_SERVICE}={name}"]}):
            self._remove_image(image)

    def _remove_image(self, image: dict[str, Any]) -> list[str]:
        api = self.engine.api()
        removed: list[str] = []
        tags = [tag for tag in image.get("RepoTags") or [] if tag != "<none>:<none>"]
        for reference in tags or [image["Id"]]:
            try:
                api.remove_image(reference)
            except docker.errors.NotFound:
                continue
            except docker.errors.APIError as exc:
                log.info("image %s kept: %s", reference, explanation(exc))
                break
            removed.append(reference)
        return removed


def _service_dockerfile(deployment: Deployment) -> str | None:
    """The service's own Dockerfile relative to its folder, or None to use the template."""
    named = deployment.desired.docker.dockerfile
    candidate = named or "Dockerfile"
    try:
        path = contained(deployment.workdir, candidate)
    except UnsafePath:
        raise BuildError(f"service {deployment.name}: docker.dockerfile {named!r} leads outside "
                         "the service folder") from None
    if path.is_file():
        return str(path.relative_to(deployment.workdir.resolve()))
    if named:
        raise BuildError(f"service {deployment.name}: docker.dockerfile {named!r} not found in the service folder "
                         f"({deployment.desired.path})")
    return None


def _context_key(desired: DesiredService, dockerfile: str | None, rendered: str | None) -> str:
    content = {
        "tree": desired.tree,
        "dockerfile": dockerfile,
        "rendered": rendered,
        "build_args": dict(sorted(desired.docker.build_args.items())),
    }
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:32]


def _python_health_command(path: str) -> list[str]:
    url = f"'http://127.0.0.1:' + os.environ['PORT'] + {path!r}"
    return ["python", "-c", f"import os, urllib.request; urllib.request.urlopen({url}, timeout=3)"]


def _follow_build(name: str, stream: Iterable[dict[str, Any]]) -> str:
    """Read the build's event stream; return its tail, or raise ``BuildError`` with it."""
    lines: deque[str] = deque(maxlen=400)
    try:
        for event in stream:
            if "stream" in event:
                lines.append(str(event["stream"]))
            if "error" in event:
                raise BuildError(f"service {name}: docker build failed: {str(event['error']).strip()}",
                                 output=_tail(lines, str(event["error"])))
    except docker.errors.APIError as exc:  # e.g. a Dockerfile the engine cannot parse
        raise BuildError(f"service {name}: docker build failed: {explanation(exc)}", output=_tail(lines)) from exc
    return _tail(lines)


def _tail(lines: Iterable[str], last: str = "") -> str:
    text = "".join(lines) + (last if last.endswith("\n") or not last else last + "\n")
    return text[-OUTPUT_TAIL_CHARS:]


@functools.lru_cache(maxsize=8)
def _jinja(templates_dir: Path) -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(templates_dir)),
        undefined=jinja2.StrictUndefined,
        autoescape=False,  # noqa: S701 - a Dockerfile, not HTML; values go through the json filter
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["json"] = lambda value: json.dumps(value, ensure_ascii=True)
    return env


def render_dockerfile(templates_dir: Path, context: dict[str, Any]) -> str:
    """``templates/docker/Dockerfile.j2`` rendered: deterministic for the same context."""
    try:
        return _jinja(templates_dir).get_template(DOCKERFILE_TEMPLATE).render(context)
    except jinja2.TemplateError as exc:
        raise BuildError(f"service {context.get('name')}: template {templates_dir / DOCKERFILE_TEMPLATE}: {exc}") \
            from exc


def device_requests(gpus: int) -> list[Any] | None:
    if gpus <= 0:
        return None
    return [docker.types.DeviceRequest(count=gpus, capabilities=[["gpu"]])]


def port_conflict(name: str, address: str, port: int, detail: str) -> ApplyError:
    return ApplyError(
        f"service {name}: port {address}:{port} is already in use by another process ({detail}); "
        "free the port or choose another in service.yaml", reason=Reason.PORT_CONFLICT,
    )
