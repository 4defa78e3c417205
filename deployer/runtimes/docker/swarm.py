"""Swarm runtime: one ``docker service`` per service, its image pushed to ``[docker] registry``.

Ports are published in host mode (the ingress mesh needs IPVS, missing on this kernel), so a
node runs one task of a service: replicas are spread one per node, at most the ready nodes.
Updates roll back on failure; start-first when a spare node can take the new task, else
stop-first (a short gap, as with docker). ``apply`` returns once swarm completed the rollout.
"""

from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path
from typing import Any

import docker.errors
import docker.types

from deployer.errors import ApplyError, BuildError, RuntimeUnavailable
from deployer.model.actual import ActualService, ServiceState
from deployer.model.cause import root_cause
from deployer.model.deployment import Deployment
from deployer.model.desired import DesiredService
from deployer.runtimes.docker.engine import Engine, decode_tail, log_lines
from deployer.runtimes.docker.images import ImageBuild, ImageBuilder
from deployer.runtimes.docker.ownership import (
    LABEL_REVISION,
    LABEL_SERVICE,
    LABEL_SPEC_HASH,
    MANAGED_FILTER,
    ensure_names_free,
    labels,
)
from deployer.runtimes.docker.spec import check_memory, command, environment, memory_bytes, nano_cpus
from deployer.runtimes.docker.tasks import TaskSummary, eligible, nodes_by_id, summarise

__all__ = ["SwarmRuntime", "UpdateOrder", "service_spec"]

log = logging.getLogger(__name__)

RUNTIME_NAME = "swarm"
LABEL_REPLICAS = "deployer.replicas"
GPU_RESOURCE = "NVIDIA-GPU"
_SECOND = 1_000_000_000
_POLL_SECONDS = 0.25
_TASK_FAILED = {"failed", "rejected"}
_UPDATE_FAILED = {"paused", "rollback_started", "rollback_paused", "rollback_completed"}
_UPDATE_BUSY = {"updating", "rollback_started"}


class UpdateOrder:
    START_FIRST = "start-first"
    STOP_FIRST = "stop-first"

    @staticmethod
    def choose(replicas: int, ready_nodes: int) -> str:
        """start-first needs a node without a task of the service to place the new one on."""
        return UpdateOrder.START_FIRST if ready_nodes > replicas else UpdateOrder.STOP_FIRST


