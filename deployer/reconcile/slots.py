"""Where a revision starts and serves behind the gateway: the placement, the switch, the handover.

Without the gateway a service is itself, on its sticky port (recreate: replaced in place).
Behind it, a slot: blue-green starts the idle slot, and once it passed its gate ``switch``
routes to it, drains and stops the old one (and, the first time, hands the sticky port from
the service's own process over to nginx). ``recreate`` behind the gateway replaces the serving slot.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass

from deployer.errors import DeployerError
from deployer.model.actual import ActualService
from deployer.model.deployment import SLOTS, Deployment, instance_name
from deployer.model.desired import DesiredService
from deployer.ports import is_free
from deployer.reconcile.gate import Steps
from deployer.reconcile.routing import Router, Target
from deployer.runtimes.base import Runtime, SpreadsOverNodes
from deployer.store import Store

log = logging.getLogger(__name__)

SLOTTED_RUNTIMES = ("supervisor", "docker")  # swarm keeps its own start-first update
_HANDOVER_POLL_SECONDS = 0.002


class NotSwitched(DeployerError):
    """A blue-green rollout failed before the switch: the serving slot was never touched."""

    def __init__(self, cause: DeployerError) -> None:
        super().__init__(str(cause), reason=cause.reason)


@dataclass(frozen=True)
class Placement:
    """Where a revision starts: a slot and its port behind the gateway (``slot`` None: the plain service)."""

    slot: str | None
    port: int | None
    serving: str | None = None  # the slot serving now
    blue_green: bool = False


class Slots:
    """The gateway's side of a rollout; with the gateway off (``router`` None) every service is plain."""

    def __init__(self, store: Store, router: Router | None, steps: Steps) -> None:
        self._store = store
        self.router = router
        self._steps = steps

    def ensure_gateway(self) -> None:
        """The gateway up before a pass plans; when it cannot be, deploys go on without it."""
        router = self.router
        if router is None:
            return
        try:
            router.ensure()
        except DeployerError as exc:  # deploys go on: a blue-green switch then fails and the old slot keeps serving
            log.warning("gateway: %s", exc)

    def behind_gateway(self, desired: DesiredService) -> bool:
        """Slots only while the gateway works: with nginx missing or broken, services still deploy (recreated)."""
        router = self.router
        return router is not None and router.available and desired.runtime in SLOTTED_RUNTIMES

    def placement(self, desired: DesiredService) -> Placement:
        """Where ``desired`` would start now (and where the service serves from)."""
        router = self.router
        if router is None or not self.behind_gateway(desired):
            return Placement(None, None)
        ports, serving = router.slot_ports(desired.name), router.active(desired.name)
        blue_green = desired.rollout is None or desired.rollout.strategy == "blue-green"
        # blue-green: the slot that does not serve; recreate: the serving one, replaced in place
        idle = "green" if serving == "blue" else "blue"
        slot = idle if blue_green else serving or "blue"
        return Placement(slot, ports[slot], serving, blue_green)

    def serving(self, name: str) -> Placement:
        """Where ``name`` serves from now: its active slot and that slot's port, else itself."""
        router = self.router
        slot = router.active(name) if router is not None else None
        if router is None or slot is None:
            return Placement(None, None)
        return Placement(slot, router.slot_ports(name)[slot], slot)

    def switch(self, deployment: Deployment, runtime: Runtime, place: Placement, attempt: int, prefix: str) -> None:
        """Route the service to the new slot, then drain and stop the old one (and a pre-gateway process)."""
        router, service = self.router, deployment.service
        assert router is not None and place.slot is not None and place.port is not None
        plain = runtime.inspect(service)  # the service as it ran before the gateway: holds the sticky port
        handover = _Handover(runtime, service, deployment.desired.port) if plain is not None else None
        with self._steps.step(attempt, f"{prefix}switch") as step:
            try:
                router.switch(service, Target(place.slot, place.port, deployment.revision, deployment.desired),
                              handover=handover)
                if handover is not None:
                    handover.answered = time.monotonic()
                    handover.finish()
            except DeployerError as exc:
                if handover is not None and handover.stopped is not None:
                    with contextlib.suppress(DeployerError):
                        handover.finish()
                    runtime.start(service)
                if place.blue_green:
                    self.discard(runtime, deployment.name)
                    raise NotSwitched(exc) from exc
                raise
            step.output = (f"{service}: routed to {place.slot} (port {place.port})"
                           + (f", was {place.serving}" if place.serving and place.serving != place.slot else "")
                           + (handover.said() if handover is not None else ""))
        old = [instance_name(service, place.serving)] if place.serving and place.serving != place.slot else []
        old += [service] if plain is not None else []
        if old:
            with self._steps.step(attempt, f"{prefix}drain") as step:
                time.sleep(router.drain)  # requests in flight on the old slot finish (nginx reload semantics)
                for instance in old:
                    runtime.remove(instance)
                step.output = f"drained {router.drain:g}s, stopped {', '.join(old)}"

    def route_swarm(self, desired: DesiredService, runtime: Runtime) -> None:
        """A swarm service with a gateway path: the gateway routes it to its published port (not slotted)."""
        router = self.router
        if router is None or not router.available or desired.runtime != "swarm" or desired.gateway is None:
            return
        try:
            if isinstance(runtime, SpreadsOverNodes):  # the nodes its new tasks run on, before the route is synced
                router.follow_nodes({desired.name: runtime.addresses(desired.name)})
            router.sync(force=True)
        except DeployerError as exc:  # the service itself is deployed; its route follows at the next change
            log.warning("%s: the gateway did not take its route: %s", desired.name, exc)

    def widen_swarm_route(self, desired: DesiredService, runtime: Runtime) -> None:
        """Before a swarm update: route to every node a new task may land on, besides those serving now.

        A start-first update may put the new task on another node and stop the old one before the
        update is done; a node with no task refuses at once and nginx passes the request on, so
        listing it early loses nothing. ``route_swarm`` narrows the route once the update is done.
        """
        router = self.router
        if (router is None or not router.available or desired.gateway is None
                or not isinstance(runtime, SpreadsOverNodes)):
            return
        try:
            nodes = set(runtime.addresses(desired.name)) | set(runtime.nodes_for(desired))
            router.follow_nodes({desired.name: tuple(sorted(nodes))})
        except DeployerError as exc:  # routed as before: the update goes on
            log.warning("%s: the gateway could not be widened to every node: %s", desired.name, exc)

    def follow_nodes(self, actual: Mapping[str, ActualService]) -> None:
        """Swarm tasks that moved since the last pass (a node lost or back) move the gateway's servers."""
        router = self.router
        if router is None or not router.available:
            return
        try:
            router.follow_nodes({name: seen.addresses for name, seen in actual.items() if seen.addresses})
        except DeployerError as exc:  # routed as before; the next pass tries again
            log.warning("gateway: could not follow swarm tasks to their nodes: %s", exc)

    def leave_slots(self, name: str, runtime: Runtime) -> None:
        """The gateway was turned off: the service now serves on its own port; its slots go."""
        if self._store.slots.active(name) is None:
            return
        self._store.slots.set_active(name, None)
        for slot in SLOTS:
            self.discard(runtime, instance_name(name, slot))

    def discard(self, runtime: Runtime, instance: str) -> None:
        try:
            runtime.remove(instance)
        except DeployerError as exc:
            log.warning("%s: could not stop the slot that failed its gate: %s", instance, exc)


