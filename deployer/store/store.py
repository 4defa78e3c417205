"""The store: deployer's state and history behind one typed facade.

Every method runs in its own short transaction (a Session per call, so worker
threads and the web thread can share one ``Store``) and returns plain values.
SQLAlchemy and Alembic errors become ``StoreError`` here and go no further up.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

from alembic import command
from alembic.config import Config
from alembic.util.exc import CommandError
from sqlalchemy import Engine, Select, create_engine, event, func, select, text
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session, selectinload, sessionmaker
from sqlalchemy.pool import StaticPool

from deployer.errors import PortConflict, Reason, TransientError
from deployer.model.desired import DesiredService
from deployer.model.status import (
    AttemptView,
    DeliveryResult,
    DemoView,
    Outcome,
    OverrideKind,
    OverrideView,
    RevisionView,
    ServiceView,
    SnapshotView,
    StepView,
    Trigger,
)
from deployer.store.tables import (
    OUTPUT_TAIL_CHARS,
    AttemptRow,
    DeliveryRow,
    DemoResultRow,
    ObservationRow,
    OverrideRow,
    PortAllocationRow,
    ReleasedPortRow,
    RevisionRow,
    ServiceRow,
    SnapshotRow,
    SourceRow,
    StepRow,
    utcnow,
)

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
ORIGINS = frozenset({"config", "gitea"})
NEVER_OBSERVED = "pending"
NOT_THE_REVISIONS_FAULT = (Reason.PORT_CONFLICT.value, Reason.RUNTIME_UNAVAILABLE.value, Reason.SECRET_MISSING.value)
INTERRUPTED_MESSAGE = "deployer stopped before this attempt finished; the next reconcile tries again"
# Execution option asking SQLite for BEGIN IMMEDIATE (see _on_sqlite_begin).
_SQLITE_WRITE = "deployer_sqlite_write"
_T = TypeVar("_T")


class StoreError(TransientError):
    """The database failed or refused a request; retry with backoff."""

    reason = Reason.INTERNAL_ERROR


class StoreConflictError(StoreError):
    """A unique key was taken by a concurrent writer; the caller may re-read and retry."""


@dataclass(frozen=True)
class SourceRecord:
    name: str
    url: str
    branch: str
    origin: str
    last_sha: str | None
    last_checked_at: datetime | None


@dataclass(frozen=True)
class DeliveryView:
    id: int
    delivery_id: str
    event: str
    repository: str
    ref: str
    after: str
    result: DeliveryResult
    detail: str
    received_at: datetime


class Store:
    """State and history in SQLite or PostgreSQL; see DESIGN.md §8 for the tables."""

    def __init__(self, url: str, *, redact: Callable[[str], str] = str) -> None:
        self._engine = _create_engine(url)
        self._sessions = sessionmaker(self._engine, expire_on_commit=False)
        # Applied to every text that may carry service output (steps, attempts, observations,
        # snapshots, demo answers): no secret value is ever written.
        self._redact = redact

    # -- lifecycle ---------------------------------------------------------

    def migrate(self) -> None:
        """Bring the schema to the newest migration; a no-op when it is there already."""
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS).replace("%", "%%"))
        try:
            with self._engine.execution_options(**{_SQLITE_WRITE: True}).begin() as connection:
                config.attributes["connection"] = connection
                command.upgrade(config, "head")
        except CommandError as exc:
            raise StoreError(f"store: database migration failed: {exc}") from exc
        except SQLAlchemyError as exc:
            raise StoreError(_describe("migrate", exc)) from exc

    def ping(self) -> None:
        try:
            with self._engine.connect() as connection:
                connection.execute(text("SELECT 1"))
        except SQLAlchemyError as exc:
            raise StoreError(_describe("ping", exc)) from exc

    def close(self) -> None:
        self._engine.dispose()

    # -- sources -----------------------------------------------------------

    def upsert_source(self, name: str, url: str, branch: str, origin: str) -> None:
        """Create or update a source. Credentials in an http(s) URL are dropped: no secret is stored."""
        if origin not in ORIGINS:
            raise ValueError(f"source origin must be one of {sorted(ORIGINS)} (got {origin!r})")
        clean = _without_credentials(url)
        _retry_once(lambda: self._upsert_source(name, clean, branch, origin))

    def _upsert_source(self, name: str, url: str, branch: str, origin: str) -> None:
        with self._transaction("upsert_source", write=True) as session:
            row = session.get(SourceRow, name)
            if row is None:
                session.add(SourceRow(name=name, url=url, branch=branch, origin=origin))
                return
            row.url, row.branch, row.origin = url, branch, origin

    def list_sources(self) -> list[SourceRecord]:
        with self._transaction("list_sources") as session:
            rows = session.scalars(select(SourceRow).order_by(SourceRow.name))
            return [_source_record(row) for row in rows]

    def get_source(self, name: str) -> SourceRecord | None:
        with self._transaction("get_source") as session:
            row = session.get(SourceRow, name)
            return None if row is None else _source_record(row)

    def set_source_head(self, name: str, sha: str) -> None:
        with self._transaction("set_source_head", write=True) as session:
            row = session.get(SourceRow, name)
            if row is None:
                raise StoreError(f"store: set_source_head: source {name!r} is not known; upsert it first")
            row.last_sha, row.last_checked_at = sha, utcnow()

    # -- webhook deliveries ------------------------------------------------

    def record_delivery(
        self,
        delivery_id: str,
        event: str,
        repository: str,
        ref: str,
        after: str,
        result: DeliveryResult,
        detail: str,
    ) -> int:
        row = DeliveryRow(
            delivery_id=delivery_id,
            event=event,
            repository=repository,
            ref=ref,
            after=after,
            result=DeliveryResult(result).value,
            detail=detail,
        )
        with self._transaction("record_delivery", write=True) as session:
            session.add(row)
            session.flush()
            return row.id

    def record_deliveries(self, deliveries: Sequence[tuple[str, str, str, str, str, DeliveryResult, str]]) -> None:
        """Many audit rows in one transaction: (delivery_id, event, repository, ref, after, result, detail)."""
        rows = [DeliveryRow(delivery_id=d, event=e, repository=repo, ref=ref, after=after,
                            result=DeliveryResult(result).value, detail=detail)
                for d, e, repo, ref, after, result, detail in deliveries]
        with self._transaction("record_deliveries", write=True) as session:
            session.add_all(rows)

    def recent_accepted(self, limit: int = 10000) -> list[tuple[str, str, str]]:
        """(repository, ref, after) of the newest accepted pushes, newest first: the dedupe memory at start."""
        query = (select(DeliveryRow.repository, DeliveryRow.ref, DeliveryRow.after)
                 .where(DeliveryRow.result == DeliveryResult.ACCEPTED.value)
                 .order_by(DeliveryRow.id.desc()).limit(limit))
        with self._transaction("recent_accepted") as session:
            return [(repository, ref, after) for repository, ref, after in session.execute(query)]

    def seen_push(self, repository: str, ref: str, after: str) -> bool:
        """True when this push (whatever its delivery id) was accepted before."""
        query = select(DeliveryRow.id).where(
            DeliveryRow.repository == repository,
            DeliveryRow.ref == ref,
            DeliveryRow.after == after,
            DeliveryRow.result == DeliveryResult.ACCEPTED.value,
        )
        with self._transaction("seen_push") as session:
            return session.scalar(query.limit(1)) is not None

    def recent_deliveries(self, limit: int = 50) -> list[DeliveryView]:
        with self._transaction("recent_deliveries") as session:
            rows = session.scalars(select(DeliveryRow).order_by(DeliveryRow.id.desc()).limit(limit))
            return [_delivery_view(row) for row in rows]

    # -- services (the inventory) -----------------------------------------

    def upsert_service(self, name: str, source: str, runtime: str) -> None:
        """Create the service, or update its source and runtime; a removed service comes back."""
        _retry_once(lambda: self._upsert_service(name, source, runtime))

    def _upsert_service(self, name: str, source: str, runtime: str) -> None:
        with self._transaction("upsert_service", write=True) as session:
            row = session.get(ServiceRow, name)
            if row is None:
                session.add(ServiceRow(name=name, source=source, runtime=runtime, removed=False))
                return
            row.source, row.runtime, row.removed = source, runtime, False

    def service_source(self, name: str) -> str | None:
        """The source owning ``name``; None when unknown or removed (then any source may claim it)."""
        query = select(ServiceRow.source).where(ServiceRow.name == name, ServiceRow.removed.is_(False))
        with self._transaction("service_source") as session:
            return session.scalar(query)

    def inventory(self, source: str | None = None) -> set[str]:
        query = select(ServiceRow.name).where(ServiceRow.removed.is_(False))
        if source is not None:
            query = query.where(ServiceRow.source == source)
        with self._transaction("inventory") as session:
            return set(session.scalars(query))

    def mark_removed(self, name: str) -> None:
        with self._transaction("mark_removed", write=True) as session:
            row = session.get(ServiceRow, name)
            if row is not None:
                row.removed = True

    # -- revisions ---------------------------------------------------------

    def add_revision(
        self, desired: DesiredService, *, author: str, message: str, manifest_text: str
    ) -> RevisionView:
        """Record a resolved spec; the newest revision is returned instead when its hash is the same."""
        digest = desired.spec_hash
        with self._transaction("add_revision", write=True) as session:
            newest = session.scalar(_newest_revision(desired.name))
            if newest is not None and newest.spec_hash == digest:
                return _revision_view(newest)
            row = RevisionRow(
                service=desired.name,
                sha=desired.sha,
                author=author,
                message=message,
                manifest_text=manifest_text,
                spec=desired.spec(),
                spec_hash=digest,
            )
            session.add(row)
            session.flush()
            return _revision_view(row)

    def get_revision(self, revision_id: int) -> RevisionView | None:
        with self._transaction("get_revision") as session:
            row = session.get(RevisionRow, revision_id)
            return None if row is None else _revision_view(row)

    def revisions(self, service: str, limit: int = 50) -> list[RevisionView]:
        with self._transaction("revisions") as session:
            rows = session.scalars(_newest_revision(service).limit(limit))
            return [_revision_view(row) for row in rows]

    def set_desired(self, service: str, revision_id: int) -> None:
        with self._transaction("set_desired", write=True) as session:
            row = _service_row(session, service)
            row.desired_revision_id = _own_revision(session, service, revision_id)

    def set_running(self, service: str, revision_id: int | None) -> None:
        with self._transaction("set_running", write=True) as session:
            row = _service_row(session, service)
            row.running_revision_id = (
                None if revision_id is None else _own_revision(session, service, revision_id)
            )

    def last_good_revision(self, service: str, *, exclude: int | None = None) -> RevisionView | None:
        """The newest revision of ``service`` that has a succeeded attempt."""
        query = (
            select(RevisionRow)
            .join(AttemptRow, AttemptRow.revision_id == RevisionRow.id)
            .where(RevisionRow.service == service, AttemptRow.outcome == Outcome.SUCCEEDED.value)
            .order_by(RevisionRow.id.desc())
            .limit(1)
        )
        if exclude is not None:
            query = query.where(RevisionRow.id != exclude)
        with self._transaction("last_good_revision") as session:
            row = session.scalar(query)
            return None if row is None else _revision_view(row)

    def failed_revision(self, service: str, spec_hash: str) -> bool:
        """True when the newest finished attempt at this spec failed or was rolled back.

        Running attempts are not "ended" and are skipped; an interrupted one did
        not fail, so it leaves the spec eligible for another try. Failures that
        say nothing about the revision (a foreign process on the port, a runtime
        that was down) are skipped too: the same spec is tried again.
        """
        query = (
            select(AttemptRow.outcome)
            .join(RevisionRow, AttemptRow.revision_id == RevisionRow.id)
            .where(RevisionRow.service == service, RevisionRow.spec_hash == spec_hash)
            .where(AttemptRow.outcome != Outcome.RUNNING.value)
            .where(AttemptRow.reason.not_in(NOT_THE_REVISIONS_FAULT))
            .order_by(AttemptRow.id.desc())
            .limit(1)
        )
        with self._transaction("failed_revision") as session:
            outcome = session.scalar(query)
        return outcome in (Outcome.FAILED.value, Outcome.ROLLED_BACK.value)

    # -- attempts and steps ------------------------------------------------

    def start_attempt(self, service: str, revision_id: int | None, trigger: Trigger) -> int:
        row = AttemptRow(
            service=service,
            revision_id=revision_id,
            trigger=Trigger(trigger).value,
            outcome=Outcome.RUNNING.value,
            started_at=utcnow(),
        )
        with self._transaction("start_attempt", write=True) as session:
            session.add(row)
            session.flush()
            return row.id

    def add_step(self, attempt_id: int, name: str, duration: float, ok: bool, output_tail: str = "") -> None:
        """Record one step; only the last 4000 characters of its output are kept (errors come last)."""
        tail = self._redact(output_tail)[-OUTPUT_TAIL_CHARS:]
        with self._transaction("add_step", write=True) as session:
            session.add(StepRow(attempt_id=attempt_id, name=name, duration=duration, ok=ok, output_tail=tail))

    def finish_attempt(
        self,
        attempt_id: int,
        outcome: Outcome,
        reason: str,
        message: str,
        *,
        rolled_back_to: int | None = None,
    ) -> None:
        with self._transaction("finish_attempt", write=True) as session:
            row = session.get(AttemptRow, attempt_id)
            if row is None:
                raise StoreError(f"store: finish_attempt: attempt {attempt_id} does not exist")
            row.outcome, row.reason, row.message = Outcome(outcome).value, reason, self._redact(message)
            row.finished_at, row.rolled_back_to = utcnow(), rolled_back_to

    def interrupt_running_attempts(self) -> int:
        """At start-up: attempts left RUNNING by a previous process end as INTERRUPTED."""
        query = select(AttemptRow).where(AttemptRow.outcome == Outcome.RUNNING.value)
        with self._transaction("interrupt_running_attempts", write=True) as session:
            rows = session.scalars(query).all()
            now = utcnow()
            for row in rows:
                row.outcome, row.reason = Outcome.INTERRUPTED.value, Reason.INTERRUPTED.value
                row.message, row.finished_at = INTERRUPTED_MESSAGE, now
            return len(rows)

    def attempts(self, service: str, limit: int = 20) -> list[AttemptView]:
        query = (
            select(AttemptRow)
            .where(AttemptRow.service == service)
            .order_by(AttemptRow.id.desc())
            .limit(limit)
            .options(selectinload(AttemptRow.steps))
        )
        with self._transaction("attempts") as session:
            return [_attempt_view(row) for row in session.scalars(query)]

    # -- observed state ----------------------------------------------------

    def record_observation(self, service: str, state: str, healthy: bool, detail: str = "") -> None:
        detail = self._redact(detail)
        _retry_once(lambda: self._record_observation(service, state, healthy, detail))

    def _record_observation(self, service: str, state: str, healthy: bool, detail: str) -> None:
        with self._transaction("record_observation", write=True) as session:
            row = session.get(ObservationRow, service)
            if row is None:
                row = ObservationRow(service=service)
                session.add(row)
            row.state, row.healthy, row.detail, row.observed_at = state, healthy, detail, utcnow()

    def record_snapshot(self, service: str, *, logs_tail: str, info: dict[str, Any] | None, info_error: str) -> None:
        with self._transaction("record_snapshot", write=True) as session:
            row = session.get(SnapshotRow, service)
            if row is None:
                row = SnapshotRow(service=service)
                session.add(row)
            row.logs_tail = self._redact(logs_tail)[-OUTPUT_TAIL_CHARS:]
            row.info, row.info_error = _redact_json(info, self._redact), self._redact(info_error)[:2000]
            row.captured_at = utcnow()

    def snapshot(self, service: str) -> SnapshotView | None:
        with self._transaction("snapshot") as session:
            row = session.get(SnapshotRow, service)
            if row is None:
                return None
            return SnapshotView(row.service, row.logs_tail, dict(row.info) if row.info is not None else None,
                                row.info_error, row.captured_at)

    # -- demo results --------------------------------------------------------

    def record_demo(self, service: str, revision_id: int | None, attempt_id: int | None, *, name: str, ok: bool,
                    status: int | None, latency_ms: float | None, content_type: str, text: str | None,
                    body_file: str | None, truncated: bool, problems: str) -> int:
        row = DemoResultRow(service=service, revision_id=revision_id, attempt_id=attempt_id, name=name, ok=ok,
                            status=status, latency_ms=latency_ms, content_type=content_type[:200],
                            text=self._redact(text) if text is not None else None, body_file=body_file,
                            truncated=truncated, problems=self._redact(problems), created_at=utcnow())
        with self._transaction("record_demo", write=True) as session:
            session.add(row)
            session.flush()
            return row.id

    def demo_runs(self, service: str, *, revisions: int = 5) -> dict[int | None, list[DemoView]]:
        """The newest answer per demo input for each of the service's last ``revisions`` revisions with demos."""
        query = select(DemoResultRow).where(DemoResultRow.service == service).order_by(DemoResultRow.id.desc())
        runs: dict[int | None, dict[str, DemoView]] = {}
        with self._transaction("demo_runs") as session:
            for row in session.scalars(query.limit(2000)):
                if row.revision_id not in runs and len(runs) >= revisions:
                    continue
                runs.setdefault(row.revision_id, {}).setdefault(row.name, _demo_view(row))
        return {revision: sorted(by_name.values(), key=lambda view: view.name) for revision, by_name in runs.items()}

    def demo_result(self, service: str, result_id: int) -> DemoView | None:
        """One recorded answer of ``service`` (None for another service's id)."""
        with self._transaction("demo_result") as session:
            row = session.get(DemoResultRow, result_id)
            return _demo_view(row) if row is not None and row.service == service else None

    def groups(self) -> dict[str, list[str]]:
        """Group name -> member services, from each live service's desired revision."""
        query = (select(ServiceRow.name, RevisionRow.spec)
                 .join(RevisionRow, RevisionRow.id == ServiceRow.desired_revision_id)
                 .where(ServiceRow.removed.is_(False)))
        found: dict[str, list[str]] = {}
        with self._transaction("groups") as session:
            for name, spec in session.execute(query):
                group = spec.get("group") if isinstance(spec, dict) else None
                if group:
                    found.setdefault(str(group), []).append(name)
        return {group: sorted(members) for group, members in sorted(found.items())}

    # -- ports -------------------------------------------------------------

    def port_of(self, service: str) -> int | None:
        query = select(PortAllocationRow.port).where(PortAllocationRow.service == service)
        with self._transaction("port_of") as session:
            return session.scalar(query)

    def allocate_port(
        self, service: str, bounds: tuple[int, int], is_free: Callable[[int], bool], *, grace: float = 0.0
    ) -> int:
        """The service's port: its existing allocation, else the lowest free port in ``bounds``.

        ``is_free`` (a host check) runs outside any transaction. A concurrent
        writer taking the same port makes the insert fail; the next port is tried.
        A port another service released less than ``grace`` seconds ago is skipped,
        so clients still pointing at the old service do not reach a new one.
        """
        passed: set[int] = set()
        while True:
            existing, taken = self._port_state(service, grace)
            if existing is not None:
                return existing
            port = _lowest_free(bounds, taken | passed, is_free, passed)
            if self._insert_allocation(service, port):
                return port
            passed.add(port)

    def _port_state(self, service: str, grace: float) -> tuple[int | None, set[int]]:
        cutoff = utcnow() - timedelta(seconds=grace)
        cooling = (select(ReleasedPortRow.port)
                   .where(ReleasedPortRow.released_at > cutoff, ReleasedPortRow.service != service))
        with self._transaction("allocate_port") as session:
            rows = session.execute(select(PortAllocationRow.service, PortAllocationRow.port))
            allocations = {service_name: port for service_name, port in rows}
            held = set(session.scalars(cooling)) if grace > 0 else set()
        return allocations.pop(service, None), set(allocations.values()) | held

    def _insert_allocation(self, service: str, port: int) -> bool:
        try:
            with self._transaction("allocate_port", write=True) as session:
                session.add(PortAllocationRow(service=service, port=port))
        except StoreConflictError:
            return False
        return True

    def claim_port(self, service: str, port: int) -> None:
        """Give fixed ``port`` to ``service`` (replacing its previous one) unless another service holds it."""
        _retry_once(lambda: self._claim_port(service, port))

    def _claim_port(self, service: str, port: int) -> None:
        holder_query = select(PortAllocationRow.service).where(PortAllocationRow.port == port)
        with self._transaction("claim_port", write=True) as session:
            holder = session.scalar(holder_query)
            if holder is not None and holder != service:
                raise PortConflict(f"port {port} is already used by service {holder!r}")
            row = session.get(PortAllocationRow, service)
            if row is None:
                session.add(PortAllocationRow(service=service, port=port))
            elif row.port != port:
                row.port, row.allocated_at = port, utcnow()

    def release_port(self, service: str) -> None:
        """Free the service's port; it is remembered as released for the grace period."""
        with self._transaction("release_port", write=True) as session:
            row = session.get(PortAllocationRow, service)
            if row is None:
                return
            released = session.get(ReleasedPortRow, row.port)
            if released is None:
                session.add(ReleasedPortRow(port=row.port, service=service, released_at=utcnow()))
            else:
                released.service, released.released_at = service, utcnow()
            session.delete(row)

    # -- overrides ---------------------------------------------------------

    def set_override(
        self, service: str, kind: OverrideKind, *, who: str, why: str = "", revision_id: int | None = None
    ) -> OverrideView:
        """Make ``kind`` active for ``service``, replacing an active one of the same kind."""
        with self._transaction("set_override", write=True) as session:
            if revision_id is not None:
                _own_revision(session, service, revision_id)
            for row in session.scalars(_active_overrides(service).where(OverrideRow.kind == kind.value)):
                row.cleared_at, row.cleared_by = utcnow(), who
            row = OverrideRow(service=service, kind=kind.value, revision_id=revision_id, who=who, why=why,
                              created_at=utcnow())
            session.add(row)
            session.flush()
            return _override_view(row)

    def clear_override(self, service: str, kind: OverrideKind, *, who: str) -> bool:
        """End the active override of ``kind``; False when there was none."""
        with self._transaction("clear_override", write=True) as session:
            rows = session.scalars(_active_overrides(service).where(OverrideRow.kind == kind.value)).all()
            for row in rows:
                row.cleared_at, row.cleared_by = utcnow(), who
            return bool(rows)

    def active_overrides(self, service: str) -> dict[OverrideKind, OverrideView]:
        with self._transaction("active_overrides") as session:
            return {OverrideKind(row.kind): _override_view(row) for row in session.scalars(_active_overrides(service))}

    def all_active_overrides(self) -> dict[str, dict[OverrideKind, OverrideView]]:
        """Every active override in one query (a reconcile pass reads them once)."""
        query = select(OverrideRow).where(OverrideRow.cleared_at.is_(None))
        found: dict[str, dict[OverrideKind, OverrideView]] = {}
        with self._transaction("all_active_overrides") as session:
            for row in session.scalars(query):
                found.setdefault(row.service, {})[OverrideKind(row.kind)] = _override_view(row)
        return found

    def override_history(self, service: str, limit: int = 50) -> list[OverrideView]:
        query = select(OverrideRow).where(OverrideRow.service == service).order_by(OverrideRow.id.desc()).limit(limit)
        with self._transaction("override_history") as session:
            return [_override_view(row) for row in session.scalars(query)]

    # -- read models -------------------------------------------------------

    def service_views(self) -> list[ServiceView]:
        """One view per inventory member, sorted by name, in a few queries (not one per service)."""
        query = _live_services().order_by(ServiceRow.name)
        with self._transaction("service_views") as session:
            return _service_views(session, session.scalars(query).all())

    def service_view(self, name: str) -> ServiceView | None:
        query = _live_services().where(ServiceRow.name == name)
        with self._transaction("service_view") as session:
            views = _service_views(session, session.scalars(query).all())
        return views[0] if views else None

    # -- plumbing ----------------------------------------------------------

    @contextmanager
    def _transaction(self, op: str, *, write: bool = False) -> Iterator[Session]:
        """One short transaction; commits on success and translates database errors."""
        try:
            with self._sessions.begin() as session:
                if write:
                    session.connection(execution_options={_SQLITE_WRITE: True})
                yield session
        except IntegrityError as exc:
            raise StoreConflictError(_describe(op, exc)) from exc
        except SQLAlchemyError as exc:
            raise StoreError(_describe(op, exc)) from exc


