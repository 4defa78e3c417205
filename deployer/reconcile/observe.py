"""Observation: one listing per runtime per pass, health probes on their own cadence, snapshots on demand.

A pass lists each runtime once (``list``) and hands the listing down. Health
probes of steady services do not ride on passes: ``probe_due`` runs every second
on its own job, probing each running service once per ``probe_interval`` (spread
by name, at most ``budget`` a tick). Log tails and ``/info`` are read when a page
or the API asks (``snapshot``, cached briefly) and right after every attempt. A service whose
process its runtime keeps restarting reads ``failed`` (``ServiceCrashed``, recorded by the
Recorder) until it answers with no restart for a while; an in-place deploy reads ``starting``.
A swarm service running fewer tasks than asked reads ``degraded``, with swarm's reason
(``ServiceDegraded``, recorded as drift), until all its tasks run again; it is probed on the
address of a node running one of its tasks.
"""

from __future__ import annotations

import logging
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace

from deployer.errors import DeployerError
from deployer.health import HttpChecks, Probe
from deployer.model.actual import ActualService, ServiceState, Task
from deployer.model.cause import root_cause
from deployer.model.deployment import split_instance
from deployer.model.desired import DesiredService
from deployer.model.events import ServiceCrashed, ServiceDegraded, ServiceObserved, ServiceRemoved
from deployer.model.status import SnapshotView
from deployer.reconcile.crashes import CrashLoops
from deployer.reconcile.events import EventBus
from deployer.runtimes.base import Runtime, SpreadsOverNodes
from deployer.store import Store

log = logging.getLogger(__name__)

SERVICE_HOST = "127.0.0.1"
CONFIRM_EVERY = 60.0  # an unchanged observation is written again only this often
SNAPSHOT_MAX_AGE = 10.0  # a page asking twice within this gets the same snapshot
PROBE_THREADS = 8
# What a crash-looping process reads as between its deaths (supervisord restarts it; docker "restarting").
_CRASH_STATES = (ServiceState.RUNNING, ServiceState.STARTING, ServiceState.FAILED)
_SERVING_STATES = (ServiceState.RUNNING.value, ServiceState.DEGRADED.value)


@dataclass(frozen=True)
class Listing:
    """What every reachable runtime runs, and why the others could not be listed."""

    actual: dict[str, ActualService] = field(default_factory=dict)
    down: dict[str, str] = field(default_factory=dict)


@dataclass
class _Watched:
    url: str
    due: float
    probe: Probe | None = None
    runtime: str = ""  # where the process runs, and its instance name: asked when a probe fails
    instance: str = ""


