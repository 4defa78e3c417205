"""Routing through the gateway: slot ports, the route table, and the switch from one slot to the other.

Behind the gateway a service's processes run in slots (``NAME--blue``/``NAME--green``) on
loopback ports of ``[ports] slot_range``; nginx serves the service's sticky port and its
gateway path and proxies to the active slot. The route table is derived from the store
(which slot is active, the sticky port, the running revision's gateway path), so after a
crash the next ``sync`` routes exactly what the store says serves.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from deployer.gateway import LOOPBACK, GatewayUnavailable, Route
from deployer.model.desired import DesiredService
from deployer.model.status import ServiceView
from deployer.store import Store

log = logging.getLogger(__name__)


class GatewayPort(Protocol):
    """What routing needs of the gateway (``deployer.gateway.Gateway``; tests give a recording one)."""

    def check(self) -> str | None: ...

    def apply(self, routes: Sequence[Route], *, handover: Callable[[], None] | None = None) -> str: ...


@dataclass(frozen=True)
class Target:
    """Where one service is routed to: a slot, its port, and the revision running there."""

    slot: str
    port: int
    revision: int | None
    desired: DesiredService | None


class Router:
    def __init__(self, store: Store, gateway: GatewayPort, *, slot_bounds: tuple[int, int],
                 is_free: Callable[[int], bool], drain: float) -> None:
        self._store = store
        self.gateway = gateway
        self._slot_bounds = slot_bounds
        self._is_free = is_free
        self.drain = drain
        self._applied: tuple[Route, ...] | None = None
        self.available = True  # false while the gateway cannot be had (nginx missing, not starting)
        self.problem: str | None = None  # what the page says about the gateway (down, or repaired: drift)
        self._guard = threading.Lock()  # one route table change at a time (passes of two sources)
        self._nodes: dict[str, tuple[str, ...]] = {}  # swarm service -> addresses of the nodes running its tasks

    def slot_ports(self, service: str) -> dict[str, int]:
        return self._store.slots.ports(service, self._slot_bounds, self._is_free)

    def active(self, service: str) -> str | None:
        return self._store.slots.active(service)

    def switch(self, service: str, target: Target, *, handover: Callable[[], None] | None = None) -> None:
        """Route ``service`` to ``target`` (the gateway confirms it is live), then record it as active.

        ``handover`` frees the sticky port (see ``Gateway.apply``) for a service moving behind the gateway.
        """
        with self._guard:
            routes = self._routes({service: target})
            self.gateway.apply(routes, handover=handover)
            self._applied = tuple(routes)
            self._store.slots.set_active(service, target.slot)

    def ensure(self) -> str | None:
        """Each pass: the gateway runs (a dead nginx is started again: drift, said) and routes what the store says.

        While it cannot be had (``GatewayUnavailable``: nginx missing or not starting), ``available``
        is false: services then deploy on their own ports, and move behind it once it is back.
        """
        try:
            repaired = self.gateway.check()
        except GatewayUnavailable as exc:
            self.available = False
            self.problem = f"down: {exc}; services deploy on their own ports until it is back"
            raise
        self.available = True
        if repaired:
            log.warning("gateway: %s", repaired)
            self.problem = f"drift healed at {time.strftime('%H:%M:%S')}: {repaired}"
        elif self.problem and self.problem.startswith("down"):
            self.problem = None
        self.sync()
        return repaired

    def forget(self, service: str) -> None:
        """A removed service: its slots are released and its routes leave the gateway."""
        self._store.slots.release(service)
        self.sync(force=True)

    def sync(self, *, force: bool = False) -> bool:
        """Apply the route table the store describes: the first time (after a start) or when forced.

        Every switch goes through this router, so between switches the table cannot change; a pass
        calls ``sync`` for free. A start (or a crash in the middle of a switch) re-routes to exactly
        what the store records as active.
        """
        with self._guard:
            if self._applied is not None and not force:
                return False
            routes = tuple(self._routes({}))
            self.gateway.apply(routes)
            self._applied = routes
            return True

    def follow_nodes(self, addresses: Mapping[str, tuple[str, ...]]) -> bool:
        """Swarm tasks moved (an update, a node lost or back): route to the nodes running them now.

        ``addresses``: swarm service -> the nodes with a running task. A service with none keeps
        its last nodes (nginx needs a server; a node that comes back is routed at once). The
        gateway is applied only when the route table changes; returns whether it was.
        """
        with self._guard:
            moved = {name: nodes for name, nodes in addresses.items() if nodes and self._nodes.get(name) != nodes}
            if not moved:
                return False
            self._nodes.update(moved)
            routes = tuple(self._routes({}))
            if self._applied is not None and routes == self._applied:
                return False
            self.gateway.apply(routes)
            self._applied = routes
            return True

    def _routes(self, overrides: Mapping[str, Target]) -> list[Route]:
        targets = {name: Target(slot, port, None, None) for name, (slot, port) in self._store.slots.routed().items()}
        targets.update(overrides)
        views = {view.name: view for view in self._store.views.services()}
        routes = []
        for name, target in sorted(targets.items()):
            view = views.get(name)
            if view is None:
                continue
            revision = target.revision if target.revision is not None else view.running_revision
            desired = target.desired or self._desired(revision)
            gateway = desired.gateway if desired is not None else None
            routes.append(Route(service=name, revision=revision, upstreams=(target.port,), port=view.port,
                                path=gateway.path if gateway is not None else None,
                                strip_prefix=gateway.strip_prefix if gateway is not None else True))
        routes.extend(self._swarm_routes(views.values(), set(targets)))
        return routes

    def _swarm_routes(self, views: Iterable[ServiceView], slotted: set[str]) -> list[Route]:
        """Swarm services keep their own start-first update; the gateway routes their path to the published port.

        Swarm publishes the sticky port itself (host mode) on every node running a task, so nginx
        serves only the path, with one server per node (``follow_nodes``); a node being updated
        refuses connections and nginx passes the request on to the next one.
        """
        routes = []
        for view in views:
            if view.runtime != "swarm" or view.name in slotted or view.port is None or not view.gateway_path:
                continue
            desired = self._desired(view.running_revision)
            if desired is None or desired.gateway is None:
                continue
            port = view.port
            nodes = self._nodes.get(view.name, ())
            upstreams = tuple((node, port) for node in nodes) if nodes and nodes != (LOOPBACK,) else (port,)
            routes.append(Route(service=view.name, revision=view.running_revision, upstreams=upstreams, port=None,
                                path=desired.gateway.path, strip_prefix=desired.gateway.strip_prefix))
        return routes

    def _desired(self, revision: int | None) -> DesiredService | None:
        found = self._store.history.get_revision(revision) if revision is not None else None
        return DesiredService.model_validate(found.spec) if found is not None else None
