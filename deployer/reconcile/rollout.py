"""The rollout of one service: checkout → build → hooks → apply → gate → post-deploy hooks, or put back.

Every step is recorded with its duration and output; every attempt ends with a
recorded outcome on every path. A revision that fails is replaced by the last
good one (itself rolled out with ``rollback-`` steps); with none to go back to,
the failed one is stopped rather than left crash-looping. The gate (health,
``/info``, demos) is ``Gate``; what happens around it is here.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace

from deployer.build import EnvBuilder
from deployer.demo import DemoFailed, check_info
from deployer.errors import BuildError, DeployerError, Reason
from deployer.health import HttpChecks
from deployer.hooks import HookRunner, hook_output
from deployer.model.actual import ServiceState
from deployer.model.deployment import Deployment
from deployer.model.desired import DesiredService
from deployer.model.events import AttemptFinished, AttemptStarted
from deployer.model.status import Outcome, RevisionView, Trigger
from deployer.reconcile.demos import DemoRunner
from deployer.reconcile.events import EventBus
from deployer.reconcile.observe import Observer, health_url
from deployer.reconcile.resolve import SERVICE_HOST, service_dir
from deployer.reconcile.sources import SourceRegistry
from deployer.runtimes.base import BuildsImages, Runtime
from deployer.secrets import SecretStore
from deployer.store import Store

log = logging.getLogger(__name__)

FAILED_CHECK_EVERY = 1.0  # seconds between asking the runtime whether a gated process died


class _Step:
    """Collects a step's output so it is stored with the step."""

    def __init__(self) -> None:
        self.output = ""


class Steps:
    """Records each step of an attempt, ok or failed, with its duration and output."""

    def __init__(self, store: Store) -> None:
        self._store = store

    @contextmanager
    def step(self, attempt: int, name: str) -> Iterator[_Step]:
        step = _Step()
        started = time.monotonic()
        try:
            yield step
        except BaseException as exc:
            self._store.history.add_step(attempt, name, time.monotonic() - started, False, step.output or str(exc))
            raise
        self._store.history.add_step(attempt, name, time.monotonic() - started, True, step.output)


class Gate:
    """Healthy first, then ready: ``/info`` matches the manifest and every demo input is answered as expected."""

    def __init__(self, http: HttpChecks, demos: DemoRunner, steps: Steps, *,
                 wait_healthy: Callable[..., float] | None = None) -> None:
        self._http = http
        self._demos = demos
        self._steps = steps
        self._wait_healthy = wait_healthy or http.wait_healthy  # injectable: unit tests need no HTTP server

    def check(self, desired: DesiredService, runtime: Runtime, revision: int, attempt: int, prefix: str) -> None:
        with self._steps.step(attempt, f"{prefix}health") as step:
            try:
                took = self._wait_healthy(health_url(desired), timeout=desired.health.timeout,
                                          interval=desired.health.interval, failed=_failed_check(runtime, desired.name))
            except DeployerError:
                step.output = runtime.logs(desired.name, 2000)
                raise
            step.output = f"healthy after {took:.2f}s"
        if desired.info.expect:
            with self._steps.step(attempt, f"{prefix}info") as step:
                check_info(self._http.client, f"http://{SERVICE_HOST}:{desired.port}{desired.info.path}",
                           desired.info.expect)
                step.output = "matches " + ", ".join(sorted(desired.info.expect))
        if desired.demo:
            with self._steps.step(attempt, f"{prefix}demo") as step:
                results = self._demos.run(desired, revision, attempt)
                step.output = "\n".join(result.summary for result in results)
                failed = [result.summary for result in results if not result.ok]
                if failed:
                    raise DemoFailed("demo failed: " + "; ".join(failed))


@dataclass(frozen=True)
class RolloutParts:
    """What a rollout works with besides the store: built once by the composition root."""

    runtimes: Mapping[str, Runtime]
    builder: EnvBuilder
    secrets: SecretStore
    hooks: HookRunner
    sources: SourceRegistry


