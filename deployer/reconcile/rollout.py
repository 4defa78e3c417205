"""One service's rollout: checkout → files → build → hooks → start → gate → switch → post-deploy hooks, or put back.

Where the new revision starts is its ``Placement``: without the gateway, the service itself
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
from dataclasses import dataclass, field, replace
from pathlib import Path

from deployer.build import EnvBuilder
from deployer.errors import BuildError, DeployerError, Reason, StalledError
from deployer.hooks import HookRunner
from deployer.model.cause import readable_paths
from deployer.model.deployment import SLOTS, Deployment, instance_name
from deployer.model.desired import DesiredService
from deployer.model.events import AttemptFinished, AttemptStarted
from deployer.model.status import Outcome, RevisionView, Trigger
from deployer.ports import is_free
from deployer.reconcile.events import EventBus
from deployer.reconcile.gate import Gate, HookSteps, Steps
from deployer.reconcile.observe import Observer
from deployer.reconcile.resolve import SERVICE_HOST, argv, read_files, service_dir
from deployer.reconcile.routing import Router, Target
from deployer.reconcile.sources import SourceRegistry
from deployer.runtimes.base import BuildsImages, Runtime, SpreadsOverNodes
from deployer.safety import UnsafePath, write_inside
from deployer.secrets import SecretStore
from deployer.store import Store, StoreError

log = logging.getLogger(__name__)
UNRECORDED_MESSAGE = "this attempt's end could not be recorded (the database failed); a later attempt took over"

SLOTTED_RUNTIMES = ("supervisor", "docker")  # swarm keeps its own start-first update
_HANDOVER_POLL_SECONDS = 0.002


class NotSwitched(DeployerError):
    """A blue-green rollout failed before the switch: the serving slot was never touched."""

    def __init__(self, cause: DeployerError) -> None:
        super().__init__(str(cause), reason=cause.reason)


@dataclass(frozen=True)
class Placement:
    """Where a revision starts: a slot and its port behind the gateway (``slot`` None: the plain service)."""

    slot: str | None
    port: int | None
    serving: str | None = None  # the slot serving now
    blue_green: bool = False


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
            self._route_swarm(desired)
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
            # a restart puts back what ran (the same revision, started again); a deploy the last good one before it
            good = self._roll_back(desired.name, revision.id, attempt,
                                   again=revision if trigger is Trigger.RESTART else None)
            if good is not None:
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
            try:
                self._store.history.finish_attempt(attempt, outcome, reason, message, rolled_back_to=rolled_back_to)
            except StoreError as exc:  # left RUNNING; the service's next attempt ends it as interrupted
                self.unrecorded[desired.name] = attempt
                log.error("%s: cannot record the end of attempt %d: %s", desired.name, attempt, exc)
            self._events.publish(AttemptFinished(desired.name, desired.source, desired.sha, revision.id, attempt,
                                                 trigger, outcome, reason, message, time.monotonic() - started))
            self._observe_after(running)
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

    @property
    def router(self) -> Router | None:
        return self._parts.router

    def runtime_named(self, name: str) -> Runtime | None:
        return self._parts.runtimes.get(name)

    def behind_gateway(self, desired: DesiredService) -> bool:
        """Slots only while the gateway works: with nginx missing or broken, services still deploy (recreated)."""
        router = self._parts.router
        return router is not None and router.available and desired.runtime in SLOTTED_RUNTIMES

    def placement(self, desired: DesiredService) -> Placement:
        """Where ``desired`` would start now (and where the service serves from)."""
        router = self._parts.router
        if router is None or not self.behind_gateway(desired):
            return Placement(None, None)
        ports, serving = router.slot_ports(desired.name), router.active(desired.name)
        blue_green = desired.rollout is None or desired.rollout.strategy == "blue-green"
        # blue-green: the slot that does not serve; recreate: the serving one, replaced in place
        idle = "green" if serving == "blue" else "blue"
        slot = idle if blue_green else serving or "blue"
        return Placement(slot, ports[slot], serving, blue_green)

    def serving(self, name: str) -> Placement:
        """Where ``name`` serves from now: its active slot and that slot's port, else itself."""
        router = self._parts.router
        slot = router.active(name) if router is not None else None
        if router is None or slot is None:
            return Placement(None, None)
        return Placement(slot, router.slot_ports(name)[slot], slot)

    # -- the steps -------------------------------------------------------------------

    def _runtime(self, desired: DesiredService) -> Runtime:
        return self._parts.runtimes[desired.runtime]

    def _roll_out(self, desired: DesiredService, revision: int, attempt: int, *, prefix: str) -> str:
        """Roll ``desired`` out; returns how it went for people: the strategy, and how long nothing served."""
        runtime = self._runtime(desired)
        place = self.placement(desired)
        deployment = self._prepare(desired, revision, attempt, prefix, place)
        try:
            self._hook_steps.run(deployment, attempt, prefix, "pre-deploy", desired.hooks.pre_deploy)
            stopped = time.monotonic()  # recreate: from here the old process is gone until the gate passes
            if not place.blue_green:  # the page and API must not keep showing the old process's "healthy"
                self._observer.replacing(desired.name, f"being replaced by revision {revision} (attempt {attempt})")
            self._widen_swarm_route(desired, runtime)
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
                    self._discard(runtime, deployment.name)  # only the new slot: the serving one is untouched
                    raise NotSwitched(exc) from exc
                raise
            unavailable = time.monotonic() - stopped
            if place.slot is not None:
                self._switch(deployment, runtime, place, attempt, prefix)
            else:
                self._leave_slots(desired.name, runtime)
            self._hook_steps.run(deployment, attempt, prefix, "post-deploy", desired.hooks.post_deploy)
        except DeployerError:
            if not prefix:  # the operator's on-failure hook runs once, for the revision that failed
                self._hook_steps.global_hook(deployment, attempt, "on-failure", best_effort=True)
            raise
        if place.blue_green:
            return "blue-green: the old slot served until the switch"
        return f"recreate: unavailable for about {unavailable:.1f}s while the new process started"

    def _switch(self, deployment: Deployment, runtime: Runtime, place: Placement, attempt: int, prefix: str) -> None:
        """Route the service to the new slot, then drain and stop the old one (and a pre-gateway process)."""
        router, service = self._parts.router, deployment.service
        assert router is not None and place.slot is not None and place.port is not None
        plain = runtime.inspect(service)  # the service as it ran before the gateway: holds the sticky port
        handover = _Handover(runtime, service, deployment.desired.port) if plain is not None else None
        with self._steps.step(attempt, f"{prefix}switch") as step:
            try:
                router.switch(service, Target(place.slot, place.port, deployment.revision, deployment.desired),
                              handover=handover)
                if handover is not None:
                    handover.answered = time.monotonic()
                    handover.finish()
            except DeployerError as exc:
                if handover is not None and handover.stopped is not None:
                    with contextlib.suppress(DeployerError):
                        handover.finish()
                    runtime.start(service)
                if place.blue_green:
                    self._discard(runtime, deployment.name)
                    raise NotSwitched(exc) from exc
                raise
            step.output = (f"{service}: routed to {place.slot} (port {place.port})"
                           + (f", was {place.serving}" if place.serving and place.serving != place.slot else "")
                           + (handover.said() if handover is not None else ""))
        old = [instance_name(service, place.serving)] if place.serving and place.serving != place.slot else []
        old += [service] if plain is not None else []
        if old:
            with self._steps.step(attempt, f"{prefix}drain") as step:
                time.sleep(router.drain)  # requests in flight on the old slot finish (nginx reload semantics)
                for instance in old:
                    runtime.remove(instance)
                step.output = f"drained {router.drain:g}s, stopped {', '.join(old)}"

    def _route_swarm(self, desired: DesiredService) -> None:
        """A swarm service with a gateway path: the gateway routes it to its published port (not slotted)."""
        router = self._parts.router
        if router is None or not router.available or desired.runtime != "swarm" or desired.gateway is None:
            return
        runtime = self._runtime(desired)
        try:
            if isinstance(runtime, SpreadsOverNodes):  # the nodes its new tasks run on, before the route is synced
                router.follow_nodes({desired.name: runtime.addresses(desired.name)})
            router.sync(force=True)
        except DeployerError as exc:  # the service itself is deployed; its route follows at the next change
            log.warning("%s: the gateway did not take its route: %s", desired.name, exc)

    def _widen_swarm_route(self, desired: DesiredService, runtime: Runtime) -> None:
        """Before a swarm update: route to every node a new task may land on, besides those serving now.

        A start-first update may put the new task on another node and stop the old one before the
        update is done; a node with no task refuses at once and nginx passes the request on, so
        listing it early loses nothing. ``_route_swarm`` narrows the route once the update is done.
        """
        router = self._parts.router
        if (router is None or not router.available or desired.gateway is None
                or not isinstance(runtime, SpreadsOverNodes)):
            return
        try:
            nodes = set(runtime.addresses(desired.name)) | set(runtime.nodes_for(desired))
            router.follow_nodes({desired.name: tuple(sorted(nodes))})
        except DeployerError as exc:  # routed as before: the update goes on
            log.warning("%s: the gateway could not be widened to every node: %s", desired.name, exc)

    def _leave_slots(self, name: str, runtime: Runtime) -> None:
        """The gateway was turned off: the service now serves on its own port; its slots go."""
        if self._store.slots.active(name) is None:
            return
        self._store.slots.set_active(name, None)
        for slot in SLOTS:
            self._discard(runtime, instance_name(name, slot))

    def _discard(self, runtime: Runtime, instance: str) -> None:
        try:
            runtime.remove(instance)
        except DeployerError as exc:
            log.warning("%s: could not stop the slot that failed its gate: %s", instance, exc)

    def _verify(self, desired: DesiredService, revision: int, attempt: int) -> None:
        place = self.serving(desired.name)
        check = Deployment(desired=desired, revision=revision, workdir=Path("."), slot=place.slot,
                           slot_port=place.port)
        self._gate.check(check, self._runtime(desired), attempt, "")

    def _prepare(self, desired: DesiredService, revision: int, attempt: int, prefix: str,
                 place: Placement) -> Deployment:
        """Checkout, then build: a Python environment (processes) or an image (containers)."""
        with self._steps.step(attempt, f"{prefix}checkout") as step:
            checkout = self._parts.sources.get(desired.source).checkout(desired.sha)
            workdir = service_dir(checkout, desired.path)
            step.output = f"{desired.sha[:7]} at {workdir}"
        secret_env = self._parts.secrets.resolve(desired.secrets, service=desired.name)
        files = self._files(desired, workdir, attempt, prefix,
                            into_checkout=not isinstance(self._runtime(desired), BuildsImages))
        port = place.port if place.port is not None else desired.port
        environment = {**desired.env, "PORT": str(port), "HOST": SERVICE_HOST}
        deployment = Deployment(desired=desired, revision=revision, workdir=workdir, argv=argv(desired.command, port),
                                environment=environment, secret_env=secret_env, slot=place.slot,
                                slot_port=place.port, files=files)
        runtime = self._runtime(desired)
        with self._steps.step(attempt, f"{prefix}build") as step, self._parts.builds:
            try:
                if isinstance(runtime, BuildsImages):
                    image = runtime.build(deployment)
                    step.output = f"reused image {image.image}" if image.reused else image.output_tail
                    return deployment
                built = self._parts.builder.ensure(workdir, desired.requirements)
            except BuildError as exc:
                step.output = f"{exc}\n{exc.output}".strip()
                raise
            done = f"reused environment {built.key[:12]}" if built.reused else built.output_tail
            step.output = f"{built.summary}\n{done}"
        return replace(deployment, env_dir=built.env_dir)

    def _files(self, desired: DesiredService, workdir: Path, attempt: int, prefix: str, *,
               into_checkout: bool) -> tuple[tuple[str, bytes], ...]:
        """The ``files:`` contents; a process runtime's are written into the checkout now (0600).

        A container runtime copies them into the container before it starts (never into the image).
        """
        if not desired.files:
            return ()
        with self._steps.step(attempt, f"{prefix}files") as step:
            contents = read_files(desired.name, desired.files, workdir, self._parts.secrets)
            missing = [entry.secret for entry in desired.files if entry.secret and contents.get(entry.path) is None]
            if missing:
                self._parts.secrets.resolve(missing, service=desired.name)  # raises SecretMissing naming them
            ready = tuple((path, data) for path, data in contents.items() if data is not None)
            if into_checkout:
                for path, data in ready:
                    try:
                        write_inside(workdir, path, data, mode=0o600)
                    except (UnsafePath, OSError) as exc:
                        raise StalledError(f"{desired.name}: files: cannot write {path}: {exc}",
                                           reason=Reason.APPLY_FAILED) from None
            step.output = "\n".join(f"{entry.path} (mode 0600) from " + (f"secret {entry.secret}" if entry.secret
                                                                        else f"{entry.from_}")
                                    for entry in desired.files)
        return ready

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

    def _stop_failed(self, desired: DesiredService) -> str:
        """No good revision to go back to: stop the failed one rather than let it crash-loop."""
        instance = instance_name(desired.name, self.serving(desired.name).slot)
        try:
            self._runtime(desired).stop(instance)
        except DeployerError as exc:
            return f"; could not stop it either: {exc}"
        return "; no earlier good revision, so it was stopped"

    def _observe_after(self, running: DesiredService) -> None:
        """After every attempt: the state, a fresh probe on the serving instance's own paths, a snapshot."""
        try:
            place = self.serving(running.name)
            instance = instance_name(running.name, place.slot)
            seen = self._runtime(running).inspect(instance)
            self._observer.record(running.name, running, seen, fresh=True, port=place.port, instance=instance)
            if seen is not None:
                self._observer.capture(running.name, seen.runtime, place.port or running.port, running,
                                       instance=instance)
        except DeployerError as exc:
            log.warning("%s: could not observe after the attempt: %s", running.name, exc)

    def _revision_desired(self, revision: int) -> DesiredService | None:
        found = self._store.history.get_revision(revision)
        return DesiredService.model_validate(found.spec) if found is not None else None


