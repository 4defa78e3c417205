"""History: every configuration revision of every service, and every attempt with its steps.

A revision is a resolved spec recorded once per distinct spec hash; an attempt is
one try at deploying a revision, made of timed steps, and always ends with an
outcome. "Last good" and "failed before" are answered here, from attempts.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session, selectinload

from deployer.errors import Reason
from deployer.model.desired import DesiredService
from deployer.model.status import AttemptView, Outcome, RevisionView, StepView, Trigger
from deployer.store.engine import Database, StoreError
from deployer.store.tables import OUTPUT_TAIL_CHARS, AttemptRow, RevisionRow, ServiceRow, StepRow, utcnow

# Failures that say nothing about the revision: the same spec is tried again.
NOT_THE_REVISIONS_FAULT = (Reason.PORT_CONFLICT.value, Reason.RUNTIME_UNAVAILABLE.value, Reason.SECRET_MISSING.value,
                           Reason.GATEWAY_FAILED.value, Reason.DEGRADED.value)
INTERRUPTED_MESSAGE = "deployer stopped before this attempt finished; the next reconcile tries again"


class History:
    def __init__(self, db: Database, redact: Callable[[str], str]) -> None:
        self._db = db
        self._redact = redact  # step outputs and messages carry service output: no secret is written
        # service -> the newest attempt this process started for it: a pass names the attempt it
        # made by comparing it before and after acting (under the service's lock), with no query
        self._started: dict[str, int] = {}

    # -- revisions ---------------------------------------------------------

    def add_revision(self, desired: DesiredService, *, author: str, message: str,
                     manifest_text: str) -> RevisionView:
        """Record a resolved spec; the newest revision is returned instead when its hash is the same."""
        digest = desired.spec_hash
        with self._db.transaction("add_revision", write=True) as session:
            newest = session.scalar(newest_revisions(desired.name))
            if newest is not None and newest.spec_hash == digest:
                return revision_view(newest)
            row = RevisionRow(service=desired.name, sha=desired.sha, author=author, message=message,
                              manifest_text=manifest_text, spec=desired.spec(), spec_hash=digest)
            session.add(row)
            session.flush()
            return revision_view(row)

    def get_revision(self, revision_id: int) -> RevisionView | None:
        with self._db.transaction("get_revision") as session:
            row = session.get(RevisionRow, revision_id)
            return None if row is None else revision_view(row)

    def revisions(self, service: str, limit: int = 50) -> list[RevisionView]:
        with self._db.transaction("revisions") as session:
            rows = session.scalars(newest_revisions(service).limit(limit))
            return [revision_view(row) for row in rows]

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
        with self._db.transaction("last_good_revision") as session:
            row = session.scalar(query)
            return None if row is None else revision_view(row)

    def kept_commits(self, source: str) -> set[str]:
        """The commits a source's checkouts must keep: each of its services' running, desired and last
        good revision's (two queries, however many services)."""
        ours = select(ServiceRow.name).where(ServiceRow.source == source)
        referenced = select(RevisionRow.sha).where(RevisionRow.id.in_(
            select(ServiceRow.running_revision_id).where(ServiceRow.source == source)
            .union(select(ServiceRow.desired_revision_id).where(ServiceRow.source == source))))
        newest_good = (select(func.max(RevisionRow.id))
                       .join(AttemptRow, AttemptRow.revision_id == RevisionRow.id)
                       .where(RevisionRow.service.in_(ours), AttemptRow.outcome == Outcome.SUCCEEDED.value)
                       .group_by(RevisionRow.service))
        with self._db.transaction("kept_commits") as session:
            return set(session.scalars(referenced)) | set(
                session.scalars(select(RevisionRow.sha).where(RevisionRow.id.in_(newest_good))))

    def failed_revision(self, service: str, spec_hash: str) -> bool:
        """True when the newest finished attempt at this spec failed or was rolled back (see ``last_failure``)."""
        return self.last_failure(service, spec_hash) is not None

    def last_failure(self, service: str, spec_hash: str) -> str | None:
        """``"Reason: message"`` of the newest finished attempt at this spec when it failed or was rolled back.

        Running attempts are not "ended" and are skipped; an interrupted one did
        not fail, so it leaves the spec eligible for another try. Failures that
        say nothing about the revision (a foreign process on the port, a runtime
        that was down) are skipped too: the same spec is tried again.
        """
        query = (
            select(AttemptRow.outcome, AttemptRow.reason, AttemptRow.message)
            .join(RevisionRow, AttemptRow.revision_id == RevisionRow.id)
            .where(RevisionRow.service == service, RevisionRow.spec_hash == spec_hash)
            .where(AttemptRow.outcome != Outcome.RUNNING.value)
            .where(AttemptRow.reason.not_in(NOT_THE_REVISIONS_FAULT))
            .order_by(AttemptRow.id.desc())
            .limit(1)
        )
        with self._db.transaction("last_failure") as session:
            row = session.execute(query).first()
        if row is None or row.outcome not in (Outcome.FAILED.value, Outcome.ROLLED_BACK.value):
            return None
        return f"{row.reason}: {row.message}"

    # -- attempts and steps ------------------------------------------------

    def start_attempt(self, service: str, revision_id: int | None, trigger: Trigger) -> int:
        row = AttemptRow(service=service, revision_id=revision_id, trigger=Trigger(trigger).value,
                         outcome=Outcome.RUNNING.value, started_at=utcnow())
        with self._db.transaction("start_attempt", write=True) as session:
            session.add(row)
            session.flush()
            attempt_id: int = row.id
        self._started[service] = attempt_id
        return attempt_id

    def newest_started(self, service: str) -> int | None:
        """The newest attempt this process started for ``service`` (None if none yet): no query."""
        return self._started.get(service)

    def add_step(self, attempt_id: int, name: str, duration: float, ok: bool, output_tail: str = "") -> None:
        """Record one step; only the last 4000 characters of its output are kept (errors come last)."""
        tail = self._redact(output_tail)[-OUTPUT_TAIL_CHARS:]
        with self._db.transaction("add_step", write=True) as session:
            session.add(StepRow(attempt_id=attempt_id, name=name, duration=duration, ok=ok, output_tail=tail))

    def finish_attempt(self, attempt_id: int, outcome: Outcome, reason: str, message: str, *,
                       rolled_back_to: int | None = None) -> None:
        with self._db.transaction("finish_attempt", write=True) as session:
            row = session.get(AttemptRow, attempt_id)
            if row is None:
                raise StoreError(f"store: finish_attempt: attempt {attempt_id} does not exist")
            row.outcome, row.reason, row.message = Outcome(outcome).value, reason, self._redact(message)
            row.finished_at, row.rolled_back_to = utcnow(), rolled_back_to

    def interrupt_running_attempts(self) -> int:
        """At start-up: attempts left RUNNING by a previous process end as INTERRUPTED."""
        query = select(AttemptRow).where(AttemptRow.outcome == Outcome.RUNNING.value)
        with self._db.transaction("interrupt_running_attempts", write=True) as session:
            rows = session.scalars(query).all()
            now = utcnow()
            for row in rows:
                row.outcome, row.reason = Outcome.INTERRUPTED.value, Reason.INTERRUPTED.value
                row.message, row.finished_at = INTERRUPTED_MESSAGE, now
            return len(rows)

    def attempt(self, attempt_id: int) -> AttemptView | None:
        query = select(AttemptRow).where(AttemptRow.id == attempt_id).options(selectinload(AttemptRow.steps))
        with self._db.transaction("attempt") as session:
            row = session.scalar(query)
            return attempt_view(row) if row is not None else None

    def attempts(self, service: str, limit: int = 20) -> list[AttemptView]:
        query = (select(AttemptRow).where(AttemptRow.service == service).order_by(AttemptRow.id.desc())
                 .limit(limit).options(selectinload(AttemptRow.steps)))
        with self._db.transaction("attempts") as session:
            return [attempt_view(row) for row in session.scalars(query)]


def newest_revisions(service: str) -> Select[RevisionRow]:
    return select(RevisionRow).where(RevisionRow.service == service).order_by(RevisionRow.id.desc())


def own_revision(session: Session, service: str, revision_id: int) -> int:
    """``revision_id`` after checking it exists and belongs to ``service``."""
    revision = session.get(RevisionRow, revision_id)
    if revision is None or revision.service != service:
        raise StoreError(f"store: revision {revision_id} is not a revision of service {service!r}")
    return revision_id


def revision_view(row: RevisionRow) -> RevisionView:
    return RevisionView(id=row.id, service=row.service, sha=row.sha, author=row.author, message=row.message,
                        spec_hash=row.spec_hash, created_at=row.created_at, spec=dict(row.spec),
                        manifest_text=row.manifest_text)


def attempt_view(row: AttemptRow) -> AttemptView:
    return AttemptView(
        id=row.id, service=row.service, revision=row.revision_id, trigger=row.trigger, outcome=row.outcome,
        reason=row.reason, message=row.message, started_at=row.started_at, finished_at=row.finished_at,
        rolled_back_to=row.rolled_back_to,
        steps=tuple(StepView(step.name, step.duration, step.ok, step.output_tail) for step in row.steps),
    )