class SwarmRuntime:
    """Runs services as swarm services on the manager the engine at ``base_url`` is.

    Why host mode, one task per node: the routing mesh (ingress) needs IPVS, which this
    kernel lacks (a published ingress port refuses connections). In host mode each task
    binds the node's port itself, so two tasks of a service can never share a node: swarm
    leaves the second one pending ("host-mode port already in use"), and a start-first
    update on a node with no spare capacity waits forever for a place for the new task.
    Hence ``Placement.MaxReplicas=1``, replicas above the ready nodes are refused before
    anything changes, and start-first is used only when a node is free (stop-first else).
    Host mode binds every address of the node (``bind_address`` cannot apply): firewall it,
    or front it with the gateway. Environment (secrets included) is in the service spec.

    ``monitor`` is how long swarm watches each new task before calling an update done
    (a failure inside it rolls the update back); new tasks must also stay up for
    ``start_seconds`` (like the docker runtime); ``converge_timeout`` bounds apply's wait.
    """

    name = RUNTIME_NAME

    def __init__(
        self,
        base_url: str = "",
        *,
        base_image: str = "python:3.11-slim",
        templates_dir: Path,
        keep_images: int = 3,
        registry: str = "",
        timeout: float = 120.0,
        monitor: float = 5.0,
        converge_timeout: float = 120.0,
        start_seconds: float = 1.0,
        stop_timeout: int = 10,
    ) -> None:
        self.engine = Engine(base_url, timeout=timeout)
        self.images = ImageBuilder(self.engine, base_image=base_image, templates_dir=templates_dir,
                                   keep_images=keep_images, registry=registry)
        self.registry = registry
        self.monitor = monitor
        self.converge_timeout = converge_timeout
        self.start_seconds = start_seconds
        self.stop_timeout = stop_timeout

    # -- the Runtime protocol -------------------------------------------------------

    def check(self) -> None:
        self.engine.ping()
        with self.engine.errors("swarm runtime"):
            swarm = self.engine.api().info().get("Swarm") or {}
        if swarm.get("LocalNodeState") != "active" or not swarm.get("ControlAvailable"):
            raise RuntimeUnavailable("the docker engine is not a swarm manager (run `docker swarm init`); "
                                     "swarm services wait until it is one")

    def observe(self) -> dict[str, ActualService]:
        """One listing each of the managed services (label filter), their tasks and the nodes.

        Unlabelled services are never seen. Tasks say where each replica runs and why some do not
        (a node lost, no suitable node, an image pull that failed): a service with fewer running
        than asked is ``degraded``.
        """
        with self.engine.errors("swarm runtime: observe"):
            services = self.engine.api().services(filters={"label": MANAGED_FILTER}, status=True)
            return dict(sorted(self._with_tasks(services).items()))

    def inspect(self, name: str) -> ActualService | None:
        """The service's own entry only (a label filter on its name), with its tasks."""
        with self.engine.errors(f"service {name}: inspect"):
            services = self.engine.api().services(filters={"label": [MANAGED_FILTER, f"{LABEL_SERVICE}={name}"]},
                                                  status=True)
            return self._with_tasks(services).get(name)

    def addresses(self, name: str) -> tuple[str, ...]:
        """Where ``name`` answers: the address of every ready node running one of its tasks."""
        seen = self.inspect(name)
        return seen.addresses if seen is not None else ()

    def nodes_for(self, desired: DesiredService) -> tuple[str, ...]:
        """The ready, active nodes ``desired``'s placement constraints allow: where an update may put a task."""
        constraints = desired.placement.constraints if desired.placement is not None else []
        with self.engine.errors(f"service {desired.name}: nodes"):
            nodes = [node for node in self.engine.api().nodes() if node["Status"].get("State") == "ready"
                     and node["Spec"].get("Availability") == "active" and eligible(node, constraints)]
        return tuple(sorted(found.address for found in nodes_by_id(nodes).values()))

    def _with_tasks(self, services: list[dict[str, Any]]) -> dict[str, ActualService]:
        named = {str((s["Spec"].get("Labels") or {}).get(LABEL_SERVICE) or ""): s for s in services}
        named.pop("", None)
        if not named:
            return {}
        api = self.engine.api()
        tasks = api.tasks(filters={"service": [s["ID"] for s in named.values()]})
        nodes = nodes_by_id(api.nodes())
        by_service: dict[str, list[dict[str, Any]]] = {}
        for task in tasks:
            by_service.setdefault(str(task.get("ServiceID")), []).append(task)
        return {name: _actual(name, service, summarise(_replicas(service), by_service.get(service["ID"], []), nodes))
                for name, service in named.items()}

    def build(self, deployment: Deployment) -> ImageBuild:
        """Build (or reuse) the image and make sure the registry has it; ``image`` is pinned by digest."""
        if not self.registry:
            raise BuildError(f"service {deployment.name}: runtime swarm needs [docker] registry in deployer.toml "
                             "(e.g. 127.0.0.1:5000): every node pulls the service's image from it")
        with self.engine.errors(f"service {deployment.name}: image"):
            built = self.images.ensure(deployment)
            started = time.monotonic()
            # Pushed every time: layers the registry has cost one request, and a wiped registry heals.
            pinned = self.images.push(built.image)
            return ImageBuild(pinned, built.reused, built.output_tail, built.duration + time.monotonic() - started)

    def apply(self, deployment: Deployment) -> None:
        """Create or update the swarm service and wait until swarm reports the rollout done."""
        name = deployment.name
        image = self.build(deployment).image
        with self.engine.errors(f"service {name}"):
            api = self.engine.api()
            check_memory(api, deployment)
            nodes = self._ready_nodes(deployment)
            existing = self._find(name)
            spec = service_spec(deployment, image, ready_nodes=len(nodes), monitor=self.monitor,
                                stop_timeout=self.stop_timeout,
                                current_replicas=_replicas(existing) if existing is not None else 0)
            if existing is None:
                self._create(deployment, spec)
            else:
                self._update(deployment, existing, spec)
            self.images.prune(name, image.split("@", 1)[0])

    def start(self, name: str) -> None:
        """Scale a stopped service back to its replicas and wait for its tasks to run."""
        with self.engine.errors(f"service {name}"):
            service = self._find(name)
            if service is None:
                raise ApplyError(f"service {name}: no swarm service to start; deploy it first")
            replicas = int((service["Spec"].get("Labels") or {}).get(LABEL_REPLICAS, "1"))
            if _replicas(service) == replicas:
                return
            before = self._task_ids(service["ID"])
            self._scale(service, replicas)
            self._await_tasks(name, service["ID"], before, replicas, time.monotonic() + self.converge_timeout)

    def stop(self, name: str) -> None:
        """Scale to zero: the service stays installed (its spec and labels remain)."""
        with self.engine.errors(f"service {name}"):
            service = self._find(name)
            if service is not None and _replicas(service) != 0:
                self._scale(service, 0)

    def remove(self, name: str) -> None:
        with self.engine.errors(f"service {name}"):
            service = self._find(name)
            if service is not None:
                with contextlib.suppress(docker.errors.NotFound):  # removed meanwhile: the goal
                    self.engine.api().remove_service(service["ID"])
            self.images.remove_all(name)

    def logs(self, name: str, max_bytes: int = 8192) -> str:
        with self.engine.errors(f"service {name}: logs"):
            service = self._find(name)
            return "" if service is None else self._service_logs(service["ID"], max_bytes)

    # -- swarm services -------------------------------------------------------------

    def _find(self, name: str) -> dict[str, Any] | None:
        """The managed service called ``name``; an unmanaged one of that name is a conflict."""
        found = [s for s in self.engine.api().services(filters={"name": name}) if s["Spec"]["Name"] == name]
        rows = [{"name": s["Spec"]["Name"], "id": s["ID"], "labels": s["Spec"].get("Labels")} for s in found]
        ensure_names_free("swarm service", (name,), name, rows)
        return found[0] if found else None

    def _ready_nodes(self, deployment: Deployment) -> list[dict[str, Any]]:
        """Ready, active nodes its constraints allow; refuse replicas or GPUs they cannot hold (tasks would wait
        forever: "no suitable node")."""
        desired = deployment.desired
        constraints = desired.placement.constraints if desired.placement is not None else []
        nodes = [node for node in self.engine.api().nodes()
                 if node["Status"].get("State") == "ready" and node["Spec"].get("Availability") == "active"
                 and eligible(node, constraints)]
        if desired.replicas > len(nodes):
            allowed = f" its placement constraints ({', '.join(constraints)}) allow" if constraints else ""
            raise ApplyError(
                f"service {deployment.name}: replicas {desired.replicas} need {desired.replicas} swarm nodes, "
                f"{len(nodes)} ready{allowed}: ports are published in host mode, one task per node (no ingress mesh "
                "here); lower replicas in service.yaml or add nodes"
            )
        if desired.resources.gpus and not any(_node_gpus(node) >= desired.resources.gpus for node in nodes):
            raise ApplyError(f"service {deployment.name}: no swarm node advertises {desired.resources.gpus} "
                             f"{GPU_RESOURCE} generic resource(s); use runtime docker or configure the nodes")
        return nodes

    def _create(self, deployment: Deployment, spec: dict[str, Any]) -> None:
        api = self.engine.api()
        created = api.create_service(**spec)
        deadline = time.monotonic() + self.converge_timeout
        try:
            self._await_tasks(deployment.name, created["ID"], set(), deployment.desired.replicas, deadline)
        except ApplyError:
            api.remove_service(created["ID"])  # nothing ran before: leave nothing crash-looping
            raise

    def _update(self, deployment: Deployment, service: dict[str, Any], spec: dict[str, Any]) -> None:
        """Update in place; ``force_update`` replaces the tasks even when only labels changed."""
        api = self.engine.api()
        previous = (service.get("UpdateStatus") or {}).get("StartedAt")
        before = self._task_ids(service["ID"])
        force = int(service["Spec"]["TaskTemplate"].get("ForceUpdate") or 0) + 1
        spec["task_template"]["ForceUpdate"] = force
        api.update_service(service["ID"], service["Version"]["Index"], **spec)
        deadline = time.monotonic() + self.converge_timeout + deployment.desired.health.timeout
        self._await_update(deployment.name, service["ID"], previous, before, deadline)
        self._await_tasks(deployment.name, service["ID"], before, deployment.desired.replicas, deadline)

    def _await_update(self, name: str, service_id: str, previous: str | None, before: set[str],
                      deadline: float) -> None:
        """Wait for swarm's update to finish; a rolled-back or paused one is an ``ApplyError``."""
        while True:
            status = self.engine.api().inspect_service(service_id).get("UpdateStatus") or {}
            state = status.get("State", "")
            if status.get("StartedAt") != previous and state not in _UPDATE_BUSY:
                if state in _UPDATE_FAILED:
                    error = self._new_task_error(service_id, before)
                    raise self._failure(name, service_id, f"the update failed ({error}) and swarm "
                                        f"{state.replace('_', ' ')}: the previous spec runs again")
                if state == "completed":
                    return
            if time.monotonic() > deadline:
                raise ApplyError(f"service {name}: the swarm update did not finish in time (state {state or 'none'})")
            time.sleep(_POLL_SECONDS)

    def _await_tasks(self, name: str, service_id: str, before: set[str], replicas: int, deadline: float) -> None:
        """Wait until ``replicas`` tasks created after ``before`` ran ``start_seconds``; a failed one is an error."""
        up_since: float | None = None
        while True:
            tasks = [t for t in self.engine.api().tasks(filters={"service": service_id}) if t["ID"] not in before]
            failed = [t for t in tasks if t["Status"].get("State") in _TASK_FAILED]
            if failed:
                raise self._failure(name, service_id, f"a task failed: {_task_error(failed[0])}")
            running = [t for t in tasks if t["Status"].get("State") == "running" and t.get("DesiredState") == "running"]
            if len(running) >= replicas:
                up_since = up_since or time.monotonic()
                if time.monotonic() - up_since >= self.start_seconds:
                    return
            else:
                up_since = None
            if time.monotonic() > deadline:
                states = sorted({str(t["Status"].get("State")) for t in tasks}) or ["none"]
                raise ApplyError(f"service {name}: {len(running)}/{replicas} tasks running after the timeout "
                                 f"(task states: {', '.join(states)})")
            time.sleep(_POLL_SECONDS)

    def _new_task_error(self, service_id: str, before: set[str]) -> str:
        tasks = [t for t in self.engine.api().tasks(filters={"service": service_id}) if t["ID"] not in before]
        failed = [t for t in tasks if t["Status"].get("State") in _TASK_FAILED]
        return _task_error(failed[0]) if failed else "a new task did not stay up"

    def _failure(self, name: str, service_id: str, what: str) -> ApplyError:
        output = self._service_logs(service_id, 2000)
        return ApplyError(f"service {name}: {what}: {root_cause(output) or '(no output)'}")

    def _scale(self, service: dict[str, Any], replicas: int) -> None:
        mode = docker.types.ServiceMode("replicated", replicas=replicas)
        self.engine.api().update_service(service["ID"], service["Version"]["Index"], mode=mode,
                                         fetch_current_spec=True)

    def _task_ids(self, service_id: str) -> set[str]:
        return {str(task["ID"]) for task in self.engine.api().tasks(filters={"service": service_id})}

    def _service_logs(self, service_id: str, max_bytes: int) -> str:
        try:
            data = self.engine.api().service_logs(service_id, stdout=True, stderr=True, tail=log_lines(max_bytes))
        except docker.errors.APIError:
            return ""
        raw = data if isinstance(data, bytes) else b"".join(data)
        return decode_tail(raw, max_bytes)


