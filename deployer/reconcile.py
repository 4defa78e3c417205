"""The reconciler: fetch → load → desired → observe → plan → execute → health → record.

One pass handles one source. Each service is isolated (its own lock, its own
try/except), so one broken service never blocks the others, and every attempt
ends with a recorded outcome on every path. A failed new revision is replaced
by the last good one and is not re-applied until its spec changes.
"""

from __future__ import annotations

import hashlib
import logging
import mimetypes
import shlex
import threading
import time
import zlib
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

from deployer.build import EnvBuilder
from deployer.demo import DemoFailed, DemoLimits, DemoResult, check_info, run_demo
from deployer.errors import BuildError, DeployerError, Reason, SourceError, StalledError
from deployer.gitea import CommitState, StatusReporter, state_for
from deployer.health import HttpChecks, Probe
from deployer.hooks import HookRunner, hook_output
from deployer.loader import load_manifest_with_text
from deployer.metrics import Metrics
from deployer.model.actual import ActualService, ServiceState
from deployer.model.deployment import Deployment
from deployer.model.desired import DesiredService
from deployer.model.manifest import ManifestFile, ServiceManifest
from deployer.model.plan import Action, ActionKind, Plan, plan
from deployer.model.status import Outcome, OverrideKind, OverrideView, RevisionView, Trigger
from deployer.runtimes.base import BuildsImages, Runtime
from deployer.secrets import SecretStore
from deployer.source import GitSource
from deployer.store import Store

log = logging.getLogger(__name__)

MANIFEST = "service.yaml"
SERVICE_HOST = "127.0.0.1"
SNAPSHOT_EVERY = 60.0  # seconds between captures of a steady service's log tail and /info
CONFIRM_EVERY = 60.0  # an unchanged observation is written again only this often
PROBE_THREADS = 16  # health probes of steady services run side by side


@dataclass(frozen=True)
class SourceSpec:
    name: str
    url: str
    branch: str = "main"


@dataclass
class PassResult:
    """What one pass over one source did, for logs, the CLI and tests."""

    source: str
    sha: str | None = None
    plan: Plan | None = None
    error: str | None = None
    outcomes: dict[str, str] = field(default_factory=dict)


@dataclass
class _Resolved:
    """A source's manifest at one commit, resolved; cached per commit when it had no errors."""

    sha: str
    desired: dict[str, DesiredService] = field(default_factory=dict)
    revisions: dict[str, RevisionView] = field(default_factory=dict)
    errors: dict[str, DeployerError] = field(default_factory=dict)


@dataclass
class _Pass:
    """One pass's view: the resolution plus what was observed and overridden this time."""

    resolved: _Resolved
    trigger: Trigger
    revisions: dict[str, RevisionView] = field(default_factory=dict)
    actual: dict[str, ActualService] = field(default_factory=dict)
    overrides: dict[str, dict[OverrideKind, OverrideView]] = field(default_factory=dict)
    waiting: set[str] = field(default_factory=set)  # services whose runtime is unreachable this pass
    probes: dict[str, Probe] = field(default_factory=dict)  # health of steady services, probed together

    @property
    def explicit(self) -> bool:
        """An operator asked for this pass: a revision that failed before may be tried again."""
        return self.trigger in (Trigger.CLI, Trigger.ROLLBACK)


class _Step:
    """Collects a step's output so it is stored with the step."""

    def __init__(self) -> None:
        self.output = ""