class _Handover:
    """A service moving behind the gateway: its own process leaves the sticky port for nginx.

    Called by the gateway once everything else is ready (the slot gated, the inner nginx routing
    to it, the new config tested), right before nginx reloads to bind the port. The stop runs on
    its own thread and the call returns as soon as the port can be bound: the runtime's own
    bookkeeping of the stop (supervisord noticing the exit and answering) goes on during the
    reload instead of before it, and ``finish`` waits for it. From the stop to the confirmed
    reload is the one window in which the sticky port does not answer.
    """

    def __init__(self, runtime: Runtime, service: str, port: int) -> None:
        self._runtime = runtime
        self._service = service
        self._port = port
        self.stopped: float | None = None
        self._freed: float | None = None
        self.answered: float | None = None  # the gateway confirmed nginx serves the port
        self._stopping: threading.Thread | None = None
        self._error: DeployerError | None = None

    def __call__(self) -> None:
        self.stopped = time.monotonic()
        self._stopping = threading.Thread(target=self._stop, name=f"handover-{self._service}", daemon=True)
        self._stopping.start()
        while self._stopping.is_alive() and not is_free(self._port):
            time.sleep(_HANDOVER_POLL_SECONDS)
        self._freed = time.monotonic()
        if self._error is not None:
            raise self._error

    def finish(self) -> None:
        """The stop done (whatever happened to the switch); its error, if any, raised."""
        if self._stopping is not None:
            self._stopping.join()
        if self._error is not None:
            raise self._error

    def said(self) -> str:
        if self.stopped is None or self._freed is None or self.answered is None:
            return ""
        return (f"; port {self._port} taken over from {self._service}'s own process: free "
                f"{self._freed - self.stopped:.2f}s after its stop, nginx answering there "
                f"{self.answered - self.stopped:.2f}s after it")

    def _stop(self) -> None:
        try:
            self._runtime.stop(self._service)
        except DeployerError as exc:
            self._error = exc