def service_spec(deployment: Deployment, image: str, *, ready_nodes: int, monitor: float,
                 stop_timeout: int = 10, current_replicas: int = 0) -> dict[str, Any]:
    """Keyword arguments for ``create_service``/``update_service`` (pure, so it is testable as data).

    A node "has room" only if no task of the service is on it now either: scaling down while
    updating start-first let swarm place a new task on the node of a task still shutting down,
    whose container still held the host port ("port is already allocated"; measured).
    """
    desired = deployment.desired
    order = UpdateOrder.choose(max(desired.replicas, current_replicas), ready_nodes)
    update = {"parallelism": 1, "order": order, "monitor": int(monitor * _SECOND)}
    service_labels = {**labels(deployment), LABEL_REPLICAS: str(desired.replicas)}
    return {
        "name": deployment.name,
        "labels": service_labels,
        "task_template": _task_template(deployment, image, stop_timeout),
        "mode": docker.types.ServiceMode("replicated", replicas=desired.replicas),
        "update_config": docker.types.UpdateConfig(failure_action="rollback", **update),
        "rollback_config": docker.types.RollbackConfig(failure_action="pause", **update),
        # Host mode: the task binds the node's port itself; the ingress mesh needs IPVS.
        "endpoint_spec": docker.types.EndpointSpec(ports=[{
            "Protocol": "tcp", "PublishedPort": desired.port, "TargetPort": desired.port, "PublishMode": "host",
        }]),
    }


