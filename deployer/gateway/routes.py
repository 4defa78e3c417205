"""The route table: what the gateway serves, checked before any of it becomes nginx syntax.

Every value that reaches a config file is re-checked here with an allow-list, although the
manifest already did (defence in depth: a route may come from anywhere). Two routes claiming
one path or one port are refused naming both services.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TypeGuard, TypeVar

from deployer.errors import GatewayRejected

# A loopback port of a live slot, or (host, port) for a slot elsewhere (swarm later).
Upstream = int | tuple[str, int]

LOOPBACK = "127.0.0.1"
MARKER_PATH = "/.deployer/generation"
RESERVED_PREFIX = "/.deployer/"

_NAME = re.compile(r"[a-z][a-z0-9-]{0,39}")
# Starts and ends with "/", segments of URL-safe characters; no "//", "." or ".." segments.
_PATH = re.compile(r"/(?:[A-Za-z0-9_~%-][A-Za-z0-9._~%-]*/)*")
_DOT_SEGMENT = re.compile(r"/\.{1,2}/")
_HOST = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]{0,252})")
_MAX_PATH = 200
K = TypeVar("K", str, int)


@dataclass(frozen=True)
class Route:
    """One service as the gateway serves it.

    ``upstreams`` are the live slot(s); two during a blue/green switch. ``port`` is the
    service's sticky port (nginx listens on 127.0.0.1:port), ``path`` a prefix served on
    ``[gateway] listen``; ``strip_prefix`` proxies ``/ai/x/foo`` as ``/foo``.
    """

    service: str
    revision: int | None
    upstreams: tuple[Upstream, ...]
    port: int | None = None
    path: str | None = None
    strip_prefix: bool = True


@dataclass(frozen=True)
class RouteTable:
    """Checked routes, sorted by service: the input of rendering (deterministic)."""

    routes: tuple[Route, ...]

    @property
    def by_path(self) -> tuple[Route, ...]:
        return tuple(sorted((r for r in self.routes if r.path is not None), key=lambda r: (r.path or "", r.service)))

    @property
    def by_port(self) -> tuple[Route, ...]:
        return tuple(r for r in self.routes if r.port is not None)

    @property
    def ports(self) -> tuple[int, ...]:
        return tuple(sorted(r.port for r in self.routes if r.port is not None))


def check_routes(routes: Iterable[Route], *, listen_port: int) -> RouteTable:
    """Validate every route and the table as a whole; ``GatewayRejected`` names the service(s)."""
    checked = sorted(routes, key=lambda r: r.service)
    for route in checked:
        check_route(route, listen_port=listen_port)
    _refuse_twice(checked)
    _refuse_clashes(checked, listen_port)
    return RouteTable(tuple(checked))


def check_route(route: Route, *, listen_port: int) -> None:
    service = route.service
    if not isinstance(service, str) or not _NAME.fullmatch(service):
        raise GatewayRejected(f"gateway route: service name {service!r} is not ^[a-z][a-z0-9-]{{0,39}}$")
    where = f"gateway route for {service!r}"
    if route.revision is not None and (not _is_int(route.revision) or route.revision < 0):
        raise GatewayRejected(f"{where}: revision must be a number (got {route.revision!r})", services=(service,))
    if route.port is None and route.path is None:
        raise GatewayRejected(f"{where}: needs a port or a path", services=(service,))
    if route.path is not None:
        _check_path(route.path, where, service)
    if route.port is not None:
        _check_port(route.port, f"{where}: port", service)
        if route.port == listen_port:
            raise GatewayRejected(f"{where}: port {route.port} is the gateway's own listen port", services=(service,))
    _check_upstreams(route, where)


def upstream_address(upstream: Upstream) -> str:
    """``host:port`` as nginx's ``server`` directive takes it (values already checked)."""
    if isinstance(upstream, tuple):
        return f"{upstream[0]}:{upstream[1]}"
    return f"{LOOPBACK}:{upstream}"


def upstream_name(service: str) -> str:
    # Service names never hold "_", so this mapping cannot make two services one upstream.
    return "svc_" + service.replace("-", "_")


def _check_path(path: object, where: str, service: str) -> None:
    if isinstance(path, str) and path.startswith(RESERVED_PREFIX):
        raise GatewayRejected(f"{where}: path {path!r} is reserved for the gateway itself", services=(service,))
    if not isinstance(path, str) or len(path) > _MAX_PATH or not _PATH.fullmatch(path) or _DOT_SEGMENT.search(path):
        raise GatewayRejected(
            f"{where}: path {path!r} must start and end with '/' and hold only letters, digits and ._~%- "
            "(no '//', '.' or '..' segments)", services=(service,))


def _check_upstreams(route: Route, where: str) -> None:
    service = route.service
    if not isinstance(route.upstreams, tuple) or not route.upstreams:
        raise GatewayRejected(f"{where}: needs at least one upstream", services=(service,))
    seen: set[str] = set()
    for upstream in route.upstreams:
        if isinstance(upstream, tuple):
            if len(upstream) != 2 or not isinstance(upstream[0], str) or not _HOST.fullmatch(upstream[0]):
                raise GatewayRejected(f"{where}: upstream {upstream!r} is not (host, port)", services=(service,))
            _check_port(upstream[1], f"{where}: upstream port", service)
        else:
            _check_port(upstream, f"{where}: upstream port", service)
            if upstream == route.port:
                raise GatewayRejected(f"{where}: upstream {upstream} is the route's own port (a loop)",
                                      services=(service,))
        address = upstream_address(upstream)
        if address in seen:
            raise GatewayRejected(f"{where}: upstream {address} is listed twice", services=(service,))
        seen.add(address)


def _check_port(port: object, what: str, service: str) -> None:
    if not _is_int(port) or not 1 <= port <= 65535:
        raise GatewayRejected(f"{what} must be a number between 1 and 65535 (got {port!r})", services=(service,))


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _refuse_twice(routes: Sequence[Route]) -> None:
    for first, second in itertools.pairwise(routes):
        if first.service == second.service:
            raise GatewayRejected(f"gateway route for {first.service!r} is given twice", services=(first.service,))


def _refuse_clashes(routes: Sequence[Route], listen_port: int) -> None:
    paths: dict[str, str] = {}
    ports: dict[int, str] = {}
    for route in routes:
        if route.path is not None:
            _claim(paths, route.path, route.service, f"gateway path {route.path}")
        if route.port is not None:
            _claim(ports, route.port, route.service, f"port {route.port}")
    for route in routes:
        for upstream in route.upstreams:
            owner = ports.get(upstream) if isinstance(upstream, int) else None
            if owner is not None and owner != route.service:
                raise GatewayRejected(
                    f"port {upstream} is service {owner!r}'s gateway port and an upstream of {route.service!r}",
                    services=tuple(sorted((owner, route.service))))
            if upstream == listen_port:
                raise GatewayRejected(
                    f"gateway route for {route.service!r}: upstream {upstream} is the gateway's own listen port",
                    services=(route.service,))


def _claim(claims: dict[K, str], key: K, service: str, what: str) -> None:
    owner = claims.get(key)
    if owner is not None:
        raise GatewayRejected(f"services {owner!r} and {service!r} both claim {what}", services=(owner, service))
    claims[key] = service
