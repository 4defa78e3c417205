"""The pass: fetch → resolve → record → list → plan → execute, for one source; and what operators ask of it.

``Reconciler`` only orchestrates: sources are the registry's, resolution the
resolver's, deploys the rollout's, observation the observer's. Each service is
isolated (its own lock, its own try/except), so one broken service never blocks
the others; a commit is resolved and recorded once, then reused until the head moves.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Set
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field

from deployer.demo import DemoResult
from deployer.errors import DeployerError, Reason, SourceError, StalledError, UnknownService
from deployer.model.actual import ActualService, ServiceState
from deployer.model.deployment import instance_name
from deployer.model.desired import DesiredService
from deployer.model.events import PassFinished
from deployer.model.plan import Action, ActionKind, Plan
from deployer.model.status import Outcome, RevisionView, SnapshotView, Trigger
from deployer.reconcile.actions import ActionDone, ServiceActions
from deployer.reconcile.demos import DemoRunner
from deployer.reconcile.events import EventBus
from deployer.reconcile.observe import Listing, Observer, by_service, health_url
from deployer.reconcile.planning import PassInputs, PassPlan, hold_failed, plan_pass
from deployer.reconcile.record import Recorder
from deployer.reconcile.resolve import MANIFEST, SERVICE_HOST, ClaimedPorts, KnownPorts, Resolution, Resolver
from deployer.reconcile.rollout import Rollout
from deployer.reconcile.sources import SourceRegistry, SourceSpec
from deployer.secrets import SecretStore
from deployer.source import GitSource
from deployer.store import Store, StoreError

log = logging.getLogger(__name__)
PLANNING_AT_ONCE = 2  # sources fetching, resolving and planning at the same time



@dataclass
class PassResult:
    """What one pass over one source did, for logs, the CLI and tests."""

    source: str
    sha: str | None = None
    plan: Plan | None = None
    error: str | None = None
    outcomes: dict[str, str] = field(default_factory=dict)


@dataclass
class _Recorded:
    """A commit resolved and recorded: reused by every pass until the head moves (clean ones only)."""

    resolution: Resolution
    revisions: dict[str, RevisionView] = field(default_factory=dict)


@dataclass(frozen=True)
class _Pass:
    """One pass's view: its plan, the one listing it was made from, seen as services (slots resolved)."""

    planned: PassPlan
    listing: Listing
    trigger: Trigger
    actual: dict[str, ActualService] = field(default_factory=dict)
    strays: dict[str, list[str]] = field(default_factory=dict)
    listed_at: float = 0.0  # time.monotonic() just before the listing


@dataclass(frozen=True)
class Rooms:
    """The rooms a reconciler orchestrates, built once by the composition root."""

    sources: SourceRegistry
    resolver: Resolver
    ports: ClaimedPorts
    observer: Observer
    rollout: Rollout
    demos: DemoRunner
    secrets: SecretStore
    events: EventBus
    recorder: Recorder
    actions: ServiceActions