def _task_template(deployment: Deployment, image: str, stop_timeout: int) -> Any:
    desired = deployment.desired
    # Task containers are not labelled deployer.managed: the docker runtime must not see them.
    container = docker.types.ContainerSpec(
        image, args=command(desired), env=environment(deployment), init=True,
        labels={LABEL_SERVICE: deployment.name, "deployer.runtime": RUNTIME_NAME},
        stop_grace_period=stop_timeout * _SECOND, healthcheck=_healthcheck(desired.health.timeout),
    )
    generic = {GPU_RESOURCE: desired.resources.gpus} if desired.resources.gpus else None
    resources = docker.types.Resources(cpu_limit=nano_cpus(desired.resources.cpus),
                                       mem_limit=memory_bytes(desired.resources.memory), generic_resources=generic)
    return docker.types.TaskTemplate(
        container_spec=container, resources=resources,
        restart_policy=docker.types.RestartPolicy(condition="any", delay=_SECOND),
        placement=_placement(desired), force_update=0,
    )


def _placement(desired: DesiredService) -> Any:
    """One task per node (each binds the host port), spread over ``placement.spread``, within its constraints."""
    spread = desired.placement.spread if desired.placement is not None else "node.id"
    constraints = list(desired.placement.constraints) if desired.placement is not None else None
    return docker.types.Placement(constraints=constraints, preferences=[("spread", spread)], maxreplicas=1)


