"""The pass: fetch → resolve → record → list → plan → execute, for one source; and what operators ask of it.

``Reconciler`` only orchestrates: sources are the registry's, the pass up to its plan the
planner's, carrying it out the executor's, deploys the rollout's, observation the observer's.
What an operator asks (stop, start, restart, a demo, logs) runs under the service's lock
(``locks``), so it never overlaps a deploy of that service.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Set
from dataclasses import dataclass

from deployer.demo import DemoResult
from deployer.errors import Reason, UnknownService
from deployer.model.actual import Task
from deployer.model.desired import DesiredService
from deployer.model.events import PassFinished
from deployer.model.plan import Action
from deployer.model.status import Outcome, RevisionView, SnapshotView, Trigger
from deployer.reconcile.actions import ActionDone, ServiceActions
from deployer.reconcile.demos import DemoRunner
from deployer.reconcile.events import EventBus
from deployer.reconcile.execute import PassExecutor
from deployer.reconcile.locks import ServiceLocks
from deployer.reconcile.observe import Listing, Observer
from deployer.reconcile.planner import PassPlanner, PassResult
from deployer.reconcile.record import Recorder
from deployer.reconcile.resolve import ClaimedPorts, Resolver
from deployer.reconcile.rollout import Rollout
from deployer.reconcile.sources import SourceRegistry, SourceSpec
from deployer.secrets import SecretStore
from deployer.store import Store, StoreError

PLANNING_AT_ONCE = 2  # sources fetching, resolving and planning at the same time


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
        self.rooms = rooms
        self.sources = rooms.sources
        self.prune = prune
        self._locks = ServiceLocks()
        self._planner = PassPlanner(store, rooms.sources, rooms.resolver, rooms.ports, rooms.observer,
                                    rooms.recorder, rooms.rollout.slots, prune=prune)
        self._executor = PassExecutor(store, rooms.rollout, rooms.actions, rooms.observer, rooms.secrets,
                                      rooms.recorder, self._locks, parallel=parallel)
        # Passes wait on gates for long, but think (fetch, resolve, record, plan) only briefly: the
        # thinking is bounded so that many sources at once cannot starve the event loop that answers
        # webhooks (they share one interpreter), while waiting sources hold nothing.
        self._planning = threading.BoundedSemaphore(PLANNING_AT_ONCE)

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
            with self._locks.hold(service):
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
            prepared = self._planner.prepare(name, result, trigger=trigger, fetch=fetch, retry=retry)
        if prepared is None:
            return result
        current, problems = prepared
        for service, error in problems:  # under the service's lock, which a deploy may hold: outside the slot
            with self._locks.hold(service), self._executor.noting_attempt(service, result):
                self.rooms.recorder.service_problem(service, error, trigger)
            result.outcomes[service], result.problems[service] = "stalled", str(error)
        result.outcomes.update(self._executor.execute_all(current, result))
        return result

    def preview(self, *, fetch: bool = False) -> list[tuple[str, Action]]:
        """What a scheduled pass would do now for every source (after a fetch, if asked). Changes nothing."""
        return self._planner.preview(fetch=fetch)

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
        router = self.rooms.rollout.slots.router
        return router.problem if router is not None else None

    def tasks(self, name: str) -> tuple[Task, ...]:
        """A swarm service's tasks (node, state, error) as last observed; () for other runtimes."""
        return self.rooms.observer.tasks(name)

    def snapshot(self, name: str) -> SnapshotView | None:
        """Log tail and ``/info`` for the pages: read now unless read moments ago."""
        return self.rooms.observer.snapshot(name)

    def demo_target(self, name: str) -> tuple[int, DesiredService]:
        """The running revision whose demo inputs ``deployer demo`` sends; refused when there is none to send."""
        return self.rooms.demos.running(name)

    def demo_now(self, name: str) -> tuple[int, list[DemoResult]]:
        """``deployer demo``: run the demo inputs against the running revision now, and record them.

        It waits for a deploy of the service to end (its lock), then reads what runs: the revision
        that deploy left, not the one that ran when it was asked."""
        with self._locks.hold(name):
            revision, desired = self.rooms.demos.running(name)
            return revision, self.rooms.demos.run(desired, revision, None)

    def stop(self, name: str, *, note: str) -> ActionDone:
        """``deployer stop``: the serving instance stopped now (the override keeps it so at every pass)."""
        with self._locks.by_hand(name):
            return self.rooms.actions.stop(name, note=note)

    def start(self, name: str, *, note: str) -> ActionDone:
        """``deployer start``: the wanted revision deployed now, through the gate."""
        with self._locks.by_hand(name):
            return self.rooms.actions.start(name, note=note)

    def restart(self, name: str, *, note: str) -> ActionDone:
        """``deployer restart``: the running revision rolled out again, through the gate (blue/green behind it)."""
        with self._locks.by_hand(name):
            return self.rooms.actions.restart(name, note=note)

    def deploy(self, desired: DesiredService, revision: RevisionView, trigger: Trigger, *,
               verify_only: bool = False) -> Outcome:
        with self._locks.hold(desired.name):
            return self.rooms.rollout.deploy(desired, revision, trigger, verify_only=verify_only)


__all__ = ["Listing", "PassResult", "Reason", "Reconciler", "Rooms"]