class Reconciler:
    def __init__(self, store: Store, rooms: Rooms, *, prune: bool = True, parallel: int = 4) -> None:
        self.store = store
        self.parallel = parallel  # changes of one source carried out at once
        self.rooms = rooms
        self.sources = rooms.sources
        self.prune = prune
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()
        self._recorded: dict[str, _Recorded] = {}  # source -> last clean resolution
        self._acted: dict[str, float] = {}  # service -> when an operator's stop/start/restart last ended
        self._unfetched: set[str] = set()  # sources whose last fetch failed
        # Passes wait on gates for long, but think (fetch, resolve, record, plan) only briefly: the
        # thinking is bounded so that many sources at once cannot starve the event loop that answers
        # webhooks (they share one interpreter), while waiting sources hold nothing.
        self._planning = threading.BoundedSemaphore(PLANNING_AT_ONCE)
        # Services whose last deploy was cut short (daemon killed): gate them before trusting them.
        self._unverified = {view.name for view in store.views.services()
                            if view.last_attempt is not None and view.last_attempt.outcome == Outcome.INTERRUPTED}

    # -- sources ---------------------------------------------------------------

    def add_source(self, spec: SourceSpec, *, origin: str = "config") -> None:
        self.sources.add(spec, origin=origin)

    def retire_source(self, name: str, *, allow_empty: bool) -> list[str]:
        """A source left the config: prune its services only when an empty desired set is allowed.

        Removing a source by mistake (a typo in deployer.toml) must not take its
        services down, so by default they keep running and the page says why.
        """
        owned = sorted(self.store.services.inventory(name))
        if not owned:
            return []
        if not (allow_empty and self.prune):
            self.sources.set_error(name, f"removed from deployer.toml but still owns {', '.join(owned)}; they keep "
                                         "running. Set [reconcile] allow_empty = true to remove them, or add the "
                                         "source back")
            return []
        listing = self.rooms.observer.list()
        for service in owned:
            with self._lock(service):
                self.rooms.rollout.remove(service, self.rooms.observer.runtime_holding(service, listing))
        return owned

    # -- one pass ----------------------------------------------------------------

    def reconcile_source(self, name: str, *, trigger: Trigger, fetch: bool = True,
                         retry: Set[str] = frozenset()) -> PassResult:
        """Bring every service of one source to the state its branch head describes.

        A spec that failed before is held (not tried again) unless its service is in ``retry``.
        """
        started = time.monotonic()
        try:
            return self._reconcile_source(name, trigger=trigger, fetch=fetch, retry=retry)
        except StoreError as exc:  # the database is down or its disk full: say so, retry next pass
            self.sources.set_error(name, f"cannot record this source's pass: {exc}")
            return PassResult(source=name, error=str(exc))
        finally:
            self.rooms.events.publish(PassFinished(name, time.monotonic() - started))

    def _reconcile_source(self, name: str, *, trigger: Trigger, fetch: bool, retry: Set[str]) -> PassResult:
        result = PassResult(source=name)
        with self._planning:  # fetch, resolve, record, plan: CPU work, a few sources at a time
            prepared = self._prepare(name, result, trigger=trigger, fetch=fetch, retry=retry)
        if prepared is None:
            return result
        current, problems = prepared
        for service, error in problems:  # under the service's lock, which a deploy may hold: outside the slot
            with self._lock(service):
                self.rooms.recorder.service_problem(service, error, trigger)
            result.outcomes[service] = "stalled"
        result.outcomes.update(self._execute_all(current))
        return result

    def _prepare(self, name: str, result: PassResult, *, trigger: Trigger, fetch: bool,
                 retry: Set[str]) -> tuple[_Pass, list[tuple[str, DeployerError]]] | None:
        """The pass up to its plan; None when the source cannot be read (``result.error`` says why)."""
        source = self.sources.get(name)
        # A fetch that failed (remote down, disk full) is tried again by every pass, not only at the next poll.
        fetch = fetch or name in self._unfetched
        try:
            result.sha = _head(source, fetch)
        except SourceError as exc:
            result.error = str(exc)
            if self.sources.errors().get(name) != result.error:  # once, not every pass
                log.warning("source %s: %s; retrying at the next pass", name, exc)
            self.sources.set_error(name, result.error)
            if fetch:
                self._unfetched.add(name)
            return None
        self._unfetched.discard(name)
        self.sources.clear_error(name)
        self.store.sources.set_head(name, result.sha)
        self._ensure_gateway()
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
        for name in self.sources.names():
            source = self.sources.get(name)
            try:
                sha = _head(source, fetch)
                cached = self._recorded.get(name)
                recorded = cached if cached is not None and cached.resolution.sha == sha else _Recorded(
                    self.rooms.resolver.resolve(source, sha, KnownPorts(self.store)))
            except DeployerError as exc:
                lines.append((name, Action("*", ActionKind.NOOP, f"cannot plan this source: {exc}")))
                continue
            lines.extend((name, Action(service, ActionKind.NOOP, f"cannot deploy: {error}"))
                         for service, error in sorted(recorded.resolution.errors.items()))
            lines.extend((name, action) for action in self._plan(name, recorded, Trigger.SCHEDULE).planned.plan.actions)
        return lines

    # -- what operators ask ---------------------------------------------------------

    def logs(self, name: str, max_bytes: int) -> str:
        """The service's recent output, asked of its runtime now (an operator's explicit request), masked."""
        view = self.store.views.service(name)
        if view is None:
            raise UnknownService(name)
        runtime = self.rooms.rollout.runtime_named(view.runtime)
        if runtime is None:
            raise UnknownService(name, where="on a runtime of this host")
        return self.rooms.secrets.mask(runtime.logs(name, max_bytes))

    def gateway_problem(self) -> str | None:
        """What the page says about the gateway: down (and why), or a dead nginx restarted (drift)."""
        router = self.rooms.rollout.router
        return router.problem if router is not None else None

    def snapshot(self, name: str) -> SnapshotView | None:
        """Log tail and ``/info`` for the pages: read now unless read moments ago."""
        return self.rooms.observer.snapshot(name)

    def demo_now(self, name: str) -> tuple[int, list[DemoResult]]:
        """``deployer demo``: run the demo inputs against the running revision now, and record them."""
        view = self.store.views.service(name)
        if view is None:
            raise UnknownService(name)
        revision = self.store.history.get_revision(view.running_revision) if view.running_revision else None
        if revision is None:
            raise StalledError(f"{name}: nothing is running, no demo to run")
        desired = DesiredService.model_validate(revision.spec)
        if not desired.demo:
            raise StalledError(f"{name}: its manifest has no demo inputs")
        with self._lock(name):
            return revision.id, self.rooms.demos.run(desired, revision.id, None)

    def stop(self, name: str, *, note: str) -> ActionDone:
        """``deployer stop``: the serving instance stopped now (the override keeps it so at every pass)."""
        return self._by_hand(name, lambda: self.rooms.actions.stop(name, note=note))

    def start(self, name: str, *, note: str) -> ActionDone:
        """``deployer start``: the wanted revision deployed now, through the gate."""
        return self._by_hand(name, lambda: self.rooms.actions.start(name, note=note))

    def restart(self, name: str, *, note: str) -> ActionDone:
        """``deployer restart``: the running revision rolled out again, through the gate (blue/green behind it)."""
        return self._by_hand(name, lambda: self.rooms.actions.restart(name, note=note))

    def _by_hand(self, name: str, act: Callable[[], ActionDone]) -> ActionDone:
        """Under the service's lock; a pass that listed before it ended leaves the service to the next pass."""
        with self._lock(name):
            try:
                return act()
            finally:
                self._acted[name] = time.monotonic()

    def deploy(self, desired: DesiredService, revision: RevisionView, trigger: Trigger, *,
               verify_only: bool = False) -> Outcome:
        with self._lock(desired.name):
            return self.rooms.rollout.deploy(desired, revision, trigger, verify_only=verify_only)

    # -- resolution and its record ------------------------------------------------------

    def _recorded_commit(self, source: GitSource, sha: str, trigger: Trigger) -> _Recorded | None:
        cached = self._recorded.get(source.name)
        if cached is not None and cached.resolution.sha == sha and \
                not self.rooms.resolver.files_changed(source, cached.resolution):
            return cached
        try:
            resolution = self.rooms.resolver.resolve(source, sha, self.rooms.ports)
        except StalledError as exc:
            self.rooms.recorder.refused_commit(source.name, sha, exc, trigger)
            return None
        except SourceError as exc:
            self.sources.set_error(source.name, str(exc))
            return None
        recorded = _Recorded(resolution, self.rooms.recorder.revisions(source.name, resolution))
        if not resolution.errors:
            self._recorded[source.name] = recorded
        return recorded

    # -- planning --------------------------------------------------------------------------

    def _plan(self, name: str, recorded: _Recorded, trigger: Trigger, retry: Set[str] = frozenset()) -> _Pass:
        resolution = recorded.resolution
        inventory = self.store.services.inventory(name) - set(resolution.errors)
        overrides = self.store.overrides.active()
        pins = {pin.revision for kinds in overrides.values() for pin in kinds.values() if pin.revision is not None}
        pinned = {revision_id: revision for revision_id in pins
                  if (revision := self.store.history.get_revision(revision_id)) is not None}
        listed_at = time.monotonic()
        listing = self.rooms.observer.list()
        wanted = set(resolution.desired) | inventory
        routed = {service: slot for service, (slot, _) in self.store.slots.routed().items()}
        seen, strays = by_service(listing.actual, routed)
        actual = {key: value for key, value in seen.items() if key in wanted}
        self._follow_nodes(actual)  # this source's services only: another's may be mid-update
        runtime_of = {view.name: view.runtime for view in self.store.views.services()} if listing.down else {}
        planned = plan_pass(PassInputs(
            desired=resolution.desired, revisions=recorded.revisions, inventory=inventory, actual=actual,
            down=listing.down, runtime_of=runtime_of, overrides=overrides, pinned=pinned, prune=self.prune,
            relocate=self._relocations(resolution.desired, actual, routed)))
        failed = {action.service: why for action in planned.changing()
                  if action.desired is not None and action.kind not in (ActionKind.REMOVE, ActionKind.STOP)
                  and action.service not in retry
                  and (why := self.store.history.last_failure(action.service, action.desired.spec_hash)) is not None}
        planned = hold_failed(planned, failed) if failed else planned
        return _Pass(planned, listing, trigger, actual, {key: value for key, value in strays.items() if key in wanted},
                     listed_at)

    def _relocations(self, desired: Mapping[str, DesiredService], actual: Mapping[str, ActualService],
                     routed: Mapping[str, str]) -> dict[str, str]:
        """Services on the wrong side of the gateway: it was turned on (or off) while they ran."""
        behind = self.rooms.rollout.behind_gateway
        moves = {}
        for name, want in desired.items():
            if name not in actual:
                continue
            if behind(want) and name not in routed:
                moves[name] = "moving behind the gateway (a blue/green slot; nginx takes the port over)"
            elif not behind(want) and name in routed:
                moves[name] = "moving off the gateway (back onto its own port)"
        return moves

    def _follow_nodes(self, actual: Mapping[str, ActualService]) -> None:
        """Swarm tasks that moved since the last pass (a node lost or back) move the gateway's servers."""
        router = self.rooms.rollout.router
        if router is None or not router.available:
            return
        try:
            router.follow_nodes({name: seen.addresses for name, seen in actual.items() if seen.addresses})
        except DeployerError as exc:  # routed as before; the next pass tries again
            log.warning("gateway: could not follow swarm tasks to their nodes: %s", exc)

    def _ensure_gateway(self) -> None:
        router = self.rooms.rollout.router
        if router is None:
            return
        try:
            router.ensure()
        except DeployerError as exc:  # deploys go on: a blue-green switch then fails and the old slot keeps serving
            log.warning("gateway: %s", exc)

    def _probe_unknown(self, current: _Pass) -> None:
        """Steady running services never probed (the first pass after a start) are probed side by side now."""
        steady = [(action.service, health_url(action.desired, self.rooms.rollout.serving(action.service).port,
                                              seen.addresses[0] if seen.addresses else SERVICE_HOST))
                  for action in current.planned.plan.actions
                  if not action.changes and action.desired is not None
                  and (seen := current.actual.get(action.service)) is not None
                  and seen.state is ServiceState.RUNNING]
        self.rooms.observer.probe_unknown(steady)

    # -- execution ------------------------------------------------------------------------

    def _execute_all(self, current: _Pass) -> dict[str, str]:
        """Every action of the pass: the steady ones here, the changes side by side (at most
        ``parallel``), so one service's slow gate holds none of its siblings."""
        actions = current.planned.plan.actions
        changes = [action for action in actions if action.changes]
        outcomes = {action.service: self._execute_isolated(action, current)
                    for action in actions if not action.changes}
        if len(changes) <= 1 or self.parallel <= 1:
            outcomes.update((action.service, self._execute_isolated(action, current)) for action in changes)
            return outcomes
        with ThreadPoolExecutor(max_workers=min(self.parallel, len(changes)),
                                thread_name_prefix=f"{threading.current_thread().name}-deploy") as pool:
            futures = {action.service: pool.submit(self._execute_isolated, action, current) for action in changes}
        outcomes.update((service, future.result()) for service, future in futures.items())
        return outcomes

    def _execute_isolated(self, action: Action, current: _Pass) -> str:
        with self._lock(action.service):
            if self._acted.get(action.service, 0.0) > current.listed_at:
                # an operator's stop/start/restart ran since the listing: what it saw is stale (acting on it
                # would start a service just stopped, or record a slot just drained); the next pass sees anew
                return "deferred"
            try:
                return self._execute(action, current)
            except Exception:  # one service's bug must not stop the others
                log.exception("%s: unexpected error while reconciling", action.service)
                return "error"

    def _execute(self, action: Action, current: _Pass) -> str:
        name, planned, listing = action.service, current.planned, current.listing
        if name in planned.waiting:
            self.rooms.observer.record_waiting(name, action.reason)
            return "waiting"
        if action.kind is ActionKind.REMOVE:
            return self.rooms.rollout.remove(name, self.rooms.observer.runtime_holding(name, listing))
        if action.kind is ActionKind.STOP:  # an operator stopped it and something started it again
            return self.rooms.actions.stop(name, note=action.reason, trigger=Trigger.DRIFT).outcome
        unrecorded = name in self.rooms.rollout.unrecorded  # applied while the database failed, never recorded
        if action.kind is ActionKind.NOOP and action.desired is not None \
                and (name in self._unverified or unrecorded) \
                and name not in planned.stopped:  # a stopped service is not gated (that would start it)
            self._unverified.discard(name)  # applied before a crash, never gated
            return self.rooms.rollout.deploy(action.desired, planned.revisions[name],
                                             Trigger.DRIFT if unrecorded else Trigger.STARTUP, verify_only=True).value
        if action.kind is ActionKind.NOOP or action.desired is None:
            return self._leave(action, current)
        return self._apply(action.desired, action, current)

    def _leave(self, action: Action, current: _Pass) -> str:
        name, planned = action.service, current.planned
        seen, place = current.actual.get(name), self.rooms.rollout.serving(name)
        port, instance = place.port, instance_name(name, place.slot)
        self._clear_strays(name, current)
        if name in planned.held:
            self.rooms.observer.record(name, None, seen, note=action.reason, port=port, instance=instance)
            return "held"
        if name in planned.suspended:
            self.rooms.observer.record(name, action.desired, seen, note=action.reason, port=port, instance=instance)
            return "suspended"
        if name in planned.stopped:
            self.rooms.observer.record(name, action.desired, seen, note=action.reason, port=port)
            return "stopped"
        revision = planned.revisions.get(name)
        self.rooms.observer.record(name, action.desired, seen, port=port, instance=instance,
                                   revision=revision.id if revision is not None else None)
        return "noop"

    def _clear_strays(self, name: str, current: _Pass) -> None:
        """Instances that do not serve the service (a crash mid-switch left them) are stopped: one slot serves."""
        for instance in current.strays.get(name, []):
            runtime = self.rooms.observer.runtime_holding(instance, current.listing)
            if runtime is not None:
                log.info("%s: removing %s, which does not serve it", name, instance)
                runtime.remove(instance)

    def _apply(self, desired: DesiredService, action: Action, current: _Pass) -> str:
        revision, trigger = current.planned.revisions[desired.name], current.trigger
        try:
            self.rooms.secrets.resolve(desired.secret_names(), service=desired.name)
        except DeployerError as exc:  # waiting for an operator, not a bad revision
            self.rooms.recorder.service_problem(desired.name, exc, trigger)
            return "waiting"
        running = self.store.views.service(desired.name)
        if running is not None and running.running_revision == revision.id:
            trigger = Trigger.DRIFT  # git did not change: the world did
        moved_from = current.actual.get(desired.name)
        if moved_from is not None and moved_from.runtime != desired.runtime:
            old = self.rooms.rollout.runtime_named(moved_from.runtime)
            if old is not None:  # switching runtime: the old instance holds the port, so it goes first
                log.info("%s: moving from %s to %s", desired.name, moved_from.runtime, desired.runtime)
                old.remove(desired.name)
        log.info("%s: %s%s", desired.name, action.describe(), " (drift)" if trigger is Trigger.DRIFT else "",
                 extra={"service": desired.name, "revision": revision.id})
        self._unverified.discard(desired.name)  # a full deploy gates it: no separate check after it
        return self.rooms.rollout.deploy(desired, revision, trigger).value

    @contextmanager
    def _lock(self, service: str) -> Iterator[None]:
        with self._locks_guard:
            lock = self._locks.setdefault(service, threading.Lock())
        with lock:
            yield


def _head(source: GitSource, fetch: bool) -> str:
    if not fetch:
        try:
            return source.head()
        except SourceError:
            pass  # never fetched yet: fall through and fetch
    source.fetch()
    return source.head()


__all__ = ["Listing", "PassResult", "Reason", "Reconciler", "Rooms"]