class Reconciler:
    def __init__(
        self,
        *,
        store: Store,
        runtimes: Mapping[str, Runtime],
        builder: EnvBuilder,
        secrets: SecretStore,
        state_dir: Path,
        port_bounds: tuple[int, int],
        default_runtime: str = "supervisor",
        prune: bool = True,
        port_is_free: Callable[[int], bool],
        port_holder: Callable[[int], str | None] = lambda port: None,
        port_grace: float = 0.0,
        health_gate: Callable[..., float] | None = None,
        health_probe: Callable[..., Probe] | None = None,
        status: StatusReporter | None = None,
        metrics: Metrics | None = None,
        demo_limits: DemoLimits | None = None,
        hook_runner: HookRunner | None = None,
    ) -> None:
        self.store = store
        self.runtimes = dict(runtimes)
        self.builder = builder
        self.secrets = secrets
        self.state_dir = state_dir
        self.port_bounds = port_bounds
        self.default_runtime = default_runtime
        self.prune = prune
        self.port_is_free = port_is_free
        self.port_holder = port_holder
        self.port_grace = port_grace
        self.http = HttpChecks()
        self._wait_healthy = health_gate or self.http.wait_healthy  # injectable: unit tests need no HTTP server
        self._probe = health_probe or self.http.probe
        self.status = status or StatusReporter(None)
        self.metrics = metrics or Metrics()
        self.demo_limits = demo_limits or DemoLimits()
        self.hook_runner = hook_runner or HookRunner()
        self._sources: dict[str, GitSource] = {}
        self._service_locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()
        self._stalled: dict[str, str] = {}  # source or service -> failure already recorded
        self._resolved: dict[str, _Resolved] = {}  # source -> last clean resolution
        self._snapshot_at: dict[str, float] = {}  # service -> monotonic time of its last snapshot
        # service -> (what was last written, when): a steady service costs no database write per pass
        self._written: dict[str, tuple[tuple[object, ...], float]] = {}
        self.source_errors: dict[str, str] = {}
        # Services whose last deploy was cut short (daemon killed): gate them before trusting them.
        self._unverified = {view.name for view in store.views.services()
                            if view.last_attempt is not None and view.last_attempt.outcome == Outcome.INTERRUPTED}

    # ------------------------------------------------------------------ sources

    def add_source(self, spec: SourceSpec, *, origin: str = "config") -> None:
        """Follow a source. Its name and branch are checked (``ConfigError``) before anything is written."""
        git = GitSource(spec.name, spec.url, spec.branch, self.state_dir)
        self.store.sources.upsert(spec.name, spec.url, spec.branch, origin)
        with self._locks_guard:
            self._sources.setdefault(spec.name, git)

    def retire_source(self, name: str, *, allow_empty: bool) -> list[str]:
        """A source left the config: prune its services only when an empty desired set is allowed.

        Removing a source by mistake (a typo in deployer.toml) must not take its
        services down, so by default they keep running and the page says why.
        """
        owned = sorted(self.store.services.inventory(name))
        if not owned:
            return []
        if not (allow_empty and self.prune):
            self.source_errors[name] = (
                f"removed from deployer.toml but still owns {', '.join(owned)}; they keep running. "
                "Set [reconcile] allow_empty = true to remove them, or add the source back")
            return []
        for service in owned:
            with self._lock(service):
                self._remove(service)
        return owned

    def source_names(self) -> list[str]:
        with self._locks_guard:
            return sorted(self._sources)

    def source_specs(self) -> list[SourceSpec]:
        with self._locks_guard:
            return [SourceSpec(name, git.url, git.branch) for name, git in sorted(self._sources.items())]

    def has_source(self, name: str) -> bool:
        with self._locks_guard:
            return name in self._sources

    def report(self, source: str, sha: str, service: str, state: CommitState, description: str) -> None:
        """A commit status for sources that are Gitea repositories (named ``owner/repo``)."""
        if "/" in source:
            self.status.report(source, sha, service, state, description)

    def _git(self, name: str) -> GitSource:
        with self._locks_guard:
            return self._sources[name]

    # ------------------------------------------------------------------ one pass

    def reconcile_source(self, name: str, *, trigger: Trigger, fetch: bool = True) -> PassResult:
        """Bring every service of one source to the state its branch head describes."""
        with self.metrics.pass_seconds.labels(name).time():
            return self._reconcile_source(name, trigger=trigger, fetch=fetch)

    def _reconcile_source(self, name: str, *, trigger: Trigger, fetch: bool) -> PassResult:
        result = PassResult(source=name)
        source = self._git(name)
        try:
            result.sha = self._head(source, fetch)
        except SourceError as exc:
            result.error = self.source_errors[name] = str(exc)
            log.warning("source %s: %s; retrying at the next poll", name, exc)
            return result
        self.source_errors.pop(name, None)
        self.store.sources.set_head(name, result.sha)
        resolved = self._resolution(source, result.sha, trigger)
        if resolved is None:
            result.error = f"{MANIFEST} at {result.sha[:7]} is invalid"
            return result
        for service, error in sorted(resolved.errors.items()):
            with self._lock(service):
                self._record_resolution_error(service, error, trigger)
            result.outcomes[service] = "stalled"
        current = _Pass(resolved=resolved, trigger=trigger, revisions=dict(resolved.revisions))
        result.plan = self._plan(name, current)
        current.probes = self._probe_steady(result.plan, current)
        for action in result.plan.actions:
            result.outcomes[action.service] = self._execute_isolated(action, current)
        return result

    def preview(self, *, fetch: bool = False) -> list[tuple[str, Action]]:
        """What a pass would do now for every source (after a fetch, if asked). Changes no service."""
        lines: list[tuple[str, Action]] = []
        for name in self.source_names():
            source = self._git(name)
            try:
                sha = self._head(source, fetch)
                cached = self._resolved.get(name)
                resolved = cached if cached is not None and cached.sha == sha else self._dry_resolve(source, sha)
            except DeployerError as exc:
                lines.append((name, Action("*", ActionKind.NOOP, f"cannot plan this source: {exc}")))
                continue
            lines.extend((name, Action(service, ActionKind.NOOP, f"cannot deploy: {error}"))
                         for service, error in sorted(resolved.errors.items()))
            planned = self._plan(name, _Pass(resolved=resolved, trigger=Trigger.CLI))
            lines.extend((name, action) for action in planned.actions)
        return lines

    def _dry_resolve(self, source: GitSource, sha: str) -> _Resolved:
        manifest, _, checkout = self._load(source, sha)
        resolved = _Resolved(sha=sha)
        for entry in manifest.services:
            try:
                resolved.desired[entry.name] = self._resolve(source, sha, entry, checkout, dry=True)
            except DeployerError as exc:
                resolved.errors[entry.name] = exc
        return resolved

    def _head(self, source: GitSource, fetch: bool) -> str:
        if not fetch:
            try:
                return source.head()
            except SourceError:
                pass  # never fetched yet: fall through and fetch
        source.fetch()
        return source.head()

    def _plan(self, name: str, current: _Pass) -> Plan:
        inventory = self.store.services.inventory(name) - set(current.resolved.errors)
        current.overrides = self.store.overrides.active()
        desired = self._with_pins(dict(current.resolved.desired), inventory, current)
        current.actual, down = self._observe_checked(set(desired) | inventory)
        waiting = self._on_down_runtimes(desired, inventory, down) if down else {}
        current.waiting = set(waiting)
        planned = plan({key: value for key, value in desired.items() if key not in waiting}, current.actual,
                       inventory - set(waiting), prune=self.prune)
        held = [Action(service, ActionKind.NOOP, reason, desired.get(service)) for service, reason in waiting.items()]
        return Plan(tuple(self._suspended(action, current) for action in [*planned.actions, *held]))

    def _observe_checked(self, names: set[str]) -> tuple[dict[str, ActualService], dict[str, str]]:
        """Check each runtime (which restarts an embedded supervisord), then one listing each.

        Returns what was seen and, per unreachable runtime, why: its services are
        held, not planned as absent (that would "create" what is merely unseen).
        """
        actual: dict[str, ActualService] = {}
        down: dict[str, str] = {}
        for key, runtime in self.runtimes.items():
            try:
                runtime.check()
                seen = runtime.observe()
            except DeployerError as exc:
                down[key] = str(exc)
                continue
            actual.update({service: value for service, value in seen.items() if service in names})
        return actual, down

    def _on_down_runtimes(self, desired: Mapping[str, DesiredService], inventory: set[str],
                          down: Mapping[str, str]) -> dict[str, str]:
        runtime_of = {view.name: view.runtime for view in self.store.views.services()}
        runtime_of.update({service: want.runtime for service, want in desired.items()})
        return {service: f"runtime {runtime_of[service]} unreachable, waiting: {down[runtime_of[service]]}"
                for service in sorted(set(desired) | inventory) if runtime_of.get(service) in down}

    def _with_pins(self, desired: dict[str, DesiredService], inventory: set[str],
                   current: _Pass) -> dict[str, DesiredService]:
        """A pinned service wants its pinned revision, whatever the branch head says."""
        for service in sorted(set(desired) | inventory):
            pin = current.overrides.get(service, {}).get(OverrideKind.PINNED)
            revision = self.store.history.get_revision(pin.revision) if pin and pin.revision else None
            if revision is not None:
                desired[service] = DesiredService.model_validate(revision.spec)
                current.revisions[service] = revision
        return desired

    def _suspended(self, action: Action, current: _Pass) -> Action:
        suspended = current.overrides.get(action.service, {}).get(OverrideKind.SUSPENDED)
        if suspended is None or not action.changes:
            return action
        why = f": {suspended.why}" if suspended.why else ""
        return Action(action.service, ActionKind.NOOP,
                      f"suspended by {suspended.who}{why} (would {action.kind.value}: {action.reason})",
                      action.desired)

    def _observe(self, names: set[str]) -> dict[str, ActualService]:
        """One listing per runtime in use; unreachable runtimes simply contribute nothing."""
        actual: dict[str, ActualService] = {}
        for runtime in self.runtimes.values():
            try:
                seen = runtime.observe()
            except DeployerError as exc:
                log.warning("runtime %s: %s", runtime.name, exc)
                continue
            actual.update({key: value for key, value in seen.items() if key in names})
        return actual

    # ------------------------------------------------------------------ desired state

    def _resolution(self, source: GitSource, sha: str, trigger: Trigger) -> _Resolved | None:
        cached = self._resolved.get(source.name)
        if cached is not None and cached.sha == sha:
            return cached
        resolved = self._resolve_source(source, sha, trigger)
        if resolved is not None and not resolved.errors:
            self._resolved[source.name] = resolved
        return resolved

    def _resolve_source(self, source: GitSource, sha: str, trigger: Trigger) -> _Resolved | None:
        try:
            manifest, text, checkout = self._load(source, sha)
        except StalledError as exc:
            self._record_stalled(source.name, sha, exc, trigger)
            return None
        except SourceError as exc:
            self.source_errors[source.name] = str(exc)
            return None
        self._stalled.pop(source.name, None)
        resolved = _Resolved(sha=sha)
        info = source.commit_info(sha)
        for entry in manifest.services:
            try:
                desired = self._resolve(source, sha, entry, checkout)
            except DeployerError as exc:
                resolved.errors[entry.name] = exc
                continue
            revision = self.store.history.add_revision(desired, author=info.author, message=info.message,
                                               manifest_text=text)
            self.store.services.set_desired(desired.name, revision.id)
            resolved.desired[desired.name] = desired
            resolved.revisions[desired.name] = revision
        return resolved

    def _load(self, source: GitSource, sha: str) -> tuple[ManifestFile, str, Path]:
        checkout = source.checkout(sha)
        if not (checkout / MANIFEST).exists() and not (checkout / MANIFEST).is_symlink():
            raise StalledError(f"{MANIFEST}: not found at {sha[:7]}", reason=Reason.MANIFEST_INVALID)
        manifest, text = load_manifest_with_text(checkout / MANIFEST, repo_root=checkout,
                                                 port_range=self.port_bounds)
        return manifest, text, checkout

    def _resolve(self, source: GitSource, sha: str, entry: ServiceManifest, checkout: Path, *,
                 dry: bool = False) -> DesiredService:
        owner = self.store.services.source_of(entry.name)
        if owner is not None and owner != source.name:
            raise StalledError(f"{entry.name}: service name already belongs to source {owner!r}; "
                               "names are unique across sources")
        runtime = entry.runtime or self.default_runtime
        if runtime not in self.runtimes:
            raise StalledError(f"{entry.name}: runtime {runtime!r} is not enabled on this host "
                               f"(enabled: {', '.join(sorted(self.runtimes))})")
        if runtime == "supervisor" and not entry.command:
            raise StalledError(f"{entry.name}: 'command' is required for runtime supervisor",
                               reason=Reason.MANIFEST_INVALID)
        if dry:
            port = self.store.ports.of(entry.name) or (entry.port if entry.port != "auto" else 0)
        else:
            self.store.services.upsert(entry.name, source.name, runtime)
            port = self._port(entry)
        requirements, requirements_hash = _requirements(checkout / entry.path, entry.requirements)
        return DesiredService(
            name=entry.name, source=source.name, sha=sha, tree=source.tree_id(sha, entry.path),
            path=entry.path, runtime=runtime, command=entry.command,
            argv=_argv(entry.command, port), requirements=requirements, requirements_hash=requirements_hash,
            port=port, env=dict(entry.env), secrets=tuple(entry.secrets), health=entry.health, info=entry.info,
            group=entry.group, demo=tuple(entry.demo), gateway=entry.gateway, resources=entry.resources,
            replicas=entry.replicas, hooks=entry.hooks, docker=entry.docker,
        )

    def _port(self, entry: ServiceManifest) -> int:
        if entry.port == "auto":
            return self.store.ports.allocate(entry.name, self.port_bounds, self.port_is_free, grace=self.port_grace)
        held = self.store.ports.of(entry.name)
        if held != entry.port and not self.port_is_free(entry.port):
            who = self.port_holder(entry.port) or "a process outside deployer"
            raise StalledError(f"{entry.name}: port {entry.port} is already in use by {who}, outside deployer; "
                               "free it or choose another port", reason=Reason.PORT_CONFLICT)
        self.store.ports.claim(entry.name, entry.port)
        return entry.port

    def _record_stalled(self, source: str, sha: str, exc: DeployerError, trigger: Trigger) -> None:
        """A broken manifest is recorded once per commit against every service of the source."""
        self.source_errors[source] = str(exc)
        if self._stalled.get(source) == sha:
            return
        self._stalled[source] = sha
        log.warning("source %s at %s: %s; the running revisions keep serving", source, sha[:7], exc)
        for service in sorted(self.store.services.inventory(source)):
            attempt = self.store.history.start_attempt(service, None, trigger)
            self.store.history.finish_attempt(attempt, Outcome.FAILED, exc.reason.value,
                                      f"{exc} (commit {sha[:7]}); the previous revision keeps serving")
            self.report(source, sha, service, CommitState.FAILURE, f"{exc.reason.value}: {exc}")

    # ------------------------------------------------------------------ execute

    def _execute_isolated(self, action: Action, current: _Pass) -> str:
        with self._lock(action.service):
            try:
                return self._execute(action, current)
            except Exception:  # one service's bug must not stop the others
                log.exception("%s: unexpected error while reconciling", action.service)
                return "error"

    def _execute(self, action: Action, current: _Pass) -> str:
        if action.service in current.waiting:
            self._written.pop(action.service, None)
            self.store.observations.record(action.service, ServiceState.UNKNOWN.value, False, action.reason)
            return "waiting"
        if action.kind is ActionKind.REMOVE:
            return self._remove(action.service)
        if action.kind is ActionKind.NOOP and action.desired is not None and action.service in self._unverified:
            self._unverified.discard(action.service)  # applied before a crash, never health-gated
            return self.deploy(action.desired, current.revisions[action.service], Trigger.STARTUP,
                               verify_only=True).value
        if action.kind is ActionKind.NOOP or action.desired is None:
            note = action.reason if action.reason.startswith("suspended") else ""
            self._observe_health(action.service, action.desired, current.actual.get(action.service), note=note,
                                 probed=current.probes.get(action.service))
            return "suspended" if note else "noop"
        return self._apply(action.desired, action, current)

    def _apply(self, desired: DesiredService, action: Action, current: _Pass) -> str:
        revision = current.revisions[desired.name]
        if not current.explicit and self.store.history.failed_revision(desired.name, desired.spec_hash):
            note = f"revision {revision.id} failed before; waiting for a new commit"
            self._observe_health(desired.name, None, note=note)
            return "held"
        try:
            self.secrets.resolve(desired.secrets, service=desired.name)
        except DeployerError as exc:  # waiting for an operator, not a bad revision
            self._record_resolution_error(desired.name, exc, current.trigger)
            return "waiting"
        trigger = current.trigger
        running = self.store.views.service(desired.name)
        if running is not None and running.running_revision == revision.id:
            trigger = Trigger.DRIFT  # git did not change: the world did
        moved_from = current.actual.get(desired.name)
        if moved_from is not None and moved_from.runtime != desired.runtime and moved_from.runtime in self.runtimes:
            # Switching runtime: the old instance holds the port, so it goes first.
            log.info("%s: moving from %s to %s", desired.name, moved_from.runtime, desired.runtime)
            self.runtimes[moved_from.runtime].remove(desired.name)
        log.info("%s: %s%s", desired.name, action.describe(), " (drift)" if trigger is Trigger.DRIFT else "",
                 extra={"service": desired.name, "revision": revision.id})
        return self.deploy(desired, revision, trigger).value

    def _record_resolution_error(self, service: str, error: DeployerError, trigger: Trigger) -> None:
        key = f"{service}:{error}"
        if self._stalled.get(service) == key:
            return
        self._stalled[service] = key
        attempt = self.store.history.start_attempt(service, None, trigger)
        self.store.history.finish_attempt(attempt, Outcome.FAILED, error.reason.value,
                                  f"{error}; the previous revision keeps serving")

    def _remove(self, name: str) -> str:
        runtime = self._runtime_of(name)
        attempt = self.store.history.start_attempt(name, None, Trigger.SCHEDULE)
        try:
            with self._step(attempt, "remove"):
                if runtime is not None:
                    runtime.remove(name)
        except DeployerError as exc:
            self.store.history.finish_attempt(attempt, Outcome.FAILED, exc.reason.value, f"could not remove: {exc}")
            return "failed"
        self.store.history.finish_attempt(attempt, Outcome.SUCCEEDED, Reason.PRUNED.value,
                                  "removed: no longer in any manifest")
        self.store.services.mark_removed(name)
        self.store.ports.release(name)
        self.store.observations.record(name, ServiceState.ABSENT.value, False, "removed: no longer in the manifest")
        self._written.pop(name, None)
        self.metrics.forget(name)
        log.info("%s: removed (no longer in any manifest)", name)
        return "removed"

    def _runtime_of(self, name: str) -> Runtime | None:
        for runtime in self.runtimes.values():
            if name in runtime.observe():
                return runtime
        return None

    # ------------------------------------------------------------------ one deploy

    def deploy(self, desired: DesiredService, revision: RevisionView, trigger: Trigger, *,
               verify_only: bool = False) -> Outcome:
        """Build, apply and health-gate one revision; roll back on failure. Always records.

        ``verify_only`` runs just the health gate: for a revision that was already
        applied when a deploy was interrupted, so it is not trusted unchecked.
        """
        attempt = self.store.history.start_attempt(desired.name, revision.id, trigger)
        started = time.monotonic()
        outcome, reason, message, rolled_back_to = Outcome.FAILED, Reason.INTERNAL_ERROR.value, "", None
        self.report(desired.source, desired.sha, desired.name, CommitState.PENDING, f"deploying {desired.sha[:7]}")
        try:
            if verify_only:
                self._gate(desired, revision.id, attempt, prefix="")
            else:
                self._roll_out(desired, revision.id, attempt, prefix="")
            self.store.services.set_running(desired.name, revision.id)
            outcome, reason = Outcome.SUCCEEDED, _success_reason(trigger)
            message = f"revision {revision.id} ({desired.sha[:7]}) is healthy on port {desired.port}"
            if verify_only:
                message += " (verified after an interrupted deploy)"
        except DeployerError as exc:
            reason, message = exc.reason.value, str(exc)
            rolled_back_to = self._roll_back(desired.name, revision.id, attempt)
            if rolled_back_to is not None:
                outcome = Outcome.ROLLED_BACK
                message += f"; rolled back to revision {rolled_back_to}"
            else:
                message += self._stop_failed(desired)
        except Exception as exc:
            log.exception("%s: deploy crashed", desired.name)
            message = f"internal error: {type(exc).__name__}"
        finally:
            self.store.history.finish_attempt(attempt, outcome, reason, message, rolled_back_to=rolled_back_to)
            self._count(desired.name, outcome, trigger, time.monotonic() - started)
            self.report(desired.source, desired.sha, desired.name, state_for(outcome, reason), f"{reason}: {message}")
            self._observe_health(desired.name, desired if outcome is Outcome.SUCCEEDED else None, fresh=True)
        log.info("%s: %s (%s) %s", desired.name, outcome.value, reason, message,
                 extra={"service": desired.name, "revision": revision.id, "attempt": attempt})
        return outcome

    def _stop_failed(self, desired: DesiredService) -> str:
        """No good revision to go back to: stop the failed one rather than let it crash-loop."""
        try:
            self.runtimes[desired.runtime].stop(desired.name)
        except DeployerError as exc:
            return f"; could not stop it either: {exc}"
        return "; no earlier good revision, so it was stopped"

    def _count(self, service: str, outcome: Outcome, trigger: Trigger, seconds: float) -> None:
        self.metrics.attempts.labels(service, outcome.value).inc()
        self.metrics.attempt_seconds.labels(service).observe(seconds)
        if outcome is Outcome.ROLLED_BACK:
            self.metrics.rollbacks.labels(service).inc()
        if trigger is Trigger.DRIFT and outcome is Outcome.SUCCEEDED:
            self.metrics.drift.labels(service).inc()

    def _roll_out(self, desired: DesiredService, revision: int, attempt: int, *, prefix: str) -> None:
        runtime = self.runtimes[desired.runtime]
        deployment = self._prepare(desired, revision, attempt, prefix)
        try:
            self._hooks(deployment, attempt, prefix, "pre-deploy", desired.hooks.pre_deploy)
            with self._step(attempt, f"{prefix}apply"):
                runtime.apply(deployment)
            self._gate(desired, revision, attempt, prefix=prefix)
            self._hooks(deployment, attempt, prefix, "post-deploy", desired.hooks.post_deploy)
        except DeployerError:
            if not prefix:  # the operator's on-failure hook runs once, for the revision that failed
                self._global_hook(deployment, attempt, "on-failure", best_effort=True)
            raise

    def _hooks(self, deployment: Deployment, attempt: int, prefix: str, event: str, own: str | None) -> None:
        """The operator's global hook for ``event``, then the service's own, each a recorded step."""
        self._global_hook(deployment, attempt, event, step=f"{prefix}{event}")
        if own is None:
            return
        with self._step(attempt, f"{prefix}{event.replace('-', '_')}") as step:
            try:
                step.output = self.hook_runner.service_hook(deployment, own, event).output
            except DeployerError as exc:
                step.output = f"{exc}\n{hook_output(exc)}".strip()
                raise

    def _global_hook(self, deployment: Deployment, attempt: int, event: str, *, step: str = "",
                     best_effort: bool = False) -> None:
        if self.hook_runner.global_dir is None or not (self.hook_runner.global_dir / event).is_file():
            return
        with self._step(attempt, step or f"global-{event}") as record:
            try:
                ran = self.hook_runner.global_hook(deployment, event)
                record.output = ran.output if ran else ""
            except DeployerError as exc:
                record.output = f"{exc}\n{hook_output(exc)}".strip()
                if not best_effort:
                    raise

    def _gate(self, desired: DesiredService, revision: int, attempt: int, *, prefix: str) -> None:
        """Healthy first, then ready: /info matches the manifest and every demo input is answered as expected."""
        runtime = self.runtimes[desired.runtime]
        with self._step(attempt, f"{prefix}health") as step:
            try:
                took = self._wait_healthy(
                    f"http://{SERVICE_HOST}:{desired.port}{desired.health.path}",
                    timeout=desired.health.timeout, interval=desired.health.interval,
                    failed=lambda: self._failed_detail(runtime, desired.name),
                )
            except DeployerError:
                step.output = runtime.logs(desired.name, 2000)
                raise
            step.output = f"healthy after {took:.2f}s"
        if desired.info.expect:
            with self._step(attempt, f"{prefix}info") as step:
                check_info(f"http://{SERVICE_HOST}:{desired.port}{desired.info.path}", desired.info.expect)
                step.output = "matches " + ", ".join(sorted(desired.info.expect))
        if desired.demo:
            with self._step(attempt, f"{prefix}demo") as step:
                results = self.run_demos(desired, revision, attempt)
                step.output = "\n".join(result.summary for result in results)
                failed = [result.summary for result in results if not result.ok]
                if failed:
                    raise DemoFailed("demo failed: " + "; ".join(failed))

    def run_demos(self, desired: DesiredService, revision: int | None, attempt: int | None) -> list[DemoResult]:
        """Send every demo input to the running service and record each answer."""
        workdir = _inside(self._git(desired.source).checkout(desired.sha), desired.path)
        url = f"http://{SERVICE_HOST}:{desired.port}/predict"
        results = [run_demo(url, spec, workdir, self.demo_limits) for spec in desired.demo]
        for result in results:
            self.store.demos.record(
                desired.name, revision, attempt, name=result.name, ok=result.ok, status=result.status,
                latency_ms=result.latency_ms, content_type=result.content_type, text=result.text,
                body_file=self._save_body(desired.name, revision, result), truncated=result.truncated,
                problems="; ".join(result.problems))
        return results

    def logs(self, name: str, max_bytes: int) -> str:
        """The service's recent output, asked of its runtime now (an operator's explicit request)."""
        view = self.store.views.service(name)
        if view is None or view.runtime not in self.runtimes:
            raise StalledError(f"no service named {name!r} on a runtime of this host")
        return self.secrets.mask(self.runtimes[view.runtime].logs(name, max_bytes))

    def demo_now(self, name: str) -> tuple[int, list[DemoResult]]:
        """``deployer demo``: run the demo inputs against the running revision now, and record them."""
        view = self.store.views.service(name)
        revision = self.store.history.get_revision(view.running_revision) if view and view.running_revision else None
        if revision is None:
            raise StalledError(f"{name}: nothing is running, no demo to run")
        desired = DesiredService.model_validate(revision.spec)
        if not desired.demo:
            raise StalledError(f"{name}: its manifest has no demo inputs")
        with self._lock(name):
            return revision.id, self.run_demos(desired, revision.id, None)

    def _save_body(self, service: str, revision: int | None, result: DemoResult) -> str | None:
        """Binary answers are files under the state dir, never database rows."""
        if result.body is None:
            return None
        extension = mimetypes.guess_extension(result.content_type) or ".bin"
        relative = Path("demo") / service / str(revision or "adhoc") / f"{result.name}{extension}"
        target = self.state_dir / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(result.body)
        return str(relative)

    def _prepare(self, desired: DesiredService, revision: int, attempt: int, prefix: str) -> Deployment:
        """Checkout, then build: a Python environment (processes) or an image (containers)."""
        with self._step(attempt, f"{prefix}checkout") as step:
            checkout = self._git(desired.source).checkout(desired.sha)
            workdir = _inside(checkout, desired.path)
            step.output = f"{desired.sha[:7]} at {workdir}"
        secret_env = self.secrets.resolve(desired.secrets, service=desired.name)
        environment = {**desired.env, "PORT": str(desired.port), "HOST": SERVICE_HOST}
        deployment = Deployment(desired=desired, revision=revision, workdir=workdir, argv=desired.argv,
                                environment=environment, secret_env=secret_env)
        runtime = self.runtimes[desired.runtime]
        with self._step(attempt, f"{prefix}build") as step:
            try:
                if isinstance(runtime, BuildsImages):
                    image = runtime.build(deployment)
                    step.output = f"reused image {image.image}" if image.reused else image.output_tail
                    return deployment
                built = self.builder.ensure(workdir, desired.requirements)
            except BuildError as exc:
                step.output = f"{exc}\n{exc.output}".strip()
                raise
            step.output = f"reused environment {built.key[:12]}" if built.reused else built.output_tail
        return replace(deployment, env_dir=built.env_dir)

    def _roll_back(self, name: str, failed_revision: int, attempt: int) -> int | None:
        """Put the last good revision back; return its id, or None when there is none or it fails too."""
        good = self.store.history.last_good_revision(name, exclude=failed_revision)
        if good is None:
            return None
        desired = DesiredService.model_validate(good.spec)
        try:
            self._roll_out(desired, good.id, attempt, prefix="rollback-")
        except DeployerError as exc:
            log.error("%s: rollback to revision %s failed too: %s", name, good.id, exc)
            return None
        self.store.services.set_running(name, good.id)
        return good.id

    def _failed_detail(self, runtime: Runtime, name: str) -> str | None:
        seen = runtime.observe().get(name)
        if seen is not None and seen.state is ServiceState.FAILED:
            return seen.detail or "the runtime reports the process failed"
        return None

    def _probe_steady(self, planned: Plan, current: _Pass) -> dict[str, Probe]:
        """Health of every running service the plan leaves alone, probed side by side."""
        urls = {}
        for action in planned.actions:
            seen = current.actual.get(action.service)
            if action.kind is ActionKind.NOOP and action.desired is not None and seen is not None \
                    and seen.state is ServiceState.RUNNING:
                urls[action.service] = _health_url(action.desired)
        if len(urls) < 2:
            return {}
        with ThreadPoolExecutor(max_workers=min(PROBE_THREADS, len(urls))) as pool:
            results = pool.map(lambda url: self._probe(url, timeout=2.0), urls.values())
            return dict(zip(urls, results, strict=True))

    def _observe_health(self, name: str, desired: DesiredService | None,
                        seen: ActualService | None = None, *, note: str = "", fresh: bool = False,
                        probed: Probe | None = None) -> None:
        """Record state and a quick health probe so the page never calls a runtime.

        ``seen`` comes from the pass's single listing; without it one listing is made.
        An unchanged observation is written at most every CONFIRM_EVERY seconds.
        """
        if seen is None:
            seen = self._observe({name}).get(name)
        state = seen.state if seen is not None else ServiceState.ABSENT
        port = desired.port if desired is not None else self.store.ports.of(name)
        healthy = False
        detail = seen.detail if seen is not None else ""
        if state is ServiceState.RUNNING and port is not None:
            result = probed or self._probe(_health_url(desired) if desired else
                                           f"http://{SERVICE_HOST}:{port}/health", timeout=2.0)
            healthy, detail = result.ok, result.detail
        running = seen.revision if seen is not None and state is ServiceState.RUNNING else None
        self._write_observation(name, (state.value, healthy, f"{note}; {detail}" if note else detail, running),
                                fresh)
        self.metrics.service_state(name, state is ServiceState.RUNNING, healthy)
        if seen is not None:
            self._snapshot(name, seen.runtime, port, desired, force=fresh)

    def _write_observation(self, name: str, observed: tuple[object, ...], fresh: bool) -> None:
        now = time.monotonic()
        last = self._written.get(name)
        if not fresh and last is not None and last[0] == observed and now - last[1] < CONFIRM_EVERY:
            return
        state, healthy, detail, running = observed
        self.store.observations.record(name, str(state), bool(healthy), str(detail))
        if isinstance(running, int) and (last is None or last[0][3] != running):
            self.store.services.set_running(name, running)
        self._written[name] = (observed, now)

    def _snapshot(self, name: str, runtime_name: str, port: int | None, desired: DesiredService | None, *,
                  force: bool) -> None:
        """The service's log tail and /info for the pages: after each deploy, else once a minute."""
        now = time.monotonic()
        # A steady service first seen gets a due time spread over the minute by its name,
        # so a daemon with hundreds of services does not capture them all in one pass.
        last = self._snapshot_at.setdefault(name, now - zlib.crc32(name.encode()) % SNAPSHOT_EVERY)
        if not force and now - last < SNAPSHOT_EVERY:
            return
        self._snapshot_at[name] = now
        runtime = self.runtimes.get(runtime_name)
        try:
            logs = runtime.logs(name, 4000) if runtime is not None else ""
        except DeployerError as exc:
            logs = f"(logs unavailable: {exc})"
        info, error = None, "not running"
        if port is not None:
            path = desired.info.path if desired is not None else "/info"
            info, error = self.http.fetch_info(f"http://{SERVICE_HOST}:{port}{path}")
        self.store.observations.record_snapshot(name, logs_tail=logs, info=info, info_error=error)

    # ------------------------------------------------------------------ helpers

    @contextmanager
    def _step(self, attempt: int, name: str) -> Iterator[_Step]:
        step = _Step()
        started = time.monotonic()
        try:
            yield step
        except BaseException as exc:
            output = step.output or str(exc)
            self.store.history.add_step(attempt, name, time.monotonic() - started, False, output)
            raise
        self.store.history.add_step(attempt, name, time.monotonic() - started, True, step.output)

    @contextmanager
    def _lock(self, service: str) -> Iterator[None]:
        with self._locks_guard:
            lock = self._service_locks.setdefault(service, threading.Lock())
        with lock:
            yield


