"""Operator overrides (pin to a revision, suspend), each with who, why and when, kept as history.

An override is active until cleared; setting one replaces the active one of the same
kind. The reconciler reads every active override once per pass.
"""

from __future__ import annotations

from sqlalchemy import Select, select

from deployer.model.status import OverrideKind, OverrideView
from deployer.store.engine import Database
from deployer.store.history import own_revision
from deployer.store.tables import OverrideRow, utcnow


class Overrides:
    def __init__(self, db: Database) -> None:
        self._db = db

    def set(self, service: str, kind: OverrideKind, *, who: str, why: str = "",
            revision_id: int | None = None) -> OverrideView:
        """Make ``kind`` active for ``service``, replacing an active one of the same kind."""
        with self._db.transaction("set_override", write=True) as session:
            if revision_id is not None:
                own_revision(session, service, revision_id)
            for row in session.scalars(_active(service).where(OverrideRow.kind == kind.value)):
                row.cleared_at, row.cleared_by = utcnow(), who
            row = OverrideRow(service=service, kind=kind.value, revision_id=revision_id, who=who, why=why,
                              created_at=utcnow())
            session.add(row)
            session.flush()
            return override_view(row)

    def clear(self, service: str, kind: OverrideKind, *, who: str) -> bool:
        """End the active override of ``kind``; False when there was none."""
        with self._db.transaction("clear_override", write=True) as session:
            rows = session.scalars(_active(service).where(OverrideRow.kind == kind.value)).all()
            for row in rows:
                row.cleared_at, row.cleared_by = utcnow(), who
            return bool(rows)

    def active(self) -> dict[str, dict[OverrideKind, OverrideView]]:
        """Every active override in one query (a reconcile pass reads them once)."""
        query = select(OverrideRow).where(OverrideRow.cleared_at.is_(None))
        found: dict[str, dict[OverrideKind, OverrideView]] = {}
        with self._db.transaction("active_overrides") as session:
            for row in session.scalars(query):
                found.setdefault(row.service, {})[OverrideKind(row.kind)] = override_view(row)
        return found

    def history(self, service: str, limit: int = 50) -> list[OverrideView]:
        query = select(OverrideRow).where(OverrideRow.service == service).order_by(OverrideRow.id.desc()).limit(limit)
        with self._db.transaction("override_history") as session:
            return [override_view(row) for row in session.scalars(query)]


def _active(service: str) -> Select[OverrideRow]:
    return select(OverrideRow).where(OverrideRow.service == service, OverrideRow.cleared_at.is_(None))


def override_view(row: OverrideRow) -> OverrideView:
    return OverrideView(id=row.id, service=row.service, kind=row.kind, revision=row.revision_id, who=row.who,
                        why=row.why, created_at=row.created_at, cleared_at=row.cleared_at, cleared_by=row.cleared_by)
