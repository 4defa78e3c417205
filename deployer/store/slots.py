"""Blue/green slots: each service behind the gateway has two loopback ports, and one slot serves.

Slot ports come from ``[ports] slot_range`` and stay with the service (like its sticky
port, which nginx then serves). ``active`` is the slot the gateway routes to; it changes
only after the new slot passed its gate and the gateway confirmed the switch.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import select

from deployer.errors import PortConflict
from deployer.model.deployment import SLOTS
from deployer.store.engine import Database, StoreConflictError
from deployer.store.tables import PortAllocationRow, ServiceRow, SlotPortRow


class Slots:
    def __init__(self, db: Database) -> None:
        self._db = db

    def ports(self, service: str, bounds: tuple[int, int], is_free: Callable[[int], bool]) -> dict[str, int]:
        """The service's two slot ports, allocated (lowest free in ``bounds``) the first time."""
        while True:
            held, taken = self._state(service)
            missing = [slot for slot in SLOTS if slot not in held]
            if not missing:
                return held
            port = _lowest_free(bounds, taken, is_free)
            try:
                with self._db.transaction("allocate_slot_port", write=True) as session:
                    session.add(SlotPortRow(service=service, slot=missing[0], port=port))
            except StoreConflictError:
                continue  # a concurrent writer took it: look again

    def _state(self, service: str) -> tuple[dict[str, int], set[int]]:
        with self._db.transaction("slot_ports") as session:
            rows = session.execute(select(SlotPortRow.service, SlotPortRow.slot, SlotPortRow.port)).all()
            sticky = set(session.scalars(select(PortAllocationRow.port)))
        held = {slot: port for name, slot, port in rows if name == service}
        return held, {port for _, _, port in rows} | sticky

    def active(self, service: str) -> str | None:
        with self._db.transaction("active_slot") as session:
            return session.scalar(select(ServiceRow.active_slot).where(ServiceRow.name == service))

    def set_active(self, service: str, slot: str | None) -> None:
        with self._db.transaction("set_active_slot", write=True) as session:
            row = session.get(ServiceRow, service)
            if row is not None:
                row.active_slot = slot

    def routed(self) -> dict[str, tuple[str, int]]:
        """Every live service with an active slot: name -> (slot, port). The gateway's route table."""
        query = (select(ServiceRow.name, ServiceRow.active_slot, SlotPortRow.port)
                 .join(SlotPortRow, (SlotPortRow.service == ServiceRow.name)
                       & (SlotPortRow.slot == ServiceRow.active_slot))
                 .where(ServiceRow.removed.is_(False)))
        with self._db.transaction("routed_slots") as session:
            return {name: (str(slot), port) for name, slot, port in session.execute(query)}

    def release(self, service: str) -> None:
        with self._db.transaction("release_slots", write=True) as session:
            for row in session.scalars(select(SlotPortRow).where(SlotPortRow.service == service)):
                session.delete(row)
            service_row = session.get(ServiceRow, service)
            if service_row is not None:
                service_row.active_slot = None


def _lowest_free(bounds: tuple[int, int], taken: set[int], is_free: Callable[[int], bool]) -> int:
    first, last = bounds
    for port in range(first, last + 1):
        if port not in taken and is_free(port):
            return port
    raise PortConflict(f"no free port in the slot range {first}-{last}: widen [ports] slot_range in deployer.toml")