class Observer:
    def __init__(self, store: Store, runtimes: Mapping[str, Runtime], http: HttpChecks, events: EventBus, *,
                 probe: Callable[..., Probe] | None = None, probe_interval: float = 10.0,
                 budget: int = 50) -> None:
        self._store = store
        self._runtimes = dict(runtimes)
        self._http = http
        self._events = events
        self._probe = probe or http.probe  # injectable: unit tests need no HTTP server
        self._interval = probe_interval
        self._budget = budget
        self._guard = threading.Lock()
        self._watched: dict[str, _Watched] = {}
        self._written: dict[str, tuple[tuple[object, ...], float]] = {}  # name -> (what, when) last written
        self._pids: dict[str, int | None] = {}  # name -> the process last seen: a new one is probed at once
        self._crashes = CrashLoops()  # processes that died after their gate
        self._degraded: dict[str, str] = {}  # swarm services running fewer tasks than asked -> why
        self._placed: dict[str, str] = {}  # swarm services -> their tasks as the last listing said (node, state)
        self._tasks: dict[str, tuple[Task, ...]] = {}  # the same, as data, for the API

    # -- listings ------------------------------------------------------------

    def list(self) -> Listing:
        """Check each runtime (which restarts an embedded supervisord), then one listing each."""
        listing = Listing()
        for key, runtime in self._runtimes.items():
            try:
                runtime.check()
                listing.actual.update(runtime.observe())
            except DeployerError as exc:
                listing.down[key] = str(exc)
        return listing

    def runtime_holding(self, name: str, listing: Listing | None = None) -> Runtime | None:
        seen = (listing or self.list()).actual.get(name)
        return self._runtimes.get(seen.runtime) if seen is not None else None

    # -- recording -----------------------------------------------------------

    def record(self, name: str, desired: DesiredService | None, seen: ActualService | None, *,
               note: str = "", fresh: bool = False, port: int | None = None, revision: int | None = None,
               instance: str = "") -> None:
        """State from the listing, health from the watcher (probed now when fresh or never probed).

        ``port`` is where the process listens when it is not the sticky port (its slot behind the
        gateway): the probe asks the process itself, not the gateway in front of it.
        """
        state = seen.state if seen is not None else ServiceState.ABSENT
        running = state is ServiceState.RUNNING
        if fresh or seen is None or seen.state not in _CRASH_STATES:
            self._crashes.forget(name)  # after an attempt what it finds is the truth; stopped or gone: no loop
        crashed = self._crashes.why(name) is not None
        if (running or crashed) and desired is None:
            desired = self.running_desired(name)  # probe what runs, on its own health path
        probe: Probe | None = None
        restarted = seen is not None and self._pids.get(name, seen.pid) != seen.pid
        if (running or crashed) and desired is not None and seen is not None:
            # A process that is not the one probed last (restarted: by its runtime, or a new supervisord)
            # has not answered yet as far as anyone knows: its health is asked now, not taken from before.
            host = seen.addresses[0] if seen.addresses else SERVICE_HOST
            probe = self._watch(name, health_url(desired, port, host), fresh=fresh or restarted or crashed,
                                where=(seen.runtime, instance or name))
        if restarted and not fresh and seen is not None and seen.state in _CRASH_STATES:
            self._crashes.restarted(name, f"pid {self._pids.get(name)}, now {seen.pid or 'none'}")
        if seen is not None:
            self._pids[name] = seen.pid
        answers = probe is not None and probe.ok
        if not crashed and self._crashes.looping(name) and seen is not None:
            self._mark_crashed(name, seen.runtime, instance or name, self._crashes.said(name))
        why = self._crashes.why(name)
        if why is not None:
            if not answers or self._crashes.restarting(name):
                self._write(name, (ServiceState.FAILED.value, False, _noted(note, why), None), fresh)
                return
            self._recovered(name)
        healthy = probe.ok if probe is not None else False
        self._note_tasks(name, seen)
        detail = probe.detail if probe is not None else (seen.detail if seen is not None else "")
        detail = _placed(detail, self._placed.get(name, "")) if probe is not None else detail
        same_spec = desired is not None and seen is not None and seen.spec_hash == desired.spec_hash
        running_revision = revision if revision is not None and same_spec else seen.revision if seen else None
        revision = running_revision if running else None
        degraded = self._note_degraded(name, seen if running else None)
        if degraded and seen is not None:
            shown = f"degraded: {degraded}; {seen.detail}"
            self._write(name, (ServiceState.DEGRADED.value, healthy, _noted(note, shown), revision), fresh)
            return
        self._write(name, (state.value, healthy, _noted(note, detail), revision), fresh)
        if not running:
            self.unwatch(name)

    def _note_tasks(self, name: str, seen: ActualService | None) -> None:
        """A swarm service's tasks (which node, which state) stay in its detail between listings."""
        if seen is not None and seen.tasks:
            self._placed[name] = seen.detail
            self._tasks[name] = seen.tasks
        else:
            self._placed.pop(name, None)
            self._tasks.pop(name, None)

    def tasks(self, name: str) -> tuple[Task, ...]:
        """A swarm service's tasks as the last listing saw them (node, state, error); () for others."""
        return self._tasks.get(name, ())

    def _note_degraded(self, name: str, seen: ActualService | None) -> str:
        """Announce a service becoming degraded (or running all its tasks again) once; returns why it is."""
        why = seen.degraded if seen is not None else ""
        was = self._degraded.pop(name, "")
        if why:
            self._degraded[name] = why
            if not was:
                self._events.publish(ServiceDegraded(name, f"runs fewer tasks than asked: {why}"))
        elif was and seen is not None:
            self._events.publish(ServiceDegraded(name, "runs all its tasks again", recovered=True))
        return why

    def _mark_crashed(self, name: str, runtime_name: str, instance: str, what: str) -> str:
        """Remember (and announce once) that a service which passed its gate died; returns why, for people."""
        runtime = self._runtimes.get(runtime_name)
        try:
            cause = root_cause(runtime.logs(instance, 8000)) if runtime is not None else ""
        except DeployerError:
            cause = ""
        why = f"crash loop after its gate passed: {what}" + (f": {cause}" if cause else "")
        self._crashes.mark(name, why)
        self._events.publish(ServiceCrashed(name, why))
        return why

    def _recovered(self, name: str) -> None:
        self._crashes.forget(name)
        self._events.publish(ServiceCrashed(name, "answers its health check again", recovered=True))

    def replacing(self, name: str, detail: str) -> None:
        """A deploy replaces the serving process in place: until its gate passes, nothing is known to answer."""
        self.unwatch(name)
        self._written.pop(name, None)
        self._store.observations.record(name, ServiceState.STARTING.value, False, detail)
        self._events.publish(ServiceObserved(name, False, False))

    def record_waiting(self, name: str, reason: str) -> None:
        self._written.pop(name, None)
        self._store.observations.record(name, ServiceState.UNKNOWN.value, False, reason)

    def record_removed(self, name: str, detail: str) -> None:
        self.unwatch(name)
        self._written.pop(name, None)
        self._store.observations.record(name, ServiceState.ABSENT.value, False, detail)
        self._events.publish(ServiceRemoved(name))

    def unwatch(self, name: str) -> None:
        with self._guard:
            self._watched.pop(name, None)

    def _watch(self, name: str, url: str, *, fresh: bool, where: tuple[str, str] = ("", "")) -> Probe:
        with self._guard:
            watched = self._watched.get(name)
            if watched is None or watched.url != url:
                spread = zlib.crc32(name.encode()) % max(1, int(self._interval * 1000)) / 1000
                watched = self._watched[name] = _Watched(url, time.monotonic() + spread)
            if where[0]:
                watched.runtime, watched.instance = where
            known = watched.probe
        if known is not None and not fresh:
            return known
        probe = self._probe(url, timeout=2.0)
        with self._guard:
            watched.probe = probe
        return probe

    def _write(self, name: str, observed: tuple[object, ...], fresh: bool) -> None:
        now = time.monotonic()
        last = self._written.get(name)
        # Each service's confirmation comes at its own point of the minute: written together at start,
        # they would otherwise all come due in the same pass, every minute.
        due = CONFIRM_EVERY + zlib.crc32(name.encode()) % int(CONFIRM_EVERY)
        if not fresh and last is not None and last[0] == observed and now - last[1] < due:
            return
        state, healthy, detail, running = observed
        self._store.observations.record(name, str(state), bool(healthy), str(detail))
        if isinstance(running, int) and (last is None or last[0][3] != running):
            self._store.services.set_running(name, running)
        self._written[name] = (observed, now)
        self._events.publish(ServiceObserved(name, state in _SERVING_STATES, bool(healthy)))

    # -- the health cadence ----------------------------------------------------

    def probe_due(self) -> int:
        """Probe every watched service whose turn has come (at most ``budget``); returns how many."""
        now = time.monotonic()
        with self._guard:
            due = sorted((item for item in self._watched.items() if item[1].due <= now),
                         key=lambda item: item[1].due)[: self._budget]
            for _, watched in due:
                watched.due = now + self._interval
        if not due:
            return 0
        with ThreadPoolExecutor(max_workers=min(PROBE_THREADS, len(due))) as pool:
            probes = list(pool.map(lambda item: self._probe(item[1].url, timeout=2.0), due))
        for (name, watched), probe in zip(due, probes, strict=True):
            self._after_probe(name, watched, probe)
        return len(due)

    def _after_probe(self, name: str, watched: _Watched, probe: Probe) -> None:
        with self._guard:
            if self._watched.get(name) is not watched:
                return  # a deploy or removal replaced it meanwhile
            watched.probe = probe
        last = self._written.get(name)
        if last is None:
            return  # the next pass records it with its state
        state, _, said, running = last[0]
        crashed = self._crashes.why(name) is not None
        if not probe.ok and not crashed:
            died = self._died(name, watched)
            if died:
                self._crashes.restarted(name, died)
                self._mark_crashed(name, watched.runtime, watched.instance or name, self._crashes.said(name))
        elif probe.ok and crashed and not self._crashes.restarting(name):
            self._recovered(name)
            state = ServiceState.RUNNING.value
        why = self._crashes.why(name)
        if why is not None:
            self._write(name, (ServiceState.FAILED.value, False, why, running), False)
            return
        # A degraded service keeps saying why (swarm's reason) until the next pass looks again.
        detail = said if state == ServiceState.DEGRADED.value else _placed(probe.detail, self._placed.get(name, ""))
        self._write(name, (state, probe.ok, detail, running), False)

    def _died(self, name: str, watched: _Watched) -> str | None:
        """How the process of a service that does not answer died (exited, restarted), or None: it did not."""
        runtime = self._runtimes.get(watched.runtime)
        if runtime is None:
            return None
        try:
            seen = runtime.inspect(watched.instance or name)
        except DeployerError:
            return None
        known = self._pids.get(name)
        if seen is not None and seen.state is ServiceState.RUNNING and (known is None or seen.pid == known):
            return None  # the same process, merely not answering: unhealthy, not dead
        if seen is None or seen.state not in _CRASH_STATES:
            return None  # stopped or gone: drift, which the next pass heals
        self._pids[name] = seen.pid
        return f"pid {known}, now {seen.pid or 'none'}" if seen.pid != known else f"now {seen.state.value}"

    def probe_unknown(self, names: Iterable[tuple[str, str]]) -> None:
        """Probe side by side the running services never probed yet (the first pass after a start)."""
        with self._guard:
            fresh = [(name, url) for name, url in names if name not in self._watched]
        if len(fresh) < 2:
            return
        with ThreadPoolExecutor(max_workers=min(PROBE_THREADS * 2, len(fresh))) as pool:
            probes = list(pool.map(lambda item: self._probe(item[1], timeout=2.0), fresh))
        now = time.monotonic()
        with self._guard:
            for (name, url), probe in zip(fresh, probes, strict=True):
                spread = zlib.crc32(name.encode()) % max(1, int(self._interval * 1000)) / 1000
                self._watched[name] = _Watched(url, now + spread, probe)

    # -- snapshots -------------------------------------------------------------

    def snapshot(self, name: str, *, max_age: float = SNAPSHOT_MAX_AGE) -> SnapshotView | None:
        """The service's log tail and ``/info``: the stored one when recent enough, else read now."""
        stored = self._store.observations.snapshot(name)
        view = self._store.views.service(name)
        if view is None:
            return stored
        if stored is not None and _age(stored) < max_age:
            return stored
        self.capture(name, view.runtime, view.port, None)
        return self._store.observations.snapshot(name)

    def capture(self, name: str, runtime_name: str, port: int | None, desired: DesiredService | None, *,
                instance: str | None = None) -> None:
        """Read the log tail (of ``instance``: the serving slot's) and ``/info`` (on ``port``) now."""
        runtime = self._runtimes.get(runtime_name)
        try:
            logs = runtime.logs(instance or name, 4000) if runtime is not None else ""
        except DeployerError as exc:
            logs = f"(logs unavailable: {exc})"
        info, error = None, "not running"
        desired = desired or self.running_desired(name)
        if port is not None:
            path = desired.info.path if desired is not None else "/info"
            info, error = self._http.fetch_info(f"http://{_host_of(runtime, instance or name)}:{port}{path}")
        self._store.observations.record_snapshot(name, logs_tail=logs, info=info, info_error=error)

    def running_desired(self, name: str) -> DesiredService | None:
        """The spec of the revision recorded as running (its health and info paths)."""
        view = self._store.views.service(name)
        revision = self._store.history.get_revision(view.running_revision) \
            if view is not None and view.running_revision else None
        return DesiredService.model_validate(revision.spec) if revision is not None else None


