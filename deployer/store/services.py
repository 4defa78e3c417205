"""Services: the inventory, each one's desired and running revision, and what was last observed.

The inventory is the set of services this daemon created and may therefore change
or remove. Observations (state, health, detail) and snapshots (log tail, ``/info``)
are written by the observer and read by the pages; service output is redacted first.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from deployer.model.status import SnapshotView
from deployer.store.engine import Database, StoreError, retry_once
from deployer.store.history import own_revision
from deployer.store.tables import OUTPUT_TAIL_CHARS, ObservationRow, ServiceRow, SnapshotRow, utcnow

_MAX_JSON_DEPTH = 32


class Services:
    def __init__(self, db: Database) -> None:
        self._db = db

    def upsert(self, name: str, source: str, runtime: str) -> None:
        """Create the service, or update its source and runtime; a removed service comes back."""
        retry_once(lambda: self._upsert(name, source, runtime))

    def _upsert(self, name: str, source: str, runtime: str) -> None:
        with self._db.transaction("upsert_service", write=True) as session:
            row = session.get(ServiceRow, name)
            if row is None:
                session.add(ServiceRow(name=name, source=source, runtime=runtime, removed=False))
                return
            row.source, row.runtime, row.removed = source, runtime, False

    def source_of(self, name: str) -> str | None:
        """The source owning ``name``; None when unknown or removed (then any source may claim it)."""
        query = select(ServiceRow.source).where(ServiceRow.name == name, ServiceRow.removed.is_(False))
        with self._db.transaction("service_source") as session:
            return session.scalar(query)

    def inventory(self, source: str | None = None) -> set[str]:
        query = select(ServiceRow.name).where(ServiceRow.removed.is_(False))
        if source is not None:
            query = query.where(ServiceRow.source == source)
        with self._db.transaction("inventory") as session:
            return set(session.scalars(query))

    def mark_removed(self, name: str) -> None:
        with self._db.transaction("mark_removed", write=True) as session:
            row = session.get(ServiceRow, name)
            if row is not None:
                row.removed = True

    def set_desired(self, service: str, revision_id: int) -> None:
        with self._db.transaction("set_desired", write=True) as session:
            row = _service_row(session, service)
            row.desired_revision_id = own_revision(session, service, revision_id)

    def set_running(self, service: str, revision_id: int | None) -> None:
        with self._db.transaction("set_running", write=True) as session:
            row = _service_row(session, service)
            row.running_revision_id = None if revision_id is None else own_revision(session, service, revision_id)


class Observations:
    def __init__(self, db: Database, redact: Callable[[str], str]) -> None:
        self._db = db
        self._redact = redact

    def record(self, service: str, state: str, healthy: bool, detail: str = "") -> None:
        detail = self._redact(detail)
        retry_once(lambda: self._record(service, state, healthy, detail))

    def _record(self, service: str, state: str, healthy: bool, detail: str) -> None:
        with self._db.transaction("record_observation", write=True) as session:
            row = session.get(ObservationRow, service)
            if row is None:
                row = ObservationRow(service=service)
                session.add(row)
            row.state, row.healthy, row.detail, row.observed_at = state, healthy, detail, utcnow()

    def record_snapshot(self, service: str, *, logs_tail: str, info: dict[str, Any] | None, info_error: str) -> None:
        with self._db.transaction("record_snapshot", write=True) as session:
            row = session.get(SnapshotRow, service)
            if row is None:
                row = SnapshotRow(service=service)
                session.add(row)
            row.logs_tail = self._redact(logs_tail)[-OUTPUT_TAIL_CHARS:]
            row.info, row.info_error = _redact_json(info, self._redact), self._redact(info_error)[:2000]
            row.captured_at = utcnow()

    def snapshot(self, service: str) -> SnapshotView | None:
        with self._db.transaction("snapshot") as session:
            row = session.get(SnapshotRow, service)
            if row is None:
                return None
            return SnapshotView(row.service, row.logs_tail, dict(row.info) if row.info is not None else None,
                                row.info_error, row.captured_at)


def _service_row(session: Session, name: str) -> ServiceRow:
    row = session.get(ServiceRow, name)
    if row is None:
        raise StoreError(f"store: service {name!r} is not in the inventory; upsert it first")
    return row


def _redact_json(value: Any, redact: Callable[[str], str], depth: int = 0) -> Any:
    if isinstance(value, str):
        return redact(value)
    if depth >= _MAX_JSON_DEPTH and isinstance(value, dict | list):
        return "(nested too deeply)"
    if isinstance(value, dict):
        return {redact(str(key)): _redact_json(item, redact, depth + 1) for key, item in value.items()}
    if isinstance(value, list):
        return [_redact_json(item, redact, depth + 1) for item in value]
    return value