# -- engine --------------------------------------------------------------


def _redact_json(value: Any, redact: Callable[[str], str], depth: int = 0) -> Any:
    if isinstance(value, str):
        return redact(value)
    if depth >= 32 and isinstance(value, dict | list):
        return "(nested too deeply)"
    if isinstance(value, dict):
        return {redact(str(key)): _redact_json(item, redact, depth + 1) for key, item in value.items()}
    if isinstance(value, list):
        return [_redact_json(item, redact, depth + 1) for item in value]
    return value


def _create_engine(url: str) -> Engine:
    try:
        parsed = make_url(url)
        if parsed.get_backend_name() == "sqlite":
            return _sqlite_engine(parsed)
        return create_engine(_with_installed_driver(parsed), pool_pre_ping=True)
    except (ArgumentError, ImportError, OSError) as exc:
        raise StoreError(f"store: database url is not usable: {exc}") from exc


def _with_installed_driver(url: URL) -> URL:
    # SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3; deployer ships psycopg2.
    if url.drivername == "postgresql":
        return url.set(drivername="postgresql+psycopg2")
    return url


def _sqlite_engine(url: URL) -> Engine:
    database = url.database or ""
    memory = database in ("", ":memory:")
    if not memory:
        Path(database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(
        url,
        # A 30 s busy timeout: writers queue behind each other instead of failing at once.
        connect_args={"check_same_thread": False, "timeout": 30},
        # One shared connection keeps an in-memory database alive (tests only; not for threads).
        poolclass=StaticPool if memory else None,
    )
    event.listen(engine, "connect", _on_sqlite_connect)
    event.listen(engine, "begin", _on_sqlite_begin)
    return engine


def _on_sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    # The sqlite3 driver's own BEGIN handling skips SELECTs and DDL; SQLAlchemy emits BEGIN instead.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _on_sqlite_begin(connection: Connection) -> None:
    # Writers take the write lock up front: a read lock upgraded later can fail with
    # "database is locked" at once, without waiting for the busy timeout.
    write = connection.get_execution_options().get(_SQLITE_WRITE, False)
    connection.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


def _describe(op: str, exc: SQLAlchemyError) -> str:
    """A one-line message without SQL text or bound values."""
    cause = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
    first_line = (str(cause).strip().splitlines() or [""])[0]
    return f"store: {op} failed: {type(cause).__name__}: {first_line}"


def _retry_once(action: Callable[[], _T]) -> _T:
    """Run ``action``; when a concurrent writer won a unique key, run it again (it now sees that row)."""
    try:
        return action()
    except StoreConflictError:
        return action()


def _without_credentials(url: str) -> str:
    """Drop user info from http(s) URLs (a token can sit in either part) and passwords from others."""
    parts = urlsplit(url)
    if not parts.netloc or "@" not in parts.netloc:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    if parts.scheme in ("http", "https") or parts.username is None:
        return urlunsplit(parts._replace(netloc=host))
    return urlunsplit(parts._replace(netloc=f"{parts.username}@{host}"))


# -- queries -------------------------------------------------------------


def _newest_revision(service: str) -> Select[RevisionRow]:
    return select(RevisionRow).where(RevisionRow.service == service).order_by(RevisionRow.id.desc())


def _live_services() -> Select[ServiceRow]:
    return (
        select(ServiceRow)
        .where(ServiceRow.removed.is_(False))
        .options(selectinload(ServiceRow.desired_revision), selectinload(ServiceRow.running_revision))
    )


def _service_row(session: Session, name: str) -> ServiceRow:
    row = session.get(ServiceRow, name)
    if row is None:
        raise StoreError(f"store: service {name!r} is not in the inventory; upsert_service it first")
    return row


def _own_revision(session: Session, service: str, revision_id: int) -> int:
    """``revision_id`` after checking it exists and belongs to ``service``."""
    revision = session.get(RevisionRow, revision_id)
    if revision is None or revision.service != service:
        raise StoreError(f"store: revision {revision_id} is not a revision of service {service!r}")
    return revision_id


def _lowest_free(
    bounds: tuple[int, int], skip: set[int], is_free: Callable[[int], bool], busy: set[int]
) -> int:
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


def _demo_view(row: DemoResultRow) -> DemoView:
    return DemoView(id=row.id, service=row.service, revision=row.revision_id, name=row.name, ok=row.ok,
                    status=row.status, latency_ms=row.latency_ms, content_type=row.content_type, text=row.text,
                    body_file=row.body_file, truncated=row.truncated, problems=row.problems,
                    created_at=row.created_at)


def _active_overrides(service: str) -> Select[OverrideRow]:
    return select(OverrideRow).where(OverrideRow.service == service, OverrideRow.cleared_at.is_(None))


def _override_view(row: OverrideRow) -> OverrideView:
    return OverrideView(id=row.id, service=row.service, kind=row.kind, revision=row.revision_id, who=row.who,
                        why=row.why, created_at=row.created_at, cleared_at=row.cleared_at, cleared_by=row.cleared_by)


def _override_label(kinds: set[str]) -> str | None:
    """What the overview shows: suspended outranks pinned (nothing happens to the service at all)."""
    for kind in (OverrideKind.SUSPENDED.value, OverrideKind.PINNED.value):
        if kind in kinds:
            return kind
    return None


def _service_views(session: Session, rows: Sequence[ServiceRow]) -> list[ServiceView]:
    names = [row.name for row in rows]
    if not names:
        return []
    port_query = select(PortAllocationRow.service, PortAllocationRow.port)
    ports = {
        name: port for name, port in session.execute(port_query.where(PortAllocationRow.service.in_(names)))
    }
    observations = {
        row.service: row
        for row in session.scalars(select(ObservationRow).where(ObservationRow.service.in_(names)))
    }
    newest_ids = select(func.max(AttemptRow.id)).where(AttemptRow.service.in_(names))
    attempt_query = (
        select(AttemptRow)
        .where(AttemptRow.id.in_(newest_ids.group_by(AttemptRow.service)))
        .options(selectinload(AttemptRow.steps))
    )
    attempts = {row.service: _attempt_view(row) for row in session.scalars(attempt_query)}
    overrides: dict[str, set[str]] = {}
    override_query = select(OverrideRow.service, OverrideRow.kind).where(
        OverrideRow.service.in_(names), OverrideRow.cleared_at.is_(None))
    for service, kind in session.execute(override_query):
        overrides.setdefault(service, set()).add(kind)
    return [
        _service_view(row, ports.get(row.name), observations.get(row.name), attempts.get(row.name),
                      _override_label(overrides.get(row.name, set())))
        for row in rows
    ]


# -- rows to values ------------------------------------------------------


def _service_view(
    row: ServiceRow, port: int | None, observed: ObservationRow | None, attempt: AttemptView | None,
    override: str | None,
) -> ServiceView:
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
    )