def by_service(instances: Mapping[str, ActualService], active: Mapping[str, str]
               ) -> tuple[dict[str, ActualService], dict[str, list[str]]]:
    """What the runtimes list (instances) as services: a service behind the gateway is its active slot.

    Returns the services and, per service, the instances that are not what serves it (an idle slot
    left by a crash mid-switch, the plain process of a service that moved behind the gateway).
    """
    services: dict[str, ActualService] = {}
    strays: dict[str, list[str]] = {}
    for key, seen in sorted(instances.items()):
        service, slot = split_instance(key)
        if active.get(service) == slot or (slot is None and service not in active):
            services[service] = replace(seen, name=service)
        else:
            strays.setdefault(service, []).append(key)
    return services, strays


def _host_of(runtime: Runtime | None, instance: str) -> str:
    """Where an instance answers: a node running one of its tasks (swarm), else this host's loopback."""
    if isinstance(runtime, SpreadsOverNodes):
        try:
            return next(iter(runtime.addresses(instance)), SERVICE_HOST)
        except DeployerError:
            return SERVICE_HOST
    return SERVICE_HOST


def _placed(probed: str, tasks: str) -> str:
    """A probe's answer, then where the tasks run (swarm): ``HTTP 200; service … 2/2 tasks running (…)``."""
    return f"{probed}; {tasks}" if tasks else probed


def _noted(note: str, detail: str) -> str:
    return f"{note}; {detail}" if note else detail


def health_url(desired: DesiredService, port: int | None = None, host: str = SERVICE_HOST) -> str:
    return _health_url(port or desired.port, desired.health.path, host)


def _health_url(port: int, path: str, host: str = SERVICE_HOST) -> str:
    return f"http://{host}:{port}{path}"


def _age(snapshot: SnapshotView) -> float:
    from datetime import UTC, datetime

    captured = snapshot.captured_at
    if captured.tzinfo is None:
        captured = captured.replace(tzinfo=UTC)
    return (datetime.now(UTC) - captured).total_seconds()
