"""Page presenters: what the status templates show but should not compute.

Each service's condition (failing, drifting, deploying …) and the reason shown
for it, a service's detail as read from the store (shared with the JSON API),
commit links into Gitea, the commit statuses as reported to Gitea (derived from
attempts, never read back), and the filters for ages, durations, latencies,
sizes and JSON. How demo answers are shown is decided in ``deployer.web.showcase``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from urllib.parse import quote

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

from deployer.gitea import state_for
from deployer.model.actual import ServiceState
from deployer.model.cause import readable_paths
from deployer.model.diff import Change, spec_diff, with_previous
from deployer.model.status import (
    AttemptView,
    DeliveryResult,
    Outcome,
    OverrideKind,
    OverrideView,
    RevisionView,
    ServiceView,
)
from deployer.model.traffic import RevisionTraffic
from deployer.safety import is_sha_prefix
from deployer.store import NEVER_OBSERVED, SourceRecord, Store

TEMPLATES = Path(__file__).parent / "templates"
LOG_LINES = 60
_OWNER_REPO = re.compile(r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$")
_FAILED = frozenset({Outcome.FAILED.value, Outcome.ROLLED_BACK.value})


class Tone(StrEnum):
    """Colour and weight of a state on the page."""

    OK = "ok"
    BAD = "bad"
    WARN = "warn"
    BUSY = "busy"
    IDLE = "idle"


def page_environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(TEMPLATES),
        # Our own stylesheet is included verbatim; everything else is escaped.
        autoescape=select_autoescape(disabled_extensions=("css",), default=True),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(age=age, exact=exact, short=short, duration=duration, pretty=pretty, tail=tail,
                       branch=branch, took=took, latency=latency, size=size, first_line=first_line)
    return env


# -- conditions -----------------------------------------------------------


@dataclass(frozen=True)
class Condition:
    """One word for a service's state of affairs, its tone, and why."""

    tone: Tone
    label: str
    why: str = ""

    @property
    def alarming(self) -> bool:
        return self.tone in (Tone.BAD, Tone.WARN)


def condition(view: ServiceView) -> Condition:
    """Deploying > stopped > degraded > failing > unhealthy > suspended > pending > drifting > pinned > healthy."""
    attempt = view.last_attempt
    if attempt is not None and attempt.outcome == Outcome.RUNNING.value:
        return Condition(Tone.BUSY, "deploying", f"attempt {attempt.id} ({attempt.trigger}) in progress")
    if view.override == OverrideKind.STOPPED.value:
        return Condition(Tone.IDLE, "stopped", _stopped(view))
    if view.state == ServiceState.DEGRADED.value:  # swarm runs fewer tasks than asked: the detail says why
        return Condition(Tone.WARN, "degraded", view.detail)
    if view.state == "failed" or (attempt is not None and attempt.outcome in _FAILED):
        return Condition(Tone.BAD, "failing", _failure(view, attempt))
    if view.state == "running" and not view.healthy:
        return Condition(Tone.BAD, "unhealthy", "running, but its health check fails")
    if view.override == OverrideKind.SUSPENDED.value:
        return Condition(Tone.IDLE, "suspended", "left alone until resumed")
    if view.state == NEVER_OBSERVED:
        return Condition(Tone.BUSY, "pending", "not observed yet")
    drift = _drift(view)
    if drift:
        return Condition(Tone.WARN, "drifting", drift)
    if view.override == OverrideKind.PINNED.value:
        return Condition(Tone.OK, "pinned", f"held at revision {view.running_revision}")
    return Condition(Tone.OK, "healthy")


def _stopped(view: ServiceView) -> str:
    waiting = view.desired_revision is not None and view.desired_revision != view.running_revision
    new = (f"; revision {view.desired_revision} ({short(view.desired_sha)}) recorded, not started while stopped"
           if waiting else "")
    return f"stopped by an operator{new}; `deployer start {view.name}` starts it"


def _failure(view: ServiceView, attempt: AttemptView | None) -> str:
    if attempt is None or attempt.outcome not in _FAILED:
        return f"the runtime reports {view.state}"
    return f"{attempt.reason}: {attempt.message}{_kept(view, attempt)}"


