"""The gate a revision passes before it serves (healthy, ``/info`` as expected, demos answered), and its steps.

Everything is asked of the instance being rolled out, on the port it listens on (its slot's
port behind the gateway), and recorded as steps. The health wait watches the process too: one
that exits, goes fatal or is restarted by its runtime (a new pid) ends the wait at once, with
the root cause of its output, instead of letting it run out the timeout.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from deployer.demo import DemoFailed, check_info
from deployer.errors import DeployerError, RuntimeUnavailable
from deployer.health import HealthCheckFailed, HttpChecks
from deployer.hooks import HookRunner, hook_output
from deployer.model.actual import ServiceState
from deployer.model.cause import readable_paths, root_cause
from deployer.model.deployment import Deployment
from deployer.reconcile.demos import DemoRunner
from deployer.reconcile.resolve import SERVICE_HOST
from deployer.runtimes.base import Reloads, Runtime, SpreadsOverNodes
from deployer.store import Store

FAILED_CHECK_EVERY = 1.0  # seconds between asking the runtime whether a gated process died
OUTPUT_KEPT = 8000  # bytes of a failed gate's output stored with its step (the page shows them)


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


class HookSteps:
    """The service's own lifecycle hooks and the operator's global ones, each a recorded step."""

    def __init__(self, hooks: HookRunner, steps: Steps) -> None:
        self._hooks = hooks
        self._steps = steps

    def run(self, deployment: Deployment, attempt: int, prefix: str, event: str, own: str | None) -> None:
        """The operator's global hook for ``event``, then the service's own."""
        self.global_hook(deployment, attempt, event, step=f"{prefix}{event}")
        if own is None:
            return
        with self._steps.step(attempt, f"{prefix}{event.replace('-', '_')}") as step:
            try:
                step.output = self._hooks.service_hook(deployment, own, event).output
            except DeployerError as exc:
                step.output = f"{exc}\n{hook_output(exc)}".strip()
                raise

    def global_hook(self, deployment: Deployment, attempt: int, event: str, *, step: str = "",
                    best_effort: bool = False) -> None:
        if self._hooks.global_dir is None or not (self._hooks.global_dir / event).is_file():
            return
        with self._steps.step(attempt, step or f"global-{event}") as record:
            try:
                ran = self._hooks.global_hook(deployment, event)
                record.output = ran.output if ran else ""
            except DeployerError as exc:
                record.output = f"{exc}\n{hook_output(exc)}".strip()
                if not best_effort:
                    raise


class Gate:
    def __init__(self, http: HttpChecks, demos: DemoRunner, steps: Steps, *,
                 wait_healthy: Callable[..., float] | None = None) -> None:
        self._http = http
        self._demos = demos
        self._steps = steps
        self._wait_healthy = wait_healthy or http.wait_healthy  # injectable: unit tests need no HTTP server

    def check(self, deployment: Deployment, runtime: Runtime, attempt: int, prefix: str) -> None:
        """Health, ``/info`` and demos, on every node where the new revision runs (one: this host)."""
        hosts = _hosts(runtime, deployment.name)
        for host in hosts:
            where = f" on {host}" if len(hosts) > 1 or host != SERVICE_HOST else ""
            self._check_on(deployment, runtime, attempt, prefix, host, where)

    def _check_on(self, deployment: Deployment, runtime: Runtime, attempt: int, prefix: str, host: str,
                  where: str) -> None:
        desired, base = deployment.desired, f"http://{host}:{deployment.port}"
        with self._steps.step(attempt, f"{prefix}health") as step:
            try:
                took = self._wait_healthy(f"{base}{desired.health.path}", timeout=desired.health.timeout,
                                          interval=desired.health.interval,
                                          failed=_Watch(runtime, deployment.name))
            except RuntimeUnavailable:
                raise  # the runtime's fault, retried: not to be read as the revision's (its log says nothing of it)
            except DeployerError as exc:
                step.output = readable_paths(runtime.logs(deployment.name, OUTPUT_KEPT))
                cause = root_cause(step.output, errors_only=True)
                if cause:
                    raise HealthCheckFailed(f"{cause} — {exc}{where}") from exc  # the cause first: statuses are short
                raise
            step.output = f"healthy after {took:.2f}s{where}"
        if desired.info.expect:
            with self._steps.step(attempt, f"{prefix}info") as step:
                check_info(self._http.client, f"{base}{desired.info.path}", desired.info.expect)
                step.output = "matches " + ", ".join(sorted(desired.info.expect)) + where
        if desired.demo:
            with self._steps.step(attempt, f"{prefix}demo") as step:
                results = self._demos.run(desired, deployment.revision, attempt, port=deployment.port, host=host)
                step.output = "\n".join(result.summary + where for result in results)
                failed = [result.summary for result in results if not result.ok]
                if failed:
                    raise DemoFailed("demo failed" + where + ": " + "; ".join(failed))


def _hosts(runtime: Runtime, instance: str) -> tuple[str, ...]:
    """Where the instance answers: each node of a swarm service, else this host's loopback."""
    if isinstance(runtime, SpreadsOverNodes):
        return runtime.addresses(instance) or (SERVICE_HOST,)
    return (SERVICE_HOST,)


class _Watch:
    """Whether the gated process died, asked of the runtime at most once a second.

    supervisord's RUNNING only means the process outlived ``startsecs``: a process that dies
    later is restarted by supervisord (a crash loop) and would read RUNNING again a second
    after. So the first process seen is remembered, and any other one (a restart), an exit,
    a backoff or a fatal state ends the wait at once. A restart because the runtime itself
    restarted every process (supervisord reloaded on SIGHUP) is not the revision's fault: that
    raises ``RuntimeUnavailable``, which is retried, where a failed gate would hold the revision.
    """

    def __init__(self, runtime: Runtime, instance: str, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._runtime = runtime
        self._instance = instance
        self._clock = clock
        self._asked = float("-inf")
        self._pid: int | None = None
        self._generation: str | None = None

    def __call__(self) -> str | None:
        now = self._clock()
        if now - self._asked < FAILED_CHECK_EVERY:
            return None
        self._asked = now
        seen = self._runtime.inspect(self._instance)
        if seen is None:
            return None
        if seen.state is ServiceState.FAILED:
            return seen.detail or "the runtime reports the process failed"
        if seen.state is ServiceState.STOPPED:
            return "the process exited" + (f" ({seen.detail})" if seen.detail else "")
        if self._pid is not None and seen.pid != self._pid:
            self._unless_reloaded(seen.runtime)
            now_pid = f"pid {seen.pid}" if seen.pid is not None else "waiting to restart"
            return f"the process exited and was restarted by {seen.runtime} (pid {self._pid}, now {now_pid})"
        if self._pid is None and seen.pid is not None and isinstance(self._runtime, Reloads):
            self._generation = self._runtime.generation()
        self._pid = self._pid or seen.pid
        return None

    def _unless_reloaded(self, runtime_name: str) -> None:
        if self._generation is None or not isinstance(self._runtime, Reloads):
            return  # cannot tell: the restart is taken for the process's own
        now = self._runtime.generation()
        if now != self._generation:
            raise RuntimeUnavailable(f"{runtime_name} restarted every process while the gate waited (reloaded or "
                                     "restarted); the deploy is tried again")
