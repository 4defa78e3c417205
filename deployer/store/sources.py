"""Sources and webhook deliveries: which repositories are followed, and every push that arrived.

``Sources`` keeps the followed repositories (from deployer.toml or first seen in a
webhook) with the head last fetched; ``Deliveries`` is the webhook audit, which
also seeds the receiver's dedupe memory at start. No credential is ever stored.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, insert, select

from deployer.model.status import DeliveryResult
from deployer.safety import strip_credentials
from deployer.store.engine import Database, StoreError, retry_once, storable
from deployer.store.tables import SHA, SHORT, DeliveryRow, SourceRow, utcnow

ORIGINS = frozenset({"config", "gitea"})


@dataclass(frozen=True)
class SourceRecord:
    name: str
    url: str
    branch: str
    origin: str
    last_sha: str | None
    last_checked_at: datetime | None


@dataclass(frozen=True)
class Delivery:
    """One audit row to write."""

    delivery_id: str
    event: str
    repository: str
    ref: str
    after: str
    result: DeliveryResult
    detail: str


@dataclass(frozen=True)
class DeliveryView(Delivery):
    """One audit row as recorded: the delivery, its row id and when it arrived."""

    id: int
    received_at: datetime


class Sources:
    def __init__(self, db: Database) -> None:
        self._db = db

    def upsert(self, name: str, url: str, branch: str, origin: str) -> None:
        """Create or update a source. Credentials in an http(s) URL are dropped: no secret is stored."""
        if origin not in ORIGINS:
            raise ValueError(f"source origin must be one of {sorted(ORIGINS)} (got {origin!r})")
        clean = strip_credentials(url, keep_user=True)
        retry_once(lambda: self._upsert(name, clean, branch, origin))

    def _upsert(self, name: str, url: str, branch: str, origin: str) -> None:
        with self._db.transaction("upsert_source", write=True) as session:
            row = session.get(SourceRow, name)
            if row is None:
                session.add(SourceRow(name=name, url=url, branch=branch, origin=origin))
                return
            row.url, row.branch, row.origin = url, branch, origin

    def all(self) -> list[SourceRecord]:
        with self._db.transaction("list_sources") as session:
            rows = session.scalars(select(SourceRow).order_by(SourceRow.name))
            return [_source_record(row) for row in rows]

    def set_head(self, name: str, sha: str) -> None:
        with self._db.transaction("set_source_head", write=True) as session:
            row = session.get(SourceRow, name)
            if row is None:
                raise StoreError(f"store: set_source_head: source {name!r} is not known; upsert it first")
            row.last_sha, row.last_checked_at = sha, utcnow()


class Deliveries:
    def __init__(self, db: Database) -> None:
        self._db = db

    def record(self, deliveries: Sequence[Delivery]) -> None:
        """Many audit rows in one transaction; what a column cannot hold (a NUL, a long ref) is cut or replaced."""
        if not deliveries:
            return
        now = utcnow()
        rows = [{"delivery_id": storable(d.delivery_id)[:100], "event": storable(d.event)[:SHORT],
                 "repository": storable(d.repository)[:200], "ref": storable(d.ref)[:255],
                 "after": storable(d.after)[:SHA], "result": DeliveryResult(d.result).value,
                 "detail": storable(d.detail), "received_at": now}
                for d in deliveries]
        # one multi-row INSERT, no ORM objects: a burst's audit batch must not hold the interpreter
        # (the event loop acknowledging webhooks shares it) longer than the rows need
        with self._db.transaction("record_deliveries", write=True) as session:
            session.execute(insert(DeliveryRow), rows)

    def recent_accepted(self, limit: int = 10000) -> list[tuple[str, str, str]]:
        """(repository, ref, after) of the newest accepted pushes, newest first: the dedupe memory at start."""
        query = (select(DeliveryRow.repository, DeliveryRow.ref, DeliveryRow.after)
                 .where(DeliveryRow.result == DeliveryResult.ACCEPTED.value)
                 .order_by(DeliveryRow.id.desc()).limit(limit))
        with self._db.transaction("recent_accepted") as session:
            return [(repository, ref, after) for repository, ref, after in session.execute(query)]

    def last_by_repository(self) -> dict[str, datetime]:
        """When a signed push last arrived, per repository (lower case): the webhook is known to be delivering."""
        delivered = (DeliveryResult.ACCEPTED.value, DeliveryResult.DUPLICATE.value, DeliveryResult.IGNORED.value)
        query = (select(DeliveryRow.repository, func.max(DeliveryRow.received_at))
                 .where(DeliveryRow.result.in_(delivered), DeliveryRow.repository != "")
                 .group_by(DeliveryRow.repository))
        found: dict[str, datetime] = {}
        with self._db.transaction("last_deliveries") as session:
            for repository, received in session.execute(query):
                key = repository.lower()
                found[key] = max(received, found[key]) if key in found else received
        return found

    def recent(self, limit: int = 50) -> list[DeliveryView]:
        with self._db.transaction("recent_deliveries") as session:
            rows = session.scalars(select(DeliveryRow).order_by(DeliveryRow.id.desc()).limit(limit))
            return [_delivery_view(row) for row in rows]


def _source_record(row: SourceRow) -> SourceRecord:
    return SourceRecord(row.name, row.url, row.branch, row.origin, row.last_sha, row.last_checked_at)


def _delivery_view(row: DeliveryRow) -> DeliveryView:
    return DeliveryView(id=row.id, delivery_id=row.delivery_id, event=row.event, repository=row.repository,
                        ref=row.ref, after=row.after, result=DeliveryResult(row.result), detail=row.detail,
                        received_at=row.received_at)
