"""What an operator does to one service by hand: stop it, start it, restart it; each an attempt saying who and why.

The desired state "stopped" is an override (``operator``); this room carries it out now, and
the pass keeps it so (planning turns a stopped service found running into a ``stop``). A start
deploys the wanted revision through the whole gate. A restart rolls the *running* revision out
again: the same gate (health, ``/info``, demos) and, behind the gateway, blue/green, so the slot
serving now is untouched until the new one passed; without the gateway it is a recreate.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from deployer.errors import DeployerError, Reason, StalledError, UnknownService
from deployer.model.actual import ServiceState
from deployer.model.deployment import instance_name
from deployer.model.desired import DesiredService
from deployer.model.status import AttemptView, Outcome, OverrideKind, RevisionView, ServiceView, Trigger
from deployer.reconcile.observe import Observer
from deployer.reconcile.rollout import Rollout
from deployer.store import Store

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ActionDone:
    """One service's outcome, one line of the CLI: ``ok`` False is a failure (the batch exits 1)."""

    service: str
    ok: bool
    outcome: str  # stopped, started, restarted, running, skipped, rolled_back, failed
    message: str
    attempt: int | None = None
    revision: int | None = None


class ServiceActions:
    def __init__(self, store: Store, rollout: Rollout, observer: Observer) -> None:
        self._store = store
        self._rollout = rollout
        self._observer = observer

    def stop(self, name: str, *, note: str, trigger: Trigger = Trigger.CLI) -> ActionDone:
        """Stop the instance serving ``name`` (its slot behind the gateway); it stays installed."""
        view = self._view(name)
        runtime = self._rollout.runtime_named(view.runtime)
        if runtime is None:
            raise UnknownService(name, where="on a runtime of this host")
        place = self._rollout.slots.serving(name)
        instance = instance_name(name, place.slot)
        seen = runtime.inspect(instance)
        if seen is None or seen.state not in (ServiceState.RUNNING, ServiceState.STARTING):
            self._observer.record(name, None, seen, note=f"stopped ({note})", port=place.port)
            return ActionDone(name, True, "stopped", "already stopped")
        attempt = self._store.history.start_attempt(name, None, trigger)
        outcome, reason, message = Outcome.FAILED, Reason.INTERNAL_ERROR.value, "internal error while stopping"
        try:
            runtime.stop(instance)
            outcome, reason, message = Outcome.SUCCEEDED, Reason.STOPPED.value, f"stopped ({note})"
        except DeployerError as exc:
            reason, message = exc.reason.value, f"could not stop: {exc} ({note})"
        finally:
            self._store.history.finish_attempt(attempt, outcome, reason, message)
            self._observer.record(name, None, runtime.inspect(instance), note=message, port=place.port)
        log.info("%s: %s", name, message, extra={"service": name, "attempt": attempt})
        ok = outcome is Outcome.SUCCEEDED
        return ActionDone(name, ok, "stopped" if ok else "failed", message, attempt)

    def start(self, name: str, *, note: str) -> ActionDone:
        """Deploy the revision ``name`` wants (its pin, else its branch head's) through the whole gate."""
        view = self._view(name)
        revision = self._wanted(view)
        if view.state == ServiceState.RUNNING.value and view.healthy and view.running_revision == revision.id:
            return ActionDone(name, True, "running", f"already running revision {revision.id} ({revision.sha[:7]})")
        return self._deploy(revision, Trigger.CLI, f"started by {note}", "started")

    def restart(self, name: str, *, note: str) -> ActionDone:
        """Roll the running revision out again (a model that reads its files at start reads them again)."""
        view = self._view(name)
        stop = self._store.overrides.active().get(name, {}).get(OverrideKind.STOPPED)
        if stop is not None:
            return ActionDone(name, True, "skipped",
                              f"stopped by {stop.who}; not restarted (`deployer start {name}` starts it)")
        if view.running_revision is None:
            raise StalledError(f"{name}: nothing is running to restart; `deployer start {name}` deploys it")
        revision = self._store.history.get_revision(view.running_revision)
        if revision is None:
            raise StalledError(f"{name}: its running revision {view.running_revision} is not recorded")
        return self._deploy(revision, Trigger.RESTART, f"restart by {note}", "restarted")

    # -- helpers ------------------------------------------------------------------------

    def _deploy(self, revision: RevisionView, trigger: Trigger, note: str, verb: str) -> ActionDone:
        desired = DesiredService.model_validate(revision.spec)
        outcome = self._rollout.deploy(desired, revision, trigger, note=note)
        attempt = self._newest_attempt(desired.name)
        message = attempt.message if attempt is not None else outcome.value
        ok = outcome is Outcome.SUCCEEDED
        return ActionDone(desired.name, ok, verb if ok else outcome.value, message,
                          attempt.id if attempt is not None else None)

    def _newest_attempt(self, name: str) -> AttemptView | None:
        found = self._store.history.attempts(name, 1)  # the caller holds the service's lock: it is ours
        return found[0] if found else None

    def _wanted(self, view: ServiceView) -> RevisionView:
        pin = self._store.overrides.active().get(view.name, {}).get(OverrideKind.PINNED)
        wanted = pin.revision if pin is not None and pin.revision is not None else view.desired_revision
        revision = self._store.history.get_revision(wanted) if wanted is not None else None
        if revision is None:
            raise StalledError(f"{view.name}: no revision is recorded to start; push a service.yaml first")
        return revision

    def _view(self, name: str) -> ServiceView:
        view = self._store.views.service(name)
        if view is None:
            raise UnknownService(name)
        return view
