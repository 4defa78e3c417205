"""A pass up to its plan: the branch head, the commit resolved and recorded, one listing, the plan.

``planning`` is the pure function; this room gathers what it needs (the head, fetched when
asked or when the last fetch failed; the resolution, cached until the head moves; one listing
of every runtime; overrides, pins and held failures from the store) and hands the pass's view
to execution. ``preview`` is the same without recording anything.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Set
from dataclasses import dataclass, field

from deployer.errors import DeployerError, SourceError, StalledError
from deployer.model.actual import ActualService, ServiceState
from deployer.model.desired import DesiredService
from deployer.model.plan import Action, ActionKind, Plan
from deployer.model.status import RevisionView, Trigger
from deployer.reconcile.observe import Listing, Observer, by_service, health_url
from deployer.reconcile.planning import PassInputs, PassPlan, hold_failed, plan_pass
from deployer.reconcile.record import Recorder
from deployer.reconcile.resolve import MANIFEST, SERVICE_HOST, ClaimedPorts, KnownPorts, Resolution, Resolver
from deployer.reconcile.slots import Slots
from deployer.reconcile.sources import SourceRegistry
from deployer.source import GitSource
from deployer.store import Store

log = logging.getLogger(__name__)


@dataclass
class PassResult:
    """What one pass over one source did, for logs, the CLI (an operation follows it) and tests."""

    source: str
    sha: str | None = None
    plan: Plan | None = None
    error: str | None = None
    outcomes: dict[str, str] = field(default_factory=dict)
    attempts: dict[str, int] = field(default_factory=dict)  # service -> the attempt this pass started for it
    problems: dict[str, str] = field(default_factory=dict)  # service -> why it cannot be deployed ("stalled")


@dataclass
class Recorded:
    """A commit resolved and recorded: reused by every pass until the head moves (clean ones only)."""

    resolution: Resolution
    revisions: dict[str, RevisionView] = field(default_factory=dict)


@dataclass(frozen=True)
class PassView:
    """One pass's view: its plan, the one listing it was made from, seen as services (slots resolved)."""

    planned: PassPlan
    listing: Listing
    trigger: Trigger
    actual: dict[str, ActualService] = field(default_factory=dict)
    strays: dict[str, list[str]] = field(default_factory=dict)
    listed_at: float = 0.0  # time.monotonic() just before the listing


