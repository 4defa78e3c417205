"""One service's rollout: checkout → files → build → hooks → start → gate → switch → post-deploy hooks, or put back.

Where the new revision starts is its ``Placement`` (``slots``): without the gateway, the service itself
on its sticky port (recreate: the old process is replaced in place). Behind the gateway, a
slot: blue-green starts the idle slot beside the serving one, gates it, switches the route,
drains and stops the old slot — a failure before the switch stops only the new slot, the
old one was never touched. ``recreate`` behind the gateway replaces the serving slot in place.
Every step is recorded; every attempt ends with a recorded outcome on every path.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from deployer.artifacts import Artifacts
from deployer.build import EnvBuilder
from deployer.errors import DeployerError, Reason
from deployer.hooks import HookRunner
from deployer.model.actual import ActualService, ServiceState
from deployer.model.cause import readable_paths
from deployer.model.deployment import SLOTS, Deployment, instance_name
from deployer.model.desired import DesiredService
from deployer.model.events import AttemptFinished, AttemptStarted
from deployer.model.status import Outcome, RevisionView, ServiceView, Trigger
from deployer.reconcile.events import EventBus
from deployer.reconcile.gate import Gate, HookSteps, Steps
from deployer.reconcile.observe import Observer
from deployer.reconcile.prepare import Preparation
from deployer.reconcile.routing import Router
from deployer.reconcile.slots import NotSwitched, Placement, Slots
from deployer.reconcile.sources import SourceRegistry
from deployer.runtimes.base import Runtime
from deployer.secrets import SecretStore
from deployer.store import Store, StoreError

log = logging.getLogger(__name__)
UNRECORDED_MESSAGE = "this attempt's end could not be recorded (the database failed); a later attempt took over"


class NotStarted(DeployerError):
    """The new revision failed before anything was started or stopped (checkout, LFS, files, build,
    pre-deploy hooks): what served before still serves, unless it had stopped on its own."""

    def __init__(self, cause: DeployerError) -> None:
        super().__init__(str(cause), reason=cause.reason)


@dataclass(frozen=True)
class RolloutParts:
    """What a rollout works with besides the store: built once by the composition root."""

    runtimes: Mapping[str, Runtime]
    builder: EnvBuilder
    secrets: SecretStore
    hooks: HookRunner
    sources: SourceRegistry
    router: Router | None = None  # the gateway's; None when it is off
    # Builds use the CPU (pip/uv, docker build); gates only wait. Bounding builds, not deploys,
    # lets a slow gate wait without holding anyone else's build.
    builds: threading.BoundedSemaphore = field(default_factory=lambda: threading.BoundedSemaphore(2))
    artifacts: Artifacts | None = None  # files by digest (artifacts:); assemble always gives one


class Rollout:
    def __init__(self, store: Store, parts: RolloutParts, gate: Gate, observer: Observer, events: EventBus) -> None:
        self._store = store
        self._parts = parts
        self._gate = gate
        self._observer = observer
        self._events = events
        self._steps = Steps(store)
        self._hook_steps = HookSteps(parts.hooks, self._steps)
        # Services whose last attempt could not be written (the database failed): what runs was
        # never recorded, so the next pass gates it again (verify_only) and records it.
        self.unrecorded: dict[str, int] = {}  # service -> its attempt left RUNNING in the store
        self.slots = Slots(store, parts.router, self._steps)
        self._preparation = Preparation(parts.runtimes, parts.builder, parts.secrets, parts.sources, self._steps,
                                        builds=parts.builds, artifacts=parts.artifacts)

    # -- one attempt -----------------------------------------------------------------

    def deploy(self, desired: DesiredService, revision: RevisionView, trigger: Trigger, *,
               verify_only: bool = False, note: str = "") -> Outcome:
        """Build, start and gate one revision; put the last good one back on failure. Always records.

        ``verify_only`` runs just the gate: for a revision that was already applied when a deploy
        was interrupted, so it is not trusted unchecked. ``note`` (who asked, and why) ends the message.
        """
        attempt = self._store.history.start_attempt(desired.name, revision.id, trigger)
        self._end_unrecorded(desired.name)
        started = time.monotonic()
        outcome, reason, message, rolled_back_to = Outcome.FAILED, Reason.INTERNAL_ERROR.value, "", None
        self._events.publish(AttemptStarted(desired.name, desired.source, desired.sha, revision.id, attempt, trigger))
        running = desired
        previous = self._store.views.service(desired.name)
        try:
            how = ""
            if verify_only:
                self._verify(desired, revision.id, attempt)
            else:
                how = self._roll_out(desired, revision.id, attempt, prefix="")
            self._store.services.set_running(desired.name, revision.id)
            self.slots.route_swarm(desired, self._runtime(desired))
            outcome, reason = Outcome.SUCCEEDED, _success_reason(trigger)
            message = f"revision {revision.id} ({desired.sha[:7]}) is healthy on port {desired.port}"
            message += f" ({how})" if how else ""
            if verify_only:
                message += " (verified after an interrupted deploy)"
        except StoreError as exc:
            # The database failed, not the revision: nothing is rolled back or stopped for that. What
            # runs is left as it is; the next pass compares it with what is wanted once writes work.
            message = f"not recorded: {exc}"
            self.unrecorded[desired.name] = attempt
            log.error("%s: cannot record this deploy (%s); what runs is left as it is", desired.name, exc)
        except NotSwitched as exc:
            reason, message = exc.reason.value, readable_paths(str(exc))
            kept = previous.running_revision if previous is not None else None
            if kept is not None:
                outcome, rolled_back_to = Outcome.ROLLED_BACK, kept
                message += f"; revision {kept} kept serving (blue-green: it was never stopped)"
                running = self._revision_desired(kept) or desired
            else:
                message += "; no earlier revision, nothing serves"
        except DeployerError as exc:
            reason, message = exc.reason.value, readable_paths(str(exc))
            untouched = self._still_serving(previous) if isinstance(exc, NotStarted) else None
            if untouched is not None:  # nothing was stopped: no need to start the last good revision again
                outcome, rolled_back_to = Outcome.ROLLED_BACK, untouched.id
                running = DesiredService.model_validate(untouched.spec)
                message += f"; revision {untouched.id} kept serving (the new one failed before it was started)"
            # a restart puts back what ran (the same revision, started again); a deploy the last good one before it
            elif (good := self._roll_back(desired.name, revision.id, attempt,
                                          again=revision if trigger is Trigger.RESTART else None)) is not None:
                outcome, rolled_back_to = Outcome.ROLLED_BACK, good.id
                running = DesiredService.model_validate(good.spec)
                message += f"; rolled back to revision {good.id}"
            else:
                message += self._stop_failed(desired)
        except Exception as exc:
            log.exception("%s: deploy crashed", desired.name)
            message = f"internal error: {type(exc).__name__}"
        finally:
            message += f" ({note})" if note else ""
            # Observed first: once the attempt reads finished, the service's state says what runs now
            # (not the "starting" a replacement in place recorded, for the moment in between).
            observed = self._observe_after(running)
            try:
                self._store.history.finish_attempt(attempt, outcome, reason, message, rolled_back_to=rolled_back_to)
            except StoreError as exc:  # left RUNNING; the service's next attempt ends it as interrupted
                self.unrecorded[desired.name] = attempt
                log.error("%s: cannot record the end of attempt %d: %s", desired.name, attempt, exc)
            self._events.publish(AttemptFinished(desired.name, desired.source, desired.sha, revision.id, attempt,
                                                 trigger, outcome, reason, message, time.monotonic() - started))
            self._capture_after(running, observed)
        log.info("%s: %s (%s) %s", desired.name, outcome.value, reason, message,
                 extra={"service": desired.name, "revision": revision.id, "attempt": attempt})
        return outcome

    def _end_unrecorded(self, name: str) -> None:
        """The attempt whose end could not be written, ended now that the store writes again."""
        stale = self.unrecorded.pop(name, None)
        if stale is not None:
            self._store.history.finish_attempt(stale, Outcome.INTERRUPTED, Reason.INTERRUPTED.value,
                                               UNRECORDED_MESSAGE)

    def remove(self, name: str, runtime: Runtime | None) -> str:
        """Stop and uninstall a service no manifest wants any more (every slot), and release what it held."""
        attempt = self._store.history.start_attempt(name, None, Trigger.SCHEDULE)
        try:
            with self._steps.step(attempt, "remove"):
                if runtime is not None:
                    for slot in (None, *SLOTS):
                        runtime.remove(instance_name(name, slot))
                if self._parts.router is not None:
                    self._parts.router.forget(name)
        except DeployerError as exc:
            self._store.history.finish_attempt(attempt, Outcome.FAILED, exc.reason.value, f"could not remove: {exc}")
            return "failed"
        self._store.history.finish_attempt(attempt, Outcome.SUCCEEDED, Reason.PRUNED.value,
                                           "removed: no longer in any manifest")
        self._store.services.mark_removed(name)
        self._store.ports.release(name)
        self._observer.record_removed(name, "removed: no longer in the manifest")
        log.info("%s: removed (no longer in any manifest)", name)
        return "removed"

    def runtime_named(self, name: str) -> Runtime | None:
        return self._parts.runtimes.get(name)

    # -- the steps -------------------------------------------------------------------

    def _runtime(self, desired: DesiredService) -> Runtime:
        return self._parts.runtimes[desired.runtime]

    def _roll_out(self, desired: DesiredService, revision: int, attempt: int, *, prefix: str) -> str:
        """Roll ``desired`` out; returns how it went for people: the strategy, and how long nothing served."""
        runtime = self._runtime(desired)
        place = self.slots.placement(desired)
        try:
            deployment = self._preparation.prepare(desired, revision, attempt, prefix, place)
        except DeployerError as exc:
            raise NotStarted(exc) from exc
        try:
            try:
                self._hook_steps.run(deployment, attempt, prefix, "pre-deploy", desired.hooks.pre_deploy)
            except DeployerError as exc:
                raise NotStarted(exc) from exc
            stopped = time.monotonic()  # recreate: from here the old process is gone until the gate passes
            if not place.blue_green:  # the page and API must not keep showing the old process's "healthy"
                self._observer.replacing(desired.name, f"being replaced by revision {revision} (attempt {attempt})")
            self.slots.widen_swarm_route(desired, runtime)
            with self._steps.step(attempt, f"{prefix}apply") as step:
                try:
                    runtime.apply(deployment)
                except DeployerError as exc:  # the message says the cause once; the step keeps the whole output
                    output = getattr(exc, "output", "")
                    step.output = f"{exc}\n{output}".strip() if isinstance(output, str) else str(exc)
                    raise
                step.output = f"{deployment.name} on port {deployment.port}" if place.slot else ""
            try:
                self._gate.check(deployment, runtime, attempt, prefix)
            except DeployerError as exc:
                if place.blue_green:
                    self.slots.discard(runtime, deployment.name)  # only the new slot: the serving one is untouched
                    raise NotSwitched(exc) from exc
                raise
            unavailable = time.monotonic() - stopped
            if place.slot is not None:
                self.slots.switch(deployment, runtime, place, attempt, prefix)
            else:
                self.slots.leave_slots(desired.name, runtime)
            self._hook_steps.run(deployment, attempt, prefix, "post-deploy", desired.hooks.post_deploy)
        except DeployerError:
            if not prefix:  # the operator's on-failure hook runs once, for the revision that failed
                self._hook_steps.global_hook(deployment, attempt, "on-failure", best_effort=True)
            raise
        if place.blue_green:
            return "blue-green: the old slot served until the switch"
        return f"recreate: unavailable for about {unavailable:.1f}s while the new process started"

    def _verify(self, desired: DesiredService, revision: int, attempt: int) -> None:
        place = self.slots.serving(desired.name)
        check = Deployment(desired=desired, revision=revision, workdir=Path("."), slot=place.slot,
                           slot_port=place.port)
        self._gate.check(check, self._runtime(desired), attempt, "")

    def _roll_back(self, name: str, failed_revision: int, attempt: int, *,
                   again: RevisionView | None = None) -> RevisionView | None:
        """Put the last good revision (or ``again``) back; return it, or None when there is none or it fails too."""
        good = again or self._store.history.last_good_revision(name, exclude=failed_revision)
        if good is None:
            return None
        try:
            self._roll_out(DesiredService.model_validate(good.spec), good.id, attempt, prefix="rollback-")
        except DeployerError as exc:
            log.error("%s: rollback to revision %s failed too: %s", name, good.id, exc)
            return None
        self._store.services.set_running(name, good.id)
        return good

    def _still_serving(self, previous: ServiceView | None) -> RevisionView | None:
        """The revision that ran before the attempt, when it still runs (the attempt never touched it)."""
        if previous is None or previous.running_revision is None:
            return None
        kept = self._store.history.get_revision(previous.running_revision)
        if kept is None:
            return None
        try:
            seen = self._parts.runtimes[previous.runtime].inspect(
                instance_name(previous.name, self.slots.serving(previous.name).slot))
        except (DeployerError, KeyError):
            return None
        return kept if seen is not None and seen.state is ServiceState.RUNNING else None

    def _stop_failed(self, desired: DesiredService) -> str:
        """No good revision to go back to: stop the failed one rather than let it crash-loop."""
        instance = instance_name(desired.name, self.slots.serving(desired.name).slot)
        try:
            self._runtime(desired).stop(instance)
        except DeployerError as exc:
            return f"; could not stop it either: {exc}"
        return "; no earlier good revision, so it was stopped"

    def _observe_after(self, running: DesiredService) -> tuple[ActualService, Placement] | None:
        """At the end of every attempt: the serving instance's state and a fresh probe on its own paths."""
        try:
            place = self.slots.serving(running.name)
            instance = instance_name(running.name, place.slot)
            seen = self._runtime(running).inspect(instance)
            self._observer.record(running.name, running, seen, fresh=True, port=place.port, instance=instance)
        except Exception as exc:  # observation is best effort: the attempt must still be recorded as finished
            log.warning("%s: could not observe after the attempt: %s", running.name, exc)
            return None
        return (seen, place) if seen is not None else None

    def _capture_after(self, running: DesiredService, observed: tuple[ActualService, Placement] | None) -> None:
        """Then its log tail and ``/info`` (slower: read once the attempt is recorded); best effort too."""
        if observed is not None:
            seen, place = observed
            with contextlib.suppress(DeployerError):
                self._observer.capture(running.name, seen.runtime, place.port or running.port, running,
                                       instance=instance_name(running.name, place.slot))

    def _revision_desired(self, revision: int) -> DesiredService | None:
        found = self._store.history.get_revision(revision)
        return DesiredService.model_validate(found.spec) if found is not None else None


def _success_reason(trigger: Trigger) -> str:
    reasons = {Trigger.DRIFT: Reason.DRIFT_CORRECTED, Trigger.RESTART: Reason.RESTARTED}
    return reasons.get(trigger, Reason.RECONCILIATION_SUCCEEDED).value

