"""Docker runtime: one container per service, owned through its labels, never by name alone.

``apply`` creates the new container beside the old (as ``NAME.next``), stops the old, starts
the new, removes the old and renames. One host port cannot be bound twice: a replace refuses
connections for a moment (zero downtime needs the gateway). Any failure removes the new
container and starts the old one again, so the host keeps what ran before.
"""

from __future__ import annotations

import io
import logging
import tarfile
import threading
import time
from pathlib import Path, PurePosixPath
from typing import Any

import docker.errors

from deployer.errors import ApplyError, DeployerError, Reason
from deployer.model.actual import ActualService, ServiceState
from deployer.model.cause import root_cause
from deployer.model.deployment import SLOTS, Deployment, instance_name, split_instance
from deployer.runtimes.docker.engine import Engine, decode_tail, explanation, log_lines
from deployer.runtimes.docker.images import ImageBuild, ImageBuilder
from deployer.runtimes.docker.ownership import (
    LABEL_REVISION,
    LABEL_SERVICE,
    LABEL_SPEC_HASH,
    MANAGED_FILTER,
    ensure_names_free,
    labels,
)
from deployer.runtimes.docker.spec import check_memory, command, device_requests, environment, memory_bytes, nano_cpus

__all__ = ["ContainerExited", "DockerRuntime"]

log = logging.getLogger(__name__)

RUNTIME_NAME = "docker"
# Not a character a service name may hold, so NAME.next never clashes with another service.
NEXT_SUFFIX = ".next"
_SWARM_TASK_LABEL = "com.docker.swarm.task.id"
_POLL_SECONDS = 0.1
_BIND_ERRORS = ("address already in use", "port is already allocated")
# "exited" and "created" are installed but not running: the planner starts them again. That is
# also what a dockerd restart can leave behind (unless-stopped containers that stayed exited).
_STATES = {
    "running": ServiceState.RUNNING,
    "restarting": ServiceState.FAILED,  # unless-stopped restarts a crashing process: a crash loop
    "exited": ServiceState.STOPPED,
    "created": ServiceState.STOPPED,
    "paused": ServiceState.STOPPED,
    "dead": ServiceState.FAILED,
    "removing": ServiceState.FAILED,
}


class ContainerExited(ApplyError):
    """The new container did not stay up for ``start_seconds``; ``output`` holds its log tail."""

    def __init__(self, message: str, *, output: str = "") -> None:
        super().__init__(message)
        self.output = output


