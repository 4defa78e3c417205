"""Read views for the pages, the API and the CLI: one service as people see it, and the groups.

A ``ServiceView`` joins the inventory, the port, the last observation, the newest
attempt and the active overrides in a few queries for any number of services.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session, selectinload

from deployer.model.status import AttemptView, OverrideKind, ServiceView
from deployer.store.engine import Database
from deployer.store.history import attempt_view
from deployer.store.tables import AttemptRow, ObservationRow, OverrideRow, PortAllocationRow, RevisionRow, ServiceRow

NEVER_OBSERVED = "pending"


class Views:
    def __init__(self, db: Database) -> None:
        self._db = db

    def services(self) -> list[ServiceView]:
        """One view per inventory member, sorted by name, in a few queries (not one per service)."""
        query = _live_services().order_by(ServiceRow.name)
        with self._db.transaction("service_views") as session:
            return _service_views(session, session.scalars(query).all())

    def service(self, name: str) -> ServiceView | None:
        query = _live_services().where(ServiceRow.name == name)
        with self._db.transaction("service_view") as session:
            views = _service_views(session, session.scalars(query).all())
        return views[0] if views else None

    def groups(self) -> dict[str, list[str]]:
        """Group name -> member services, from each live service's desired revision."""
        query = (select(ServiceRow.name, RevisionRow.spec)
                 .join(RevisionRow, RevisionRow.id == ServiceRow.desired_revision_id)
                 .where(ServiceRow.removed.is_(False)))
        found: dict[str, list[str]] = {}
        with self._db.transaction("groups") as session:
            for name, spec in session.execute(query):
                group = spec.get("group") if isinstance(spec, dict) else None
                if group:
                    found.setdefault(str(group), []).append(name)
        return {group: sorted(members) for group, members in sorted(found.items())}


def _live_services() -> Select[ServiceRow]:
    # Only the revisions' sha and spec (its gateway path) are shown: loading whole rows read every revision's
    # manifest text (at 500 services in one manifest, 1,000 copies of a 60 KB text: 67 MB for one call).
    return (select(ServiceRow).where(ServiceRow.removed.is_(False))
            .options(selectinload(ServiceRow.desired_revision).load_only(RevisionRow.sha, RevisionRow.spec),
                     selectinload(ServiceRow.running_revision).load_only(RevisionRow.sha, RevisionRow.spec)))


def _service_views(session: Session, rows: Sequence[ServiceRow]) -> list[ServiceView]:
    names = [row.name for row in rows]
    if not names:
        return []
    port_query = select(PortAllocationRow.service, PortAllocationRow.port).where(PortAllocationRow.service.in_(names))
    ports = {name: port for name, port in session.execute(port_query)}
    observations = {row.service: row
                    for row in session.scalars(select(ObservationRow).where(ObservationRow.service.in_(names)))}
    newest_ids = select(func.max(AttemptRow.id)).where(AttemptRow.service.in_(names))
    attempt_query = (select(AttemptRow).where(AttemptRow.id.in_(newest_ids.group_by(AttemptRow.service)))
                     .options(selectinload(AttemptRow.steps)))
    attempts = {row.service: attempt_view(row) for row in session.scalars(attempt_query)}
    overrides: dict[str, set[str]] = {}
    override_query = select(OverrideRow.service, OverrideRow.kind).where(
        OverrideRow.service.in_(names), OverrideRow.cleared_at.is_(None))
    for service, kind in session.execute(override_query):
        overrides.setdefault(service, set()).add(kind)
    return [_service_view(row, ports.get(row.name), observations.get(row.name), attempts.get(row.name),
                          _override_label(overrides.get(row.name, set())))
            for row in rows]


def _override_label(kinds: set[str]) -> str | None:
    """What the overview shows: stopped outranks suspended, which outranks pinned (nothing happens at all)."""
    for kind in (OverrideKind.STOPPED.value, OverrideKind.SUSPENDED.value, OverrideKind.PINNED.value):
        if kind in kinds:
            return kind
    return None


def _service_view(row: ServiceRow, port: int | None, observed: ObservationRow | None, attempt: AttemptView | None,
                  override: str | None) -> ServiceView:
    return ServiceView(
        name=row.name,
        source=row.source,
        runtime=row.runtime,
        state=observed.state if observed else NEVER_OBSERVED,
        healthy=observed.healthy if observed else False,
        port=port,
        desired_sha=row.desired_revision.sha if row.desired_revision else None,
        running_sha=row.running_revision.sha if row.running_revision else None,
        desired_revision=row.desired_revision_id,
        running_revision=row.running_revision_id,
        last_attempt=attempt,
        override=override,
        observed_at=observed.observed_at if observed else None,
        detail=observed.detail if observed else "",
        slot=row.active_slot,
        gateway_path=_gateway_path(row.running_revision or row.desired_revision),
    )


def _gateway_path(revision: RevisionRow | None) -> str | None:
    gateway = revision.spec.get("gateway") if revision is not None and isinstance(revision.spec, dict) else None
    return str(gateway["path"]) if isinstance(gateway, dict) and gateway.get("path") else None
