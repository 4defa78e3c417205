"""SQLAlchemy tables of deployer's state and history (DESIGN.md §8).

History tables (revisions, attempts, deliveries) key services by name without
a foreign key to ``services``: an attempt can be recorded for a service that
never made it into the inventory (an invalid manifest), and history outlives it.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    CheckConstraint,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

# Stable constraint names, so later Alembic migrations can address them on both databases.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

NAME = 64
SHA = 64
SHORT = 32
OUTPUT_TAIL_CHARS = 4000


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on every database.

    SQLite stores no offset and hands back naive values; they were written as
    UTC, so the offset is put back on read. Naive input is refused: its zone is unknown.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value.isoformat()} given; deployer stores UTC-aware times")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JSON()}


class SourceRow(Base):
    __tablename__ = "sources"
    __table_args__ = (CheckConstraint("origin IN ('config', 'gitea')", name="origin"),)

    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    url: Mapped[str] = mapped_column(Text)
    branch: Mapped[str] = mapped_column(String(200))
    origin: Mapped[str] = mapped_column(String(16))
    last_sha: Mapped[str | None] = mapped_column(String(SHA))
    last_checked_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class RevisionRow(Base):
    __tablename__ = "revisions"
    __table_args__ = (Index("ix_revisions_service_id", "service", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    service: Mapped[str] = mapped_column(String(NAME))
    sha: Mapped[str] = mapped_column(String(SHA))
    author: Mapped[str] = mapped_column(Text)
    message: Mapped[str] = mapped_column(Text)
    manifest_text: Mapped[str] = mapped_column(Text)
    spec: Mapped[dict[str, Any]]
    spec_hash: Mapped[str] = mapped_column(String(SHA))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ServiceRow(Base):
    """The inventory: services deployer created and therefore may change or remove."""

    __tablename__ = "services"

    name: Mapped[str] = mapped_column(String(NAME), primary_key=True)
    source: Mapped[str] = mapped_column(String(200))
    runtime: Mapped[str] = mapped_column(String(SHORT))
    removed: Mapped[bool] = mapped_column(default=False)
    desired_revision_id: Mapped[int | None] = mapped_column(ForeignKey("revisions.id"))
    running_revision_id: Mapped[int | None] = mapped_column(ForeignKey("revisions.id"))
    active_slot: Mapped[str | None] = mapped_column(String(16), default=None)  # behind the gateway: which serves
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    desired_revision: Mapped[RevisionRow | None] = relationship(foreign_keys=[desired_revision_id])
    running_revision: Mapped[RevisionRow | None] = relationship(foreign_keys=[running_revision_id])


class AttemptRow(Base):
    __tablename__ = "attempts"
    __table_args__ = (Index("ix_attempts_service_id", "service", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    service: Mapped[str] = mapped_column(String(NAME))
    revision_id: Mapped[int | None] = mapped_column(ForeignKey("revisions.id"), index=True)
    trigger: Mapped[str] = mapped_column(String(SHORT))
    outcome: Mapped[str] = mapped_column(String(SHORT), index=True)
    reason: Mapped[str] = mapped_column(String(64), default="")
    message: Mapped[str] = mapped_column(Text, default="")
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None]
    rolled_back_to: Mapped[int | None] = mapped_column(ForeignKey("revisions.id"))

    steps: Mapped[list[StepRow]] = relationship(order_by="StepRow.id", cascade="all, delete-orphan")


class StepRow(Base):
    __tablename__ = "steps"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    attempt_id: Mapped[int] = mapped_column(ForeignKey("attempts.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(64))
    duration: Mapped[float] = mapped_column(Float)
    ok: Mapped[bool]
    output_tail: Mapped[str] = mapped_column(Text, default="")


class DeliveryRow(Base):
    """One webhook delivery: audit and dedupe. Headers, bodies and signatures are never kept."""

    __tablename__ = "deliveries"
    __table_args__ = (Index("ix_deliveries_repository_ref_after", "repository", "ref", "after"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    delivery_id: Mapped[str] = mapped_column(String(100))
    event: Mapped[str] = mapped_column(String(SHORT))
    repository: Mapped[str] = mapped_column(String(200))
    ref: Mapped[str] = mapped_column(String(255))
    after: Mapped[str] = mapped_column(String(SHA))
    result: Mapped[str] = mapped_column(String(SHORT))
    detail: Mapped[str] = mapped_column(Text, default="")
    received_at: Mapped[datetime] = mapped_column(default=utcnow)


class PortAllocationRow(Base):
    """One port per service (primary key) and one service per port (unique)."""

    __tablename__ = "port_allocations"

    service: Mapped[str] = mapped_column(String(NAME), primary_key=True)
    port: Mapped[int] = mapped_column(Integer, unique=True)
    allocated_at: Mapped[datetime] = mapped_column(default=utcnow)


class SlotPortRow(Base):
    """The two loopback ports of a service's blue/green slots (one port per slot, unique)."""

    __tablename__ = "slot_ports"

    service: Mapped[str] = mapped_column(String(NAME), primary_key=True)
    slot: Mapped[str] = mapped_column(String(16), primary_key=True)
    port: Mapped[int] = mapped_column(Integer, unique=True)
    allocated_at: Mapped[datetime] = mapped_column(default=utcnow)