class DockerRuntime:
    """Runs services as labelled containers on one Docker engine (see the module docstring).

    Ports are published on ``bind_address`` only (loopback by default). A container must
    survive ``start_seconds`` after start to count as started, like supervisor's startsecs.
    ``registry`` is accepted so both docker runtimes take the same ``[docker]`` settings;
    containers run local images and nothing is pushed (the swarm runtime pushes).
    Secrets reach the process as environment, so ``docker inspect`` shows them to whoever
    may use the engine's socket (who can do that is root on the host anyway).
    """

    name = RUNTIME_NAME

    def __init__(
        self,
        base_url: str = "",
        *,
        bind_address: str = "127.0.0.1",
        base_image: str = "python:3.11-slim",
        templates_dir: Path,
        keep_images: int = 3,
        registry: str = "",
        timeout: float = 120.0,
        start_seconds: float = 1.0,
        stop_timeout: int = 10,
    ) -> None:
        self.engine = Engine(base_url, timeout=timeout)
        self.images = ImageBuilder(self.engine, base_image=base_image, templates_dir=templates_dir,
                                   keep_images=keep_images)
        self.bind_address = bind_address
        self.registry = registry
        self.start_seconds = start_seconds
        self.stop_timeout = stop_timeout
        # Services whose apply in this process failed (the engine cut it short), and when it ended: only
        # their NAME.next is ours to tidy (other daemons may share the engine and apply right now).
        self._cut_short: dict[str, float] = {}
        self._applying: set[str] = set()
        self._applying_guard = threading.Lock()

    # -- the Runtime protocol -------------------------------------------------------

    def check(self) -> None:
        self.engine.ping()

    def observe(self) -> dict[str, ActualService]:
        """One container listing (``all=True``, label filter); unlabelled containers are never seen."""
        listed_at = time.monotonic()
        with self.engine.errors("docker runtime: observe"):
            rows = self.engine.api().containers(all=True, filters={"label": [MANAGED_FILTER]})
            grouped: dict[str, list[dict[str, Any]]] = {}
            for row in map(_row, rows):
                service = row["labels"].get(LABEL_SERVICE)
                if service and _SWARM_TASK_LABEL not in row["labels"]:
                    grouped.setdefault(service, []).append(row)
            for name, group in grouped.items():
                grouped[name] = self._without_leftovers(name, group, listed_at)
        return {name: _actual(name, group) for name, group in sorted(grouped.items()) if group}

    def _without_leftovers(self, name: str, rows: list[dict[str, Any]], listed_at: float) -> list[dict[str, Any]]:
        """Remove the NAME.next an apply of this process left when the engine cut it short.

        Its own clean-up needed the engine too, and the next apply that would discard it may
        never come: the engine's restart policy starts the service's container again and
        nothing is left to deploy. Only a never-started NAME.next beside NAME, listed after that
        apply ended and with no apply under way, is taken for it.
        """
        with self._applying_guard:
            ended = self._cut_short.get(name)
            if ended is None or ended >= listed_at or name in self._applying:
                return rows
            del self._cut_short[name]  # looked for once: found now or never left
        leftovers = [row for row in rows if row["name"] == name + NEXT_SUFFIX and row["state"] == "created"
                     and any(other["name"] == name for other in rows)]
        if not leftovers:
            return rows
        try:
            self._discard(leftovers)  # by id: a .next an apply starting now creates is another container
        except docker.errors.APIError as exc:  # best effort: the next listing tries again
            log.warning("service %s: cannot remove a leftover container yet: %s", name, explanation(exc))
            return rows
        log.info("service %s: removed %s, left by a deploy the engine interrupted", name,
                 ", ".join(row["id"][:12] for row in leftovers))
        return [row for row in rows if row not in leftovers]

    def inspect(self, name: str) -> ActualService | None:
        """The service's containers only (a label filter on its name)."""
        with self.engine.errors(f"service {name}: inspect"):
            rows = self.engine.api().containers(all=True,
                                                filters={"label": [MANAGED_FILTER, f"{LABEL_SERVICE}={name}"]})
        group = [row for row in map(_row, rows) if _SWARM_TASK_LABEL not in row["labels"]]
        return _actual(name, group) if group else None

    def build(self, deployment: Deployment) -> ImageBuild:
        """The deployment's image: already tagged, reused (same build context), or built now."""
        with self.engine.errors(f"service {deployment.name}: image"):
            return self.images.ensure(deployment)

    def apply(self, deployment: Deployment) -> None:
        """Replace whatever runs for the service with ``deployment`` (see the module docstring)."""
        name = deployment.name
        with self._applying_guard:
            self._applying.add(name)
            self._cut_short.pop(name, None)  # this apply discards any leftover itself
        try:
            self._apply(deployment)
        except DeployerError:  # the engine gone, or refusing as it shuts down: its clean-up may have failed
            with self._applying_guard:
                self._cut_short[name] = time.monotonic()
            raise
        finally:
            with self._applying_guard:
                self._applying.discard(name)

    def _apply(self, deployment: Deployment) -> None:
        name = deployment.name
        with self.engine.errors(f"service {name}"):
            image = self.images.ensure(deployment).image
            check_memory(self.engine.api(), deployment)
            present = self._present(name)
            ensure_names_free("container", (name, name + NEXT_SUFFIX), name, present)
            # A NAME.next is what an interrupted apply left behind; it never served.
            leftovers = [row for row in present if row["name"] == name + NEXT_SUFFIX]
            self._discard(leftovers)
            new = self._create(deployment, image)
            self._replace(deployment, new, [row for row in present if row not in leftovers])
            removed = self.images.prune(deployment.service, image)
            if removed:
                log.info("service %s: removed old images %s", name, ", ".join(removed))

    def start(self, name: str) -> None:
        with self.engine.errors(f"service {name}"):
            mine = self._mine(name)
            if not mine:
                raise ApplyError(f"service {name}: no container to start; deploy it first")
            row = _primary(name, mine)
            if row["state"] == "paused":
                self.engine.api().unpause(row["id"])
            elif row["state"] != "running":
                self._start(name, row["id"])

    def stop(self, name: str) -> None:
        with self.engine.errors(f"service {name}"):
            self._stop(self._mine(name))

    def remove(self, name: str) -> None:
        """Stop and remove the instance's containers, and the service's images with its last one; absent is fine."""
        with self.engine.errors(f"service {name}"):
            mine = self._mine(name)
            self._stop(mine)
            self._discard(mine)
            service, _ = split_instance(name)
            if not any(self._mine(instance_name(service, slot)) for slot in (None, *SLOTS)):
                self.images.remove_all(service)

    def logs(self, name: str, max_bytes: int = 8192) -> str:
        with self.engine.errors(f"service {name}: logs"):
            mine = self._mine(name)
            if not mine:
                return ""
            return self._logs(_primary(name, mine)["id"], max_bytes)

    # -- containers -----------------------------------------------------------------

    def _mine(self, name: str) -> list[dict[str, Any]]:
        rows = self.engine.api().containers(all=True, filters={"label": [MANAGED_FILTER, f"{LABEL_SERVICE}={name}"]})
        return [row for row in map(_row, rows) if _SWARM_TASK_LABEL not in row["labels"]]

    def _present(self, name: str) -> list[dict[str, Any]]:
        """The service's own containers plus anything holding its names (to refuse a takeover)."""
        pattern = f"^/{name}({NEXT_SUFFIX.replace('.', '[.]')})?$"
        named = [_row(row) for row in self.engine.api().containers(all=True, filters={"name": pattern})]
        exact = [row for row in named if row["name"] in (name, name + NEXT_SUFFIX)]
        seen = {row["id"] for row in exact}
        return exact + [row for row in self._mine(name) if row["id"] not in seen]

    def _create(self, deployment: Deployment, image: str) -> str:
        desired = deployment.desired
        api = self.engine.api()
        host_config = api.create_host_config(
            port_bindings={deployment.port: (self.bind_address, deployment.port)},
            restart_policy={"Name": "unless-stopped"},
            init=True,
            mem_limit=memory_bytes(desired.resources.memory),
            nano_cpus=nano_cpus(desired.resources.cpus),
            device_requests=device_requests(desired.resources.gpus),
        )
        created = api.create_container(
            image, name=deployment.name + NEXT_SUFFIX, command=command(desired, deployment.port),
            environment=environment(deployment), labels=labels(deployment), ports=[deployment.port],
            host_config=host_config, detach=True,
            use_config_proxy=False, stop_timeout=self.stop_timeout,
        )
        container = str(created["Id"])
        try:
            self._copy_files(container, image, deployment)
        except docker.errors.APIError as exc:
            self._discard([{"id": container}])
            raise ApplyError(f"service {deployment.name}: cannot copy its 'files:' into the container: "
                             f"{explanation(exc)}") from exc
        return container

    def _copy_files(self, container: str, image: str, deployment: Deployment) -> None:
        """``files:`` copied into the created container before it starts, mode 0600, under the image's WORKDIR.

        Never into the image (its layers would keep a secret for anyone who can pull or inspect
        it, and for every rollback), nor a bind mount of a host file: the copy lives in the
        container's own layer and goes with it. The owner is the image's USER when it is numeric
        (``1000`` or ``1000:1000``), else root.
        """
        if not deployment.files:
            return
        config = self.engine.api().inspect_image(image).get("Config") or {}
        base = PurePosixPath(config.get("WorkingDir") or "/")
        uid, gid = _numeric_user(str(config.get("User") or ""))
        self.engine.api().put_archive(container, "/", _archive(base, deployment.files, uid, gid))

    def _replace(self, deployment: Deployment, new: str, old: list[dict[str, Any]]) -> None:
        was_running = [row for row in old if row["state"] in ("running", "restarting")]
        self._stop(old)  # the same host port cannot be bound twice: this is the ~1 s gap
        try:
            self._start(deployment.name, new)
        except DeployerError:
            self._discard([{"id": new}])
            self._restart(deployment.name, was_running)
            raise
        self._discard(old)
        self.engine.api().rename(new, deployment.name)

    def _start(self, name: str, container: str) -> None:
        try:
            self.engine.api().start(container)
        except docker.errors.APIError as exc:
            text = explanation(exc)
            if any(marker in text for marker in _BIND_ERRORS):
                raise port_conflict(name, self.bind_address, self._port_of(container), _short(text)) from exc
            if "[[gpu]]" in text:
                text += " (resources.gpus needs the NVIDIA container toolkit on this host)"
            raise ApplyError(f"service {name}: the container did not start: {text}") from exc
        self._settle(name, container)

    def _settle(self, name: str, container: str) -> None:
        """Fail when the container exits (or crash-loops) within ``start_seconds`` of its start."""
        deadline = time.monotonic() + self.start_seconds
        while True:
            state = self.engine.api().inspect_container(container)["State"]
            if state.get("Restarting") or not state.get("Running") or state.get("RestartCount", 0) > 0:
                output = self._logs(container, 4000)
                raise ContainerExited(
                    f"service {name}: the container exited at once (exit code {state.get('ExitCode')}): "
                    f"{root_cause(output) or '(no output)'}", output=output,
                )
            if time.monotonic() >= deadline:
                return
            time.sleep(_POLL_SECONDS)

    def _port_of(self, container: str) -> int:
        bindings = self.engine.api().inspect_container(container)["HostConfig"].get("PortBindings") or {}
        for entries in bindings.values():
            for entry in entries or []:
                return int(entry.get("HostPort") or 0)
        return 0

    def _stop(self, rows: list[dict[str, Any]]) -> None:
        for row in rows:
            try:
                self.engine.api().stop(row["id"], timeout=self.stop_timeout)
            except docker.errors.NotFound:
                continue

    def _discard(self, rows: list[dict[str, Any]]) -> None:
        for row in rows:
            try:
                self.engine.api().remove_container(row["id"], force=True)
            except docker.errors.NotFound:
                continue

    def _restart(self, name: str, rows: list[dict[str, Any]]) -> None:
        """Start the previous containers again after a failed replace; report, don't raise."""
        for row in rows:
            try:
                self.engine.api().start(row["id"])
            except docker.errors.APIError as exc:
                log.error("service %s: could not start the previous container %s again: %s",
                          name, row["name"], explanation(exc))

    def _logs(self, container: str, max_bytes: int) -> str:
        try:
            data = self.engine.api().logs(container, stdout=True, stderr=True, tail=log_lines(max_bytes))
        except docker.errors.NotFound:
            return ""
        return decode_tail(bytes(data), max_bytes)


