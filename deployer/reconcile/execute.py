"""A pass's plan carried out: every action under its service's lock, the changes side by side.

Each service is isolated (its own lock, its own try/except), so one broken service never
blocks the others. Steady services are recorded as observed; changed ones go to the rollout;
a service an operator acted on since the listing is left to the next pass.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

from deployer.errors import DeployerError
from deployer.model.deployment import instance_name
from deployer.model.desired import DesiredService
from deployer.model.plan import Action, ActionKind
from deployer.model.status import Outcome, Trigger
from deployer.reconcile.actions import ServiceActions
from deployer.reconcile.locks import ServiceLocks
from deployer.reconcile.observe import Observer
from deployer.reconcile.planner import PassResult, PassView
from deployer.reconcile.record import Recorder
from deployer.reconcile.rollout import Rollout
from deployer.secrets import SecretStore
from deployer.store import Store

log = logging.getLogger(__name__)


class PassExecutor:
    def __init__(self, store: Store, rollout: Rollout, actions: ServiceActions, observer: Observer,
                 secrets: SecretStore, recorder: Recorder, locks: ServiceLocks, *, parallel: int) -> None:
        self._store = store
        self._rollout = rollout
        self._actions = actions
        self._observer = observer
        self._secrets = secrets
        self._recorder = recorder
        self._locks = locks
        self.parallel = parallel  # changes of one source carried out at once
        # Services whose last deploy was cut short (daemon killed): gate them before trusting them.
        self._unverified = {view.name for view in store.views.services()
                            if view.last_attempt is not None and view.last_attempt.outcome == Outcome.INTERRUPTED}

    def execute_all(self, current: PassView, result: PassResult) -> dict[str, str]:
        """Every action of the pass: the steady ones here, the changes side by side (at most
        ``parallel``), so one service's slow gate holds none of its siblings."""
        actions = current.planned.plan.actions
        changes = [action for action in actions if action.changes]
        outcomes = {action.service: self._execute_isolated(action, current, result)
                    for action in actions if not action.changes}
        if len(changes) <= 1 or self.parallel <= 1:
            outcomes.update((action.service, self._execute_isolated(action, current, result)) for action in changes)
            return outcomes
        with ThreadPoolExecutor(max_workers=min(self.parallel, len(changes)),
                                thread_name_prefix=f"{threading.current_thread().name}-deploy") as pool:
            futures = {action.service: pool.submit(self._execute_isolated, action, current, result)
                       for action in changes}
        outcomes.update((service, future.result()) for service, future in futures.items())
        return outcomes

    def _execute_isolated(self, action: Action, current: PassView, result: PassResult) -> str:
        with self._locks.hold(action.service):
            if self._locks.acted_since(action.service, current.listed_at):
                # an operator's stop/start/restart ran since the listing: what it saw is stale (acting on it
                # would start a service just stopped, or record a slot just drained); the next pass sees anew
                return "deferred"
            try:
                with self.noting_attempt(action.service, result):
                    return self._execute(action, current)
            except Exception:  # one service's bug must not stop the others
                log.exception("%s: unexpected error while reconciling", action.service)
                return "error"

    @contextmanager
    def noting_attempt(self, service: str, result: PassResult) -> Iterator[None]:
        """The attempt started for ``service`` within the block, in ``result.attempts`` (under its lock:
        only this pass starts one meanwhile; one service's key is written by one thread)."""
        before = self._store.history.newest_started(service)
        try:
            yield
        finally:
            started = self._store.history.newest_started(service)
            if started is not None and started != before:
                result.attempts[service] = started

    def _execute(self, action: Action, current: PassView) -> str:
        name, planned, listing = action.service, current.planned, current.listing
        if name in planned.waiting:
            self._observer.record_waiting(name, action.reason)
            return "waiting"
        if action.kind is ActionKind.REMOVE:
            return self._rollout.remove(name, self._observer.runtime_holding(name, listing))
        if action.kind is ActionKind.STOP:  # an operator stopped it and something started it again
            return self._actions.stop(name, note=action.reason, trigger=Trigger.DRIFT).outcome
        unrecorded = name in self._rollout.unrecorded  # applied while the database failed, never recorded
        if action.kind is ActionKind.NOOP and action.desired is not None \
                and (name in self._unverified or unrecorded) \
                and name not in planned.stopped:  # a stopped service is not gated (that would start it)
            self._unverified.discard(name)  # applied before a crash, never gated
            return self._rollout.deploy(action.desired, planned.revisions[name],
                                             Trigger.DRIFT if unrecorded else Trigger.STARTUP, verify_only=True).value
        if action.kind is ActionKind.NOOP or action.desired is None:
            return self._leave(action, current)
        return self._apply(action.desired, action, current)

    def _leave(self, action: Action, current: PassView) -> str:
        name, planned = action.service, current.planned
        seen, place = current.actual.get(name), self._rollout.slots.serving(name)
        port, instance = place.port, instance_name(name, place.slot)
        self._clear_strays(name, current)
        if name in planned.held:
            self._observer.record(name, None, seen, note=action.reason, port=port, instance=instance)
            return "held"
        if name in planned.suspended:
            self._observer.record(name, action.desired, seen, note=action.reason, port=port, instance=instance)
            return "suspended"
        if name in planned.stopped:
            self._observer.record(name, action.desired, seen, note=action.reason, port=port)
            return "stopped"
        revision = planned.revisions.get(name)
        self._observer.record(name, action.desired, seen, port=port, instance=instance,
                                   revision=revision.id if revision is not None else None)
        return "noop"

    def _clear_strays(self, name: str, current: PassView) -> None:
        """Instances that do not serve the service (a crash mid-switch left them) are stopped: one slot serves."""
        for instance in current.strays.get(name, []):
            runtime = self._observer.runtime_holding(instance, current.listing)
            if runtime is not None:
                log.info("%s: removing %s, which does not serve it", name, instance)
                runtime.remove(instance)

    def _apply(self, desired: DesiredService, action: Action, current: PassView) -> str:
        revision, trigger = current.planned.revisions[desired.name], current.trigger
        try:
            self._secrets.resolve(desired.secret_names(), service=desired.name)
        except DeployerError as exc:  # waiting for an operator, not a bad revision
            self._recorder.service_problem(desired.name, exc, trigger)
            return "waiting"
        running = self._store.views.service(desired.name)
        if running is not None and running.running_revision == revision.id:
            trigger = Trigger.DRIFT  # git did not change: the world did
        moved_from = current.actual.get(desired.name)
        if moved_from is not None and moved_from.runtime != desired.runtime:
            old = self._rollout.runtime_named(moved_from.runtime)
            if old is not None:  # switching runtime: the old instance holds the port, so it goes first
                log.info("%s: moving from %s to %s", desired.name, moved_from.runtime, desired.runtime)
                old.remove(desired.name)
        log.info("%s: %s%s", desired.name, action.describe(), " (drift)" if trigger is Trigger.DRIFT else "",
                 extra={"service": desired.name, "revision": revision.id})
        self._unverified.discard(desired.name)  # a full deploy gates it: no separate check after it
        return self._rollout.deploy(desired, revision, trigger).value