def _source_record(row: SourceRow) -> SourceRecord:
    return SourceRecord(row.name, row.url, row.branch, row.origin, row.last_sha, row.last_checked_at)


def _delivery_view(row: DeliveryRow) -> DeliveryView:
    return DeliveryView(
        id=row.id,
        delivery_id=row.delivery_id,
        event=row.event,
        repository=row.repository,
        ref=row.ref,
        after=row.after,
        result=DeliveryResult(row.result),
        detail=row.detail,
        received_at=row.received_at,
    )


def _revision_view(row: RevisionRow) -> RevisionView:
    return RevisionView(
        id=row.id,
        service=row.service,
        sha=row.sha,
        author=row.author,
        message=row.message,
        spec_hash=row.spec_hash,
        created_at=row.created_at,
        spec=dict(row.spec),
        manifest_text=row.manifest_text,
    )


def _attempt_view(row: AttemptRow) -> AttemptView:
    return AttemptView(
        id=row.id,
        service=row.service,
        revision=row.revision_id,
        trigger=row.trigger,
        outcome=row.outcome,
        reason=row.reason,
        message=row.message,
        started_at=row.started_at,
        finished_at=row.finished_at,
        rolled_back_to=row.rolled_back_to,
        steps=tuple(StepView(step.name, step.duration, step.ok, step.output_tail) for step in row.steps),
    )