def _row(container: dict[str, Any]) -> dict[str, Any]:
    names = container.get("Names") or ["/?"]
    return {
        "id": str(container["Id"]),
        "name": str(names[0]).lstrip("/"),
        "labels": dict(container.get("Labels") or {}),
        "state": str(container.get("State") or ""),
        "status": str(container.get("Status") or ""),
        "image": str(container.get("Image") or ""),
    }


def _primary(name: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The container that stands for the service: a running one first, then the one named NAME."""
    return sorted(rows, key=lambda row: (row["state"] != "running", row["name"] != name))[0]


def _actual(name: str, rows: list[dict[str, Any]]) -> ActualService:
    row = _primary(name, rows)
    revision = row["labels"].get(LABEL_REVISION, "")
    detail = f"container {row['id'][:12]} {row['image']}: {row['status'].lower() or row['state']}"
    if len(rows) > 1:
        detail += f" (+{len(rows) - 1} more container(s))"
    return ActualService(
        name=name,
        runtime=RUNTIME_NAME,
        state=_STATES.get(row["state"], ServiceState.UNKNOWN),
        spec_hash=row["labels"].get(LABEL_SPEC_HASH),
        revision=int(revision) if revision.isdigit() else None,
        detail=detail,
    )


def _short(text: str) -> str:
    """The end of an engine message ("bind: address already in use"), not its endpoint ids."""
    return ": ".join(text.split(": ")[-2:])


def port_conflict(name: str, address: str, port: int, detail: str) -> ApplyError:
    return ApplyError(
        f"service {name}: port {address}:{port} is already in use by another process ({detail}); "
        "free the port or choose another in service.yaml", reason=Reason.PORT_CONFLICT,
    )


def _numeric_user(user: str) -> tuple[int, int]:
    """(uid, gid) of an image's USER when written as numbers; root otherwise."""
    uid, _, gid = user.partition(":")
    if not uid.isdigit():
        return 0, 0
    return int(uid), int(gid) if gid.isdigit() else 0


def _archive(base: PurePosixPath, files: tuple[tuple[str, bytes], ...], uid: int, gid: int) -> bytes:
    """A tar of the files only (no folder entries: existing folders of the image keep their modes)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for path, data in files:
            info = tarfile.TarInfo(str(base / path).lstrip("/"))
            info.size, info.mode, info.uid, info.gid = len(data), 0o600, uid, gid
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()