def _healthcheck(start_seconds: float) -> Any:
    """Timings only: the test command comes from the image's HEALTHCHECK (the template has one)."""
    return docker.types.Healthcheck(interval=2 * _SECOND, timeout=3 * _SECOND, retries=3,
                                    start_period=int(start_seconds * _SECOND))


def _replicas(service: dict[str, Any]) -> int:
    return int(((service["Spec"].get("Mode") or {}).get("Replicated") or {}).get("Replicas", 0))


def _node_gpus(node: dict[str, Any]) -> int:
    resources = (node.get("Description") or {}).get("Resources") or {}
    total = 0
    for entry in resources.get("GenericResources") or []:
        spec = entry.get("DiscreteResourceSpec") or {}
        if spec.get("Kind") == GPU_RESOURCE:
            total += int(spec.get("Value") or 0)
    return total


def _task_error(task: dict[str, Any]) -> str:
    status = task.get("Status") or {}
    return str(status.get("Err") or status.get("Message") or status.get("State"))


def _actual(name: str, service: dict[str, Any], summary: TaskSummary) -> ActualService:
    """Counted from the tasks (swarm's own RunningTasks still counts a task on a node that was lost)."""
    spec_labels = service["Spec"].get("Labels") or {}
    running, wanted = summary.running, _replicas(service)
    update = (service.get("UpdateStatus") or {}).get("State", "")
    image = str(service["Spec"]["TaskTemplate"]["ContainerSpec"].get("Image", "")).split("@", 1)[0]
    detail = f"service {str(service['ID'])[:12]} {image}: {running}/{wanted} tasks running"
    if summary.tasks:
        detail += " (" + ", ".join(str(task) for task in summary.tasks) + ")"
    revision = spec_labels.get(LABEL_REVISION, "")
    busy = update in _UPDATE_BUSY
    return ActualService(
        name=name, runtime=RUNTIME_NAME, state=_state(running, wanted, update),
        spec_hash=spec_labels.get(LABEL_SPEC_HASH), revision=int(revision) if revision.isdigit() else None,
        detail=detail + (f", update {update.replace('_', ' ')}" if update else ""),
        tasks=summary.tasks, addresses=summary.addresses, degraded="" if busy else summary.degraded,
    )


def _state(running: int, wanted: int, update: str) -> ServiceState:
    if wanted == 0:
        return ServiceState.STOPPED
    if update in _UPDATE_BUSY:
        return ServiceState.STARTING
    return ServiceState.RUNNING if running > 0 else ServiceState.FAILED