def _kept(view: ServiceView, attempt: AttemptView) -> str:
    """Said only when the probe after the attempt proved it: the revision put back runs and answers."""
    if attempt.outcome != Outcome.ROLLED_BACK.value:
        return ""
    serving = view.state == "running" and view.healthy and view.running_revision == attempt.rolled_back_to
    if serving:
        return " (previous revision kept serving)"
    return f" (revision {attempt.rolled_back_to} was put back but does not answer its health check: nothing serves)"


def _drift(view: ServiceView) -> str:
    """Why what runs is not what git asks for; empty when they agree (a pin is not drift)."""
    if view.state == ServiceState.UNKNOWN.value and view.detail:
        return f"unknown, desired running: {view.detail}"  # why it cannot be seen, e.g. its runtime is down
    if view.state != "running":
        return f"{view.state}, desired running"
    pinned = view.override == OverrideKind.PINNED.value
    if not pinned and view.desired_revision is not None and view.running_revision != view.desired_revision:
        return f"running {short(view.running_sha) or 'nothing'}, desired {short(view.desired_sha)}"
    return ""


@dataclass(frozen=True)
class Row:
    """A service on the overview: its view, condition and active overrides."""

    view: ServiceView
    condition: Condition
    overrides: tuple[OverrideView, ...]


def overview_rows(views: Sequence[ServiceView],
                  overrides: Mapping[str, Mapping[OverrideKind, OverrideView]]) -> list[Row]:
    return [Row(view, condition(view), tuple(overrides.get(view.name, {}).values())) for view in views]


# -- one service ----------------------------------------------------------


@dataclass(frozen=True)
class ServiceDetail:
    """A service with its recent revisions (each beside what changed from the one before), attempts, overrides."""

    service: ServiceView
    timeline: list[tuple[RevisionView, list[Change]]]
    attempts: list[AttemptView]
    overrides: list[OverrideView]

    @property
    def revisions(self) -> list[RevisionView]:
        return [revision for revision, _ in self.timeline]


def service_detail(store: Store, name: str) -> ServiceDetail | None:
    view = store.views.service(name)
    if view is None:
        return None
    revisions = store.history.revisions(name, 50)
    timeline = [(revision, spec_diff(older.spec if older else None, revision.spec))
                for revision, older in with_previous(revisions)]
    return ServiceDetail(view, timeline, store.history.attempts(name, 20), store.overrides.history(name, 20))


# -- traffic through the gateway ------------------------------------------


def traffic_of(service: str, counted: Iterable[RevisionTraffic], *, revisions: int = 2) -> list[RevisionTraffic]:
    """The service's newest revisions as the gateway counted them: this one beside the one before."""
    mine = [row for row in counted if row.service == service]
    return sorted(mine, key=lambda row: row.revision or 0, reverse=True)[:revisions]


# -- commits --------------------------------------------------------------


@dataclass(frozen=True)
class CommitLinks:
    """Links to commits in Gitea for sources that are Gitea repositories (``owner/repo``)."""

    base: str = ""
    repos: frozenset[str] = frozenset()

    def url(self, source: str, sha: str | None) -> str | None:
        if not self.base or not sha or source not in self.repos or not is_sha_prefix(sha, shortest=7):
            return None
        return self.repo_url(source, sha)

    def repo_url(self, repository: str, sha: str) -> str | None:
        """A commit of any repository on this Gitea (deliveries name the repository themselves)."""
        if not self.base or not _OWNER_REPO.match(repository) or not is_sha_prefix(sha, shortest=7):
            return None
        if not sha.strip("0"):  # git's "no commit" (a created or deleted branch, a test delivery)
            return None
        return f"{self.base}/{quote(repository)}/commit/{sha}"


def webhook_delivery(source: SourceRecord, last: Mapping[str, datetime]) -> datetime | None:
    """When a signed push for ``source`` last arrived (None: only polled), matched like the receiver does:
    by its name (``owner/repo``) or by its URL ending in that repository."""
    found = last.get(source.name.lower())
    if found is not None:
        return found
    parts = source.url.rstrip("/").removesuffix(".git").replace(":", "/").split("/")
    return last.get("/".join(parts[-2:]).lower()) if len(parts) >= 2 else None


def commit_links(gitea_url: str, sources: Iterable[SourceRecord]) -> CommitLinks:
    base = gitea_url.rstrip("/")
    if not base:
        return CommitLinks()
    # A source named owner/repo is that Gitea repository: webhooks are matched by the same name.
    repos = {source.name for source in sources if _OWNER_REPO.match(source.name)}
    return CommitLinks(base, frozenset(repos))