def _health_url(desired: DesiredService) -> str:
    return f"http://{SERVICE_HOST}:{desired.port}{desired.health.path}"


def _success_reason(trigger: Trigger) -> str:
    return (Reason.DRIFT_CORRECTED if trigger is Trigger.DRIFT else Reason.RECONCILIATION_SUCCEEDED).value


def _argv(command: str | None, port: int) -> tuple[str, ...]:
    """Split like a shell (no shell runs it) and substitute ``${PORT}`` and ``${HOST}``."""
    if not command:
        return ()
    return tuple(
        part.replace("${PORT}", str(port)).replace("${HOST}", SERVICE_HOST) for part in shlex.split(command)
    )


def _requirements(service_dir: Path, named: str | None) -> tuple[str | None, str | None]:
    """Which dependency file the service uses, and a hash of its content (for the spec)."""
    candidates = [named] if named else ["requirements.txt", "pyproject.toml"]
    for candidate in candidates:
        if candidate is None:
            continue
        path = _inside(service_dir, candidate)
        if path.is_file():
            return candidate, hashlib.sha256(path.read_bytes()).hexdigest()
        if named:
            raise StalledError(f"requirements file {named!r} not found in {service_dir.name}",
                               reason=Reason.MANIFEST_INVALID)
    return None, None


def _inside(root: Path, relative: str) -> Path:
    """``root / relative``, refusing anything (a symlink included) that leads outside ``root``."""
    target = (root / relative).resolve()
    if not target.is_relative_to(root.resolve()):
        raise StalledError(f"{relative!r} leads outside the repository", reason=Reason.MANIFEST_INVALID)
    return target