class _Handover:
    """A service moving behind the gateway: its own process leaves the sticky port for nginx.

    Called by the gateway once everything else is ready (the slot gated, the inner nginx routing
    to it, the new config tested), right before nginx reloads to bind the port. The stop runs on
    its own thread and the call returns as soon as the port can be bound: the runtime's own
    bookkeeping of the stop (supervisord noticing the exit and answering) goes on during the
    reload instead of before it, and ``finish`` waits for it. From the stop to the confirmed
    reload is the one window in which the sticky port does not answer.
    """

    def __init__(self, runtime: Runtime, service: str, port: int) -> None:
        self._runtime = runtime
        self._service = service
        self._port = port
        self.stopped: float | None = None
        self._freed: float | None = None
        self.answered: float | None = None  # the gateway confirmed nginx serves the port
        self._stopping: threading.Thread | None = None
        self._error: DeployerError | None = None

    def __call__(self) -> None:
        self.stopped = time.monotonic()
        self._stopping = threading.Thread(target=self._stop, name=f"handover-{self._service}", daemon=True)
        self._stopping.start()
        while self._stopping.is_alive() and not is_free(self._port):
            time.sleep(_HANDOVER_POLL_SECONDS)
        self._freed = time.monotonic()
        if self._error is not None:
            raise self._error

    def finish(self) -> None:
        """The stop done (whatever happened to the switch); its error, if any, raised."""
        if self._stopping is not None:
            self._stopping.join()
        if self._error is not None:
            raise self._error

    def said(self) -> str:
        if self.stopped is None or self._freed is None or self.answered is None:
            return ""
        return (f"; port {self._port} taken over from {self._service}'s own process: free "
                f"{self._freed - self.stopped:.2f}s after its stop, nginx answering there "
                f"{self.answered - self.stopped:.2f}s after it")

    def _stop(self) -> None:
        try:
            self._runtime.stop(self._service)
        except DeployerError as exc:
            self._error = exc


def _success_reason(trigger: Trigger) -> str:
    reasons = {Trigger.DRIFT: Reason.DRIFT_CORRECTED, Trigger.RESTART: Reason.RESTARTED}
    return reasons.get(trigger, Reason.RECONCILIATION_SUCCEEDED).value