@dataclass(frozen=True)
class CommitStatus:
    """The status deployer reported to Gitea for one commit: the newest attempt's outcome wins."""

    sha: str
    revision: int
    state: str
    description: str
    at: datetime


def commit_statuses(attempts: Sequence[AttemptView], revisions: Sequence[RevisionView]) -> list[CommitStatus]:
    """Attempts come newest first; one status per commit, as Gitea keeps one per context."""
    sha_of = {revision.id: revision.sha for revision in revisions}
    statuses: dict[str, CommitStatus] = {}
    for attempt in attempts:
        sha = sha_of.get(attempt.revision) if attempt.revision is not None else None
        if sha is None or sha in statuses:
            continue
        state = state_for(Outcome(attempt.outcome), attempt.reason).value
        statuses[sha] = CommitStatus(sha, attempt.revision or 0, state, f"{attempt.reason}: {attempt.message}",
                                     attempt.finished_at or attempt.started_at)
    return list(statuses.values())


def status_tone(state: str) -> Tone:
    return {"success": Tone.OK, "pending": Tone.BUSY, "warning": Tone.WARN}.get(state, Tone.BAD)


def outcome_tone(outcome: str) -> Tone:
    return {Outcome.SUCCEEDED.value: Tone.OK, Outcome.RUNNING.value: Tone.BUSY, Outcome.ROLLED_BACK.value: Tone.WARN,
            Outcome.INTERRUPTED.value: Tone.IDLE}.get(outcome, Tone.BAD)


def delivery_tone(result: str) -> Tone:
    return {DeliveryResult.ACCEPTED.value: Tone.OK, DeliveryResult.DUPLICATE.value: Tone.IDLE,
            DeliveryResult.IGNORED.value: Tone.IDLE}.get(result, Tone.BAD)


# -- filters --------------------------------------------------------------


def age(moment: datetime | None, now: datetime | None = None) -> str:
    """'12s ago', '5m ago', '3h ago', '2d ago' — the exact time goes in a title attribute."""
    if moment is None:
        return "never"
    seconds = int(((now or datetime.now(UTC)) - moment).total_seconds())
    if seconds < 0:
        return "just now"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit} ago"
    return f"{seconds}s ago"


def exact(moment: datetime | None) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if moment is not None else ""


def short(sha: str | None) -> str:
    return (sha or "")[:7]


def duration(seconds: float | None) -> str:
    """'0.42s', '12.3s', '2m 03s'."""
    if seconds is None:
        return "still running"
    if seconds < 10:
        return f"{seconds:.2f}s"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes}m {rest:02d}s"


def latency(milliseconds: float | None) -> str:
    """'8 ms', '1.24 s'; a dash when there was no answer to time."""
    if milliseconds is None:
        return "\u2013"
    return f"{milliseconds:.0f} ms" if milliseconds < 1000 else f"{milliseconds / 1000:.2f} s"


def size(count: int) -> str:
    """'512 B', '12.3 KiB', '4.0 MiB'."""
    if count < 1024:
        return f"{count} B"
    if count < 1024 * 1024:
        return f"{count / 1024:.1f} KiB"
    return f"{count / 1024 / 1024:.1f} MiB"


def first_line(text: str | None) -> str:
    return (text or "").strip().split("\n", 1)[0]


def pretty(value: object) -> str:
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False, default=str)


def tail(text: str, lines: int = LOG_LINES) -> str:
    """The last ``lines`` lines of a log tail, its paths relative to the repository (no state dir)."""
    return "\n".join(readable_paths(text).rstrip("\n").split("\n")[-lines:])


def took(attempt: AttemptView) -> float | None:
    """How long an attempt ran; None while it runs."""
    if attempt.finished_at is None:
        return None
    return (attempt.finished_at - attempt.started_at).total_seconds()


def branch(ref: str) -> str:
    """'refs/heads/main' → 'main', 'refs/tags/v1' → 'tag v1'."""
    if ref.startswith("refs/heads/"):
        return ref.removeprefix("refs/heads/")
    if ref.startswith("refs/tags/"):
        return "tag " + ref.removeprefix("refs/tags/")
    return ref