class Rollout:
    def __init__(self, store: Store, parts: RolloutParts, gate: Gate, observer: Observer, events: EventBus) -> None:
        self._store = store
        self._parts = parts
        self._gate = gate
        self._observer = observer
        self._events = events
        self._steps = Steps(store)

    def deploy(self, desired: DesiredService, revision: RevisionView, trigger: Trigger, *,
               verify_only: bool = False) -> Outcome:
        """Build, apply and gate one revision; roll back on failure. Always records.

        ``verify_only`` runs just the gate: for a revision that was already applied
        when a deploy was interrupted, so it is not trusted unchecked.
        """
        attempt = self._store.history.start_attempt(desired.name, revision.id, trigger)
        started = time.monotonic()
        outcome, reason, message, rolled_back_to = Outcome.FAILED, Reason.INTERNAL_ERROR.value, "", None
        self._events.publish(AttemptStarted(desired.name, desired.source, desired.sha, revision.id, attempt, trigger))
        running = desired
        try:
            if verify_only:
                self._gate.check(desired, self._runtime(desired), revision.id, attempt, "")
            else:
                self._roll_out(desired, revision.id, attempt, prefix="")
            self._store.services.set_running(desired.name, revision.id)
            outcome, reason = Outcome.SUCCEEDED, _success_reason(trigger)
            message = f"revision {revision.id} ({desired.sha[:7]}) is healthy on port {desired.port}"
            if verify_only:
                message += " (verified after an interrupted deploy)"
        except DeployerError as exc:
            reason, message = exc.reason.value, str(exc)
            good = self._roll_back(desired.name, revision.id, attempt)
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
            self._store.history.finish_attempt(attempt, outcome, reason, message, rolled_back_to=rolled_back_to)
            self._events.publish(AttemptFinished(desired.name, desired.source, desired.sha, revision.id, attempt,
                                                 trigger, outcome, reason, message, time.monotonic() - started))
            self._observe_after(running)
        log.info("%s: %s (%s) %s", desired.name, outcome.value, reason, message,
                 extra={"service": desired.name, "revision": revision.id, "attempt": attempt})
        return outcome

    def remove(self, name: str, runtime: Runtime | None) -> str:
        """Stop and uninstall a service no manifest wants any more, and release what it held."""
        attempt = self._store.history.start_attempt(name, None, Trigger.SCHEDULE)
        try:
            with self._steps.step(attempt, "remove"):
                if runtime is not None:
                    runtime.remove(name)
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

    def _runtime(self, desired: DesiredService) -> Runtime:
        return self._parts.runtimes[desired.runtime]

    def _observe_after(self, running: DesiredService) -> None:
        """After every attempt: the state, a fresh probe on the running revision's own paths, a snapshot."""
        try:
            seen = self._runtime(running).inspect(running.name)
            self._observer.record(running.name, running, seen, fresh=True)
            if seen is not None:
                self._observer.capture(running.name, seen.runtime, running.port, running)
        except DeployerError as exc:
            log.warning("%s: could not observe after the attempt: %s", running.name, exc)

    def _roll_out(self, desired: DesiredService, revision: int, attempt: int, *, prefix: str) -> None:
        runtime = self._runtime(desired)
        deployment = self._prepare(desired, revision, attempt, prefix)
        try:
            self._hooks(deployment, attempt, prefix, "pre-deploy", desired.hooks.pre_deploy)
            with self._steps.step(attempt, f"{prefix}apply"):
                runtime.apply(deployment)
            self._gate.check(desired, runtime, revision, attempt, prefix)
            self._hooks(deployment, attempt, prefix, "post-deploy", desired.hooks.post_deploy)
        except DeployerError:
            if not prefix:  # the operator's on-failure hook runs once, for the revision that failed
                self._global_hook(deployment, attempt, "on-failure", best_effort=True)
            raise

    def _prepare(self, desired: DesiredService, revision: int, attempt: int, prefix: str) -> Deployment:
        """Checkout, then build: a Python environment (processes) or an image (containers)."""
        with self._steps.step(attempt, f"{prefix}checkout") as step:
            checkout = self._parts.sources.get(desired.source).checkout(desired.sha)
            workdir = service_dir(checkout, desired.path)
            step.output = f"{desired.sha[:7]} at {workdir}"
        secret_env = self._parts.secrets.resolve(desired.secrets, service=desired.name)
        environment = {**desired.env, "PORT": str(desired.port), "HOST": SERVICE_HOST}
        deployment = Deployment(desired=desired, revision=revision, workdir=workdir, argv=desired.argv,
                                environment=environment, secret_env=secret_env)
        runtime = self._runtime(desired)
        with self._steps.step(attempt, f"{prefix}build") as step:
            try:
                if isinstance(runtime, BuildsImages):
                    image = runtime.build(deployment)
                    step.output = f"reused image {image.image}" if image.reused else image.output_tail
                    return deployment
                built = self._parts.builder.ensure(workdir, desired.requirements)
            except BuildError as exc:
                step.output = f"{exc}\n{exc.output}".strip()
                raise
            step.output = f"reused environment {built.key[:12]}" if built.reused else built.output_tail
        return replace(deployment, env_dir=built.env_dir)

    def _hooks(self, deployment: Deployment, attempt: int, prefix: str, event: str, own: str | None) -> None:
        """The operator's global hook for ``event``, then the service's own, each a recorded step."""
        self._global_hook(deployment, attempt, event, step=f"{prefix}{event}")
        if own is None:
            return
        with self._steps.step(attempt, f"{prefix}{event.replace('-', '_')}") as step:
            try:
                step.output = self._parts.hooks.service_hook(deployment, own, event).output
            except DeployerError as exc:
                step.output = f"{exc}\n{hook_output(exc)}".strip()
                raise

    def _global_hook(self, deployment: Deployment, attempt: int, event: str, *, step: str = "",
                     best_effort: bool = False) -> None:
        hooks = self._parts.hooks
        if hooks.global_dir is None or not (hooks.global_dir / event).is_file():
            return
        with self._steps.step(attempt, step or f"global-{event}") as record:
            try:
                ran = hooks.global_hook(deployment, event)
                record.output = ran.output if ran else ""
            except DeployerError as exc:
                record.output = f"{exc}\n{hook_output(exc)}".strip()
                if not best_effort:
                    raise

    def _roll_back(self, name: str, failed_revision: int, attempt: int) -> RevisionView | None:
        """Put the last good revision back; return it, or None when there is none or it fails too."""
        good = self._store.history.last_good_revision(name, exclude=failed_revision)
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
        try:
            self._runtime(desired).stop(desired.name)
        except DeployerError as exc:
            return f"; could not stop it either: {exc}"
        return "; no earlier good revision, so it was stopped"


def _failed_check(runtime: Runtime, name: str) -> Callable[[], str | None]:
    """Whether the runtime already knows the process died, asked at most once a second (a listing is not free)."""
    asked = [float("-inf")]

    def failed() -> str | None:
        now = time.monotonic()
        if now - asked[0] < FAILED_CHECK_EVERY:
            return None
        asked[0] = now
        seen = runtime.inspect(name)
        if seen is not None and seen.state is ServiceState.FAILED:
            return seen.detail or "the runtime reports the process failed"
        return None

    return failed


def _success_reason(trigger: Trigger) -> str:
    return (Reason.DRIFT_CORRECTED if trigger is Trigger.DRIFT else Reason.RECONCILIATION_SUCCEEDED).value
