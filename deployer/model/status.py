"""Outcomes, triggers and the read models the page and the JSON API show."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum


class Outcome(StrEnum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    ROLLED_BACK = "rolled_back"
    INTERRUPTED = "interrupted"


class Trigger(StrEnum):
    WEBHOOK = "webhook"
    POLL = "poll"
    SCHEDULE = "schedule"
    CLI = "cli"
    STARTUP = "startup"
    ROLLBACK = "rollback"
    DRIFT = "drift"
    RESTART = "restart"  # an operator's restart of the running revision (``deployer restart``)


class DeliveryResult(StrEnum):
    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"
    IGNORED = "ignored"
    REJECTED = "rejected"


@dataclass(frozen=True)
class StepView:
    name: str
    duration: float
    ok: bool
    output_tail: str = ""


@dataclass(frozen=True)
class AttemptView:
    id: int
    service: str
    revision: int | None
    trigger: str
    outcome: str
    reason: str
    message: str
    started_at: datetime
    finished_at: datetime | None
    rolled_back_to: int | None = None
    steps: tuple[StepView, ...] = ()


@dataclass(frozen=True)
class RevisionView:
    id: int
    service: str
    sha: str
    author: str
    message: str
    spec_hash: str
    created_at: datetime
    spec: dict[str, object] = field(default_factory=dict)
    manifest_text: str = ""


@dataclass(frozen=True)
class DemoView:
    """One demo input's recorded answer (``body_file`` for binary answers, relative to the state dir)."""

    id: int
    service: str
    revision: int | None
    name: str
    ok: bool
    status: int | None
    latency_ms: float | None
    content_type: str
    text: str | None
    body_file: str | None
    truncated: bool
    problems: str
    created_at: datetime


@dataclass(frozen=True)
class SnapshotView:
    """What the service itself said last: its log tail and its ``/info``."""

    service: str
    logs_tail: str
    info: dict[str, object] | None
    info_error: str
    captured_at: datetime


class OverrideKind(StrEnum):
    PINNED = "pinned"
    SUSPENDED = "suspended"
    STOPPED = "stopped"  # desired state "stopped" until started: passes keep it stopped, new commits wait


@dataclass(frozen=True)
class OverrideView:
    """An operator's override: who set it, why, when, and (pins) which revision."""

    id: int
    service: str
    kind: str
    revision: int | None
    who: str
    why: str
    created_at: datetime
    cleared_at: datetime | None = None
    cleared_by: str | None = None

    @property
    def active(self) -> bool:
        return self.cleared_at is None


@dataclass(frozen=True)
class ServiceView:
    """One row of the status page and of ``GET /api/services``."""

    name: str
    source: str
    runtime: str
    state: str
    healthy: bool
    port: int | None
    desired_sha: str | None
    running_sha: str | None
    desired_revision: int | None
    running_revision: int | None
    last_attempt: AttemptView | None
    override: str | None = None
    observed_at: datetime | None = None
    detail: str = ""  # what the runtime or the health probe said last (container id, image, engine health …)
    slot: str | None = None  # behind the gateway: the slot serving (blue or green)
    gateway_path: str | None = None  # the running revision's gateway path


@dataclass(frozen=True)
class ArtifactTransfer:
    """A deploy's artifacts arriving now: bytes fetched so far of those it has to fetch."""

    service: str
    fetched: int
    expected: int


@dataclass(frozen=True)
class CacheUse:
    """What the artifact cache holds now, its budget (``[artifacts] cache_max``) in bytes, and what is arriving."""

    bytes: int
    objects: int
    budget: int
    fetching: tuple[ArtifactTransfer, ...] = ()
