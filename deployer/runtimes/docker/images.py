"""Service images: built from the service's Dockerfile or the template, reused, pushed, pruned.

An image with the same build context (git tree, Dockerfile, build args) is tagged again
instead of rebuilt; images carry the ownership labels, so retention touches only deployer's
own. A failed build is ``BuildError`` with the tail of its output.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import re
import tempfile
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker.errors
import jinja2

from deployer.errors import BuildError
from deployer.model.deployment import Deployment
from deployer.model.desired import DesiredService
from deployer.runtimes.docker.engine import Engine, explanation
from deployer.runtimes.docker.ownership import LABEL_CONTEXT, LABEL_MANAGED, LABEL_SERVICE, MANAGED_FILTER
from deployer.runtimes.docker.spec import command
from deployer.safety import UnsafePath, contained

log = logging.getLogger(__name__)

DOCKERFILE_TEMPLATE = "docker/Dockerfile.j2"
OUTPUT_TAIL_CHARS = 4000
_IMAGE_REFERENCE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/:@-]{0,254}$")


@dataclass(frozen=True)
class ImageBuild:
    """The image a deployment runs: its reference, whether it was reused, and the build's tail."""

    image: str
    reused: bool
    output_tail: str
    duration: float


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
        if self._retag(deployment.service, recipe.context_key, reference):
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
                    # Images belong to the service, not to a slot: both slots share them.
                    labels={LABEL_MANAGED: "true", LABEL_SERVICE: deployment.service,
                            LABEL_CONTEXT: recipe.context_key},
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
    content: dict[str, object] = {
        "tree": desired.tree,
        "dockerfile": dockerfile,
        "rendered": rendered,
        "build_args": dict(sorted(desired.docker.build_args.items())),
    }
    if desired.artifacts:  # placed in the folder before the build, so part of the context (absent: keys as before)
        content["artifacts"] = sorted([entry.path, entry.sha256] for entry in desired.artifacts)
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