class PassPlanner:
    def __init__(self, store: Store, sources: SourceRegistry, resolver: Resolver, ports: ClaimedPorts,
                 observer: Observer, recorder: Recorder, slots: Slots, *, prune: bool) -> None:
        self._store = store
        self._sources = sources
        self._resolver = resolver
        self._ports = ports
        self._observer = observer
        self._recorder = recorder
        self._slots = slots
        self._prune = prune
        self._recorded: dict[str, Recorded] = {}  # source -> last clean resolution
        self._unfetched: set[str] = set()  # sources whose last fetch failed

    def prepare(self, name: str, result: PassResult, *, trigger: Trigger, fetch: bool,
                retry: Set[str]) -> tuple[PassView, list[tuple[str, DeployerError]]] | None:
        """The pass up to its plan; None when the source cannot be read (``result.error`` says why)."""
        source = self._sources.get(name)
        # A fetch that failed (remote down, disk full) is tried again by every pass, not only at the next poll.
        fetch = fetch or name in self._unfetched
        try:
            result.sha = head(source, fetch)
        except SourceError as exc:
            result.error = str(exc)
            if self._sources.errors().get(name) != result.error:  # once, not every pass
                log.warning("source %s: %s; retrying at the next pass", name, exc)
            self._sources.set_error(name, result.error)
            if fetch:
                self._unfetched.add(name)
            return None
        self._unfetched.discard(name)
        self._sources.clear_error(name)
        self._store.sources.set_head(name, result.sha)
        self._slots.ensure_gateway()
        recorded = self._recorded_commit(source, result.sha, trigger)
        if recorded is None:
            result.error = f"{MANIFEST} at {result.sha[:7]} is invalid"
            return None
        current = self._plan(name, recorded, trigger, retry)
        result.plan = current.planned.plan
        self._probe_unknown(current)
        return current, sorted(recorded.resolution.errors.items())

    def preview(self, *, fetch: bool = False) -> list[tuple[str, Action]]:
        """What a scheduled pass would do now for every source (after a fetch, if asked). Changes nothing."""
        lines: list[tuple[str, Action]] = []
        for name in self._sources.names():
            source = self._sources.get(name)
            try:
                sha = head(source, fetch)
                cached = self._recorded.get(name)
                recorded = cached if cached is not None and cached.resolution.sha == sha else Recorded(
                    self._resolver.resolve(source, sha, KnownPorts(self._store)))
            except DeployerError as exc:
                lines.append((name, Action("*", ActionKind.NOOP, f"cannot plan this source: {exc}")))
                continue
            lines.extend((name, Action(service, ActionKind.NOOP, f"cannot deploy: {error}"))
                         for service, error in sorted(recorded.resolution.errors.items()))
            lines.extend((name, action) for action in self._plan(name, recorded, Trigger.SCHEDULE).planned.plan.actions)
        return lines

    # -- resolution and its record ------------------------------------------------------

    def _recorded_commit(self, source: GitSource, sha: str, trigger: Trigger) -> Recorded | None:
        cached = self._recorded.get(source.name)
        if cached is not None and cached.resolution.sha == sha and \
                not self._resolver.files_changed(source, cached.resolution):
            return cached
        try:
            resolution = self._resolver.resolve(source, sha, self._ports)
        except StalledError as exc:
            self._recorder.refused_commit(source.name, sha, exc, trigger)
            return None
        except SourceError as exc:
            self._sources.set_error(source.name, str(exc))
            return None
        recorded = Recorded(resolution, self._recorder.revisions(source.name, resolution))
        if not resolution.errors:
            self._recorded[source.name] = recorded
        return recorded

    # -- planning --------------------------------------------------------------------------

    def _plan(self, name: str, recorded: Recorded, trigger: Trigger, retry: Set[str] = frozenset()) -> PassView:
        resolution = recorded.resolution
        inventory = self._store.services.inventory(name) - set(resolution.errors)
        overrides = self._store.overrides.active()
        pins = {pin.revision for kinds in overrides.values() for pin in kinds.values() if pin.revision is not None}
        pinned = {revision_id: revision for revision_id in pins
                  if (revision := self._store.history.get_revision(revision_id)) is not None}
        listed_at = time.monotonic()
        listing = self._observer.list()
        wanted = set(resolution.desired) | inventory
        routed = {service: slot for service, (slot, _) in self._store.slots.routed().items()}
        seen, strays = by_service(listing.actual, routed)
        actual = {key: value for key, value in seen.items() if key in wanted}
        self._slots.follow_nodes(actual)  # this source's services only: another's may be mid-update
        runtime_of = {view.name: view.runtime for view in self._store.views.services()} if listing.down else {}
        planned = plan_pass(PassInputs(
            desired=resolution.desired, revisions=recorded.revisions, inventory=inventory, actual=actual,
            down=listing.down, runtime_of=runtime_of, overrides=overrides, pinned=pinned, prune=self._prune,
            relocate=self._relocations(resolution.desired, actual, routed)))
        failed = {action.service: why for action in planned.changing()
                  if action.desired is not None and action.kind not in (ActionKind.REMOVE, ActionKind.STOP)
                  and action.service not in retry
                  and (why := self._store.history.last_failure(action.service, action.desired.spec_hash)) is not None}
        planned = hold_failed(planned, failed) if failed else planned
        return PassView(planned, listing, trigger, actual,
                        {key: value for key, value in strays.items() if key in wanted}, listed_at)

    def _relocations(self, desired: Mapping[str, DesiredService], actual: Mapping[str, ActualService],
                     routed: Mapping[str, str]) -> dict[str, str]:
        """Services on the wrong side of the gateway: it was turned on (or off) while they ran."""
        behind = self._slots.behind_gateway
        moves = {}
        for name, want in desired.items():
            if name not in actual:
                continue
            if behind(want) and name not in routed:
                moves[name] = "moving behind the gateway (a blue/green slot; nginx takes the port over)"
            elif not behind(want) and name in routed:
                moves[name] = "moving off the gateway (back onto its own port)"
        return moves

    def _probe_unknown(self, current: PassView) -> None:
        """Steady running services never probed (the first pass after a start) are probed side by side now."""
        steady = [(action.service, health_url(action.desired, self._slots.serving(action.service).port,
                                              seen.addresses[0] if seen.addresses else SERVICE_HOST))
                  for action in current.planned.plan.actions
                  if not action.changes and action.desired is not None
                  and (seen := current.actual.get(action.service)) is not None
                  and seen.state is ServiceState.RUNNING]
        self._observer.probe_unknown(steady)


def head(source: GitSource, fetch: bool) -> str:
    """The branch head's commit; fetched first when asked, or when the source was never fetched."""
    if not fetch:
        try:
            return source.head()
        except SourceError:
            pass  # never fetched yet: fall through and fetch
    source.fetch()
    return source.head()
