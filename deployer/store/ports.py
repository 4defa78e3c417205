"""Port allocations: each service's sticky port, unique across the host, with a grace after release.

``auto`` ports are the lowest free one in the configured range, kept for the
service's lifetime; a fixed port is claimed unless another service holds it. A
released port is skipped for a grace period so old clients never reach a new service.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

from sqlalchemy import select

from deployer.errors import PortConflict
from deployer.store.engine import Database, StoreConflictError, retry_once
from deployer.store.tables import PortAllocationRow, ReleasedPortRow, utcnow


class Ports:
    def __init__(self, db: Database) -> None:
        self._db = db

    def of(self, service: str) -> int | None:
        query = select(PortAllocationRow.port).where(PortAllocationRow.service == service)
        with self._db.transaction("port_of") as session:
            return session.scalar(query)

    def allocate(self, service: str, bounds: tuple[int, int], is_free: Callable[[int], bool], *,
                 grace: float = 0.0) -> int:
        """The service's port: its existing allocation, else the lowest free port in ``bounds``.

        ``is_free`` (a host check) runs outside any transaction. A concurrent
        writer taking the same port makes the insert fail; the next port is tried.
        A port another service released less than ``grace`` seconds ago is skipped,
        so clients still pointing at the old service do not reach a new one.
        """
        passed: set[int] = set()
        while True:
            existing, taken = self._state(service, grace)
            if existing is not None:
                return existing
            port = _lowest_free(bounds, taken | passed, is_free, passed)
            if self._insert(service, port):
                return port
            passed.add(port)

    def _state(self, service: str, grace: float) -> tuple[int | None, set[int]]:
        cutoff = utcnow() - timedelta(seconds=grace)
        cooling = (select(ReleasedPortRow.port)
                   .where(ReleasedPortRow.released_at > cutoff, ReleasedPortRow.service != service))
        with self._db.transaction("allocate_port") as session:
            rows = session.execute(select(PortAllocationRow.service, PortAllocationRow.port))
            allocations = {service_name: port for service_name, port in rows}
            held = set(session.scalars(cooling)) if grace > 0 else set()
        return allocations.pop(service, None), set(allocations.values()) | held

    def _insert(self, service: str, port: int) -> bool:
        try:
            with self._db.transaction("allocate_port", write=True) as session:
                session.add(PortAllocationRow(service=service, port=port))
        except StoreConflictError:
            return False
        return True

    def claim(self, service: str, port: int) -> None:
        """Give fixed ``port`` to ``service`` (replacing its previous one) unless another service holds it."""
        retry_once(lambda: self._claim(service, port))

    def _claim(self, service: str, port: int) -> None:
        holder_query = select(PortAllocationRow.service).where(PortAllocationRow.port == port)
        with self._db.transaction("claim_port", write=True) as session:
            holder = session.scalar(holder_query)
            if holder is not None and holder != service:
                raise PortConflict(f"port {port} is already used by service {holder!r}")
            row = session.get(PortAllocationRow, service)
            if row is None:
                session.add(PortAllocationRow(service=service, port=port))
            elif row.port != port:
                row.port, row.allocated_at = port, utcnow()

    def release(self, service: str) -> None:
        """Free the service's port; it is remembered as released for the grace period."""
        with self._db.transaction("release_port", write=True) as session:
            row = session.get(PortAllocationRow, service)
            if row is None:
                return
            released = session.get(ReleasedPortRow, row.port)
            if released is None:
                session.add(ReleasedPortRow(port=row.port, service=service, released_at=utcnow()))
            else:
                released.service, released.released_at = service, utcnow()
            session.delete(row)


def _lowest_free(bounds: tuple[int, int], skip: set[int], is_free: Callable[[int], bool], busy: set[int]) -> int:
    """The lowest port in ``bounds`` not in ``skip`` that ``is_free``; host-busy ports go into ``busy``."""
    first, last = bounds
    for port in range(first, last + 1):
        if port in skip:
            continue
        if is_free(port):
            return port
        busy.add(port)
    raise PortConflict(
        f"no free port in {first}-{last}: every port is allocated to another service or in use "
        "on this host; widen [ports] range in deployer.toml or free a port"
    )