class ObservationRow(Base):
    """The last state the reconciler observed, so pages never call a runtime."""

    __tablename__ = "observations"

    service: Mapped[str] = mapped_column(String(NAME), primary_key=True)
    state: Mapped[str] = mapped_column(String(SHORT))
    healthy: Mapped[bool]
    detail: Mapped[str] = mapped_column(Text, default="")
    observed_at: Mapped[datetime] = mapped_column(default=utcnow)


class DemoResultRow(Base):
    """One demo input's answer for one revision; binary answers are files, named here."""

    __tablename__ = "demo_results"
    __table_args__ = (Index("ix_demo_results_service_revision_id", "service", "revision_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    service: Mapped[str] = mapped_column(String(NAME))
    revision_id: Mapped[int | None] = mapped_column(ForeignKey("revisions.id"))
    attempt_id: Mapped[int | None] = mapped_column(Integer, default=None)
    name: Mapped[str] = mapped_column(String(64))
    ok: Mapped[bool]
    status: Mapped[int | None] = mapped_column(Integer, default=None)
    latency_ms: Mapped[float | None] = mapped_column(Float, default=None)
    content_type: Mapped[str] = mapped_column(String(200), default="")
    text: Mapped[str | None] = mapped_column(Text, default=None)
    body_file: Mapped[str | None] = mapped_column(Text, default=None)
    truncated: Mapped[bool] = mapped_column(default=False)
    problems: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class SnapshotRow(Base):
    """The last log lines and /info answer of a service, captured by the reconciler for the pages."""

    __tablename__ = "service_snapshots"

    service: Mapped[str] = mapped_column(String(NAME), primary_key=True)
    logs_tail: Mapped[str] = mapped_column(Text, default="")
    info: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    info_error: Mapped[str] = mapped_column(Text, default="")
    captured_at: Mapped[datetime] = mapped_column(default=utcnow)


class OverrideRow(Base):
    """An operator override (pin to a revision, suspend, stop). Cleared rows stay, as history."""

    __tablename__ = "overrides"
    __table_args__ = (CheckConstraint("kind IN ('pinned', 'suspended', 'stopped')", name="kind"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    service: Mapped[str] = mapped_column(String(NAME), index=True)
    kind: Mapped[str] = mapped_column(String(16))
    revision_id: Mapped[int | None] = mapped_column(ForeignKey("revisions.id"))
    who: Mapped[str] = mapped_column(String(200))
    why: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    cleared_at: Mapped[datetime | None] = mapped_column(default=None)
    cleared_by: Mapped[str | None] = mapped_column(String(200), default=None)


class ReleasedPortRow(Base):
    """A port whose service went away; not handed to another service until its grace period ends."""

    __tablename__ = "released_ports"

    port: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    service: Mapped[str] = mapped_column(String(NAME))
    released_at: Mapped[datetime] = mapped_column(default=utcnow)
