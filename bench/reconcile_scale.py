"""Benchmark 4: the cost of a no-op reconcile pass as the number of services grows, and of the probe job.

In-process, with the daemon's own wiring (``deployer.app.build`` from a deployer.toml, so the
same runtimes, store and reconciler the daemon has), against a real embedded supervisord with
N cheap programs (bench/_tiny_service.py, one shared file) and a real Docker engine with M
containers (FROM scratch + static busybox httpd). Measured per pass: wall time of
``Reconciler.reconcile_source(..., trigger=SCHEDULE, fetch=False)`` (what the periodic
reconcile runs), runtime calls (supervisord XML-RPC and Docker API calls, counted by wrapping
the runtime objects every room holds), HTTP requests to services (counted on ``HttpChecks``),
store calls, and the process's RSS. Between passes the probe job (``Observer.probe_due``, run by
the daemon's scheduler every second) runs on a simulated clock; its probes and calls are
counted apart from the pass's.

Baseline, same run: one bare listing per runtime — ``getAllProcessInfo`` over supervisord's
socket, ``containers(all=True, label filter)`` on the engine — the floor of "observe, see that
nothing changed". RSS baseline: the same process with the daemon built but no services yet.

Setup (not measured) is fast-tracked: the first pass writes the program files (and creates the
containers) without waiting on each start, then one reloadConfig starts them all. Passes are
measured as the daemon runs them every [reconcile] interval (its per-service once-a-minute work
included: see ``measure``).
After the largest size, the real daemon (``deployer serve``) is started on the same state for a
minute: its RSS, its own pass-duration metric and its probes per second (counted by the
services) cross-check the in-process figures.

Run: ``.venv/bin/python bench/reconcile_scale.py [--sizes 50,200,500] [--docker-sizes 50,100]``,
``--quick`` for 50 of each only.
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import math
import re
import secrets
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    ROOT,
    Cleanup,
    PySpy,
    Report,
    busybox_image,
    find_py_spy,
    free_port,
    free_window,
    http_get,
    log,
    median,
    profile_note,
    rss_mb,
    start_daemon,
    stop_supervisord,
    supervisor_rpc,
    terminate,
    wait_for,
    write_config,
)
from tests.helpers import GitRepo

PASS_TARGET = 0.250  # seconds, at 500 services
RSS_TARGET = 150.0  # MB, at 500 services
SOURCE = "scale"


# ---------------------------------------------------------------- counting


class Counts(Counter[str]):
    """Calls by label, and the seconds spent in them (``seconds``; nested labels overlap). Thread-safe:
    the probe job probes on several threads."""

    def __init__(self) -> None:
        super().__init__()
        self.seconds: Counter[str] = Counter()
        self._lock = threading.Lock()

    def clear(self) -> None:
        with self._lock:
            super().clear()
            self.seconds.clear()

    def add(self, label: str, seconds: float) -> None:
        with self._lock:
            self[label] += 1
            self.seconds[label] += seconds

    def wrap(self, label: str, func: Callable[..., Any]) -> Callable[..., Any]:
        def counted(*args: Any, **kwargs: Any) -> Any:
            started = time.monotonic()
            try:
                return func(*args, **kwargs)
            finally:
                self.add(label, time.monotonic() - started)

        return counted


class _CountingApi:
    """A docker APIClient whose method calls are counted."""

    def __init__(self, api: Any, counts: Counts, prefix: str) -> None:
        self._api, self._counts, self._prefix = api, counts, prefix

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._api, name)
        return self._counts.wrap(f"{self._prefix}.{name}", value) if callable(value) else value


class HttpSeam:
    """deployer's one HTTP client to services (``HttpChecks``: probes, the health gate, ``/info``), counted,
    and answered by stubs while ``setup`` is on.

    Wrapped on the class, before the daemon is built: the rooms bind these methods when they are made.
    The gate's probes go through ``probe`` too, so they count as ``http.probe`` inside ``http.wait_healthy``.
    """

    METHODS = ("probe", "fetch_info", "wait_healthy")

    def __init__(self, counts: Counts) -> None:
        self.counts = counts
        self.setup = False
        self._saved: dict[str, Any] = {}

    def install(self) -> None:
        from deployer.health import HttpChecks, Probe

        stubs: dict[str, Callable[[], Any]] = {"probe": lambda: Probe(False, "bench setup"),
                                               "fetch_info": lambda: (None, "bench setup"),
                                               "wait_healthy": lambda: 0.0}
        for name in self.METHODS:
            real = self._saved[name] = vars(HttpChecks)[name]

            def seam(checks: Any, *args: Any, _real: Any = real, _name: str = name, **kwargs: Any) -> Any:
                started = time.monotonic()
                try:
                    return stubs[_name]() if self.setup else _real(checks, *args, **kwargs)
                finally:
                    self.counts.add(f"http.{_name}", time.monotonic() - started)

            setattr(HttpChecks, name, seam)

    def uninstall(self) -> None:
        from deployer.health import HttpChecks

        for name, real in self._saved.items():
            setattr(HttpChecks, name, real)
        self._saved.clear()

    @contextlib.contextmanager
    def stubbed(self) -> Iterator[None]:
        self.setup = True
        try:
            yield
        finally:
            self.setup = False


class SimClock:
    """The observer's clock, moved forward by the bench: a minute of the daemon's life in seconds.

    The observer keeps every per-service time (when a probe is due, when an unchanged observation is
    written again) on ``time.monotonic`` of its own module; this stands in for that module there.
    """

    def __init__(self) -> None:
        self.offset = 0.0

    def monotonic(self) -> float:
        return time.monotonic() + self.offset

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)

    def install(self) -> None:
        from deployer.reconcile import observe

        if getattr(observe, "time", None) is not time:
            raise RuntimeError("deployer internals changed, update bench/reconcile_scale.py: "
                               "deployer.reconcile.observe no longer reads the clock as time.monotonic")
        observe.time = self  # type: ignore[attr-defined]

    def uninstall(self) -> None:
        from deployer.reconcile import observe

        observe.time = time  # type: ignore[attr-defined]


RUNTIME_METHODS = ("check", "observe", "logs", "apply", "start", "stop", "remove")


def instrument(daemon: Any, counts: Counts) -> None:
    """Count runtime methods, supervisord RPCs, Docker API calls and store calls.

    The runtime objects in ``daemon.runtimes`` are the ones every room holds, so their methods (and
    their RPC and engine objects) are wrapped in place; the store's parts likewise.
    """
    for key, runtime in daemon.runtimes.items():
        for method in RUNTIME_METHODS:
            setattr(runtime, method, counts.wrap(f"{key}:{method}", getattr(runtime, method)))
        rpc = getattr(runtime, "rpc", None)
        if rpc is not None:
            original = rpc.call
            rpc.call = lambda method, *a, _o=original, _k=key, **kw: counts.wrap(f"{_k}.rpc.{method}", _o)(
                method, *a, **kw)
        engine = getattr(runtime, "engine", None)
        if engine is not None:
            real_api = engine.api
            engine.api = lambda _r=real_api, _k=key: _CountingApi(_r(), counts, f"{_k}.api")
            engine.ping = counts.wrap(f"{key}.api.ping", engine.ping)
    for part_name, part in store_parts(daemon.store).items():
        for name, member in vars(type(part)).items():
            if callable(member) and not name.startswith("_"):
                setattr(part, name, counts.wrap(f"store.{part_name}.{name}", getattr(part, name)))


def store_parts(store: Any) -> dict[str, Any]:
    """The store's parts (``store.history``, ``store.views``, ...): every attribute but the database."""
    return {name: part for name, part in vars(store).items() if name != "db" and not name.startswith("_")}


def runtime_calls(calls: dict[str, int]) -> int:
    """Calls that reach a runtime: supervisord XML-RPC and Docker API requests."""
    return sum(n for key, n in calls.items() if ".rpc." in key or ".api." in key)


def http_probes(calls: dict[str, int]) -> int:
    """HTTP requests to services: probes (the gate's included) and ``/info`` reads."""
    return calls.get("http.probe", 0) + calls.get("http.fetch_info", 0)


def store_writes(calls: dict[str, int]) -> int:
    """Store calls that write (observations, heads, running revisions, snapshots)."""
    return sum(n for key, n in calls.items()
               if key.startswith("store.") and key.rsplit(".", 1)[1].startswith(("record", "set_", "add_", "start_",
                                                                                  "finish_", "upsert", "mark_")))


# ---------------------------------------------------------------- fast setup


class FastSetup:
    """For setup only, patched onto the runtime objects the rooms hold: ``apply`` writes the program file
    (or creates and starts the container) and returns at once; every runtime's ``check`` and ``observe``
    answer from the pass's first listing (each deploy lists every runtime after its attempt)."""

    def __init__(self, world: World, image: str | None) -> None:
        self.world, self.image, self.added = world, image, []
        self.real = world.daemon.runtimes[world.runtime]
        self._saved: list[tuple[Any, str, Any]] = []

    @contextlib.contextmanager
    def patched(self) -> Iterator[None]:
        for runtime in self.world.daemon.runtimes.values():
            seen: list[Any] = []
            runtime_observe = runtime.observe

            def observe(_seen: list[Any] = seen, _observe: Any = runtime_observe) -> Any:
                if not _seen:
                    _seen.append(_observe())
                return _seen[0]

            checked: list[bool] = []
            runtime_check = runtime.check

            def check(_checked: list[bool] = checked, _check: Any = runtime_check) -> None:
                if not _checked:
                    _check()
                    _checked.append(True)

            self._patch(runtime, "observe", observe)
            self._patch(runtime, "check", check)
        self._patch(self.real, "apply", self.apply)
        if self.image is not None:
            self._patch(self.real, "build", self.build)
        try:
            yield
        finally:
            for obj, name, value in reversed(self._saved):
                if value is _MISSING:
                    delattr(obj, name)
                else:
                    setattr(obj, name, value)
            self._saved.clear()

    def _patch(self, obj: Any, name: str, value: Any) -> None:
        self._saved.append((obj, name, vars(obj).get(name, _MISSING)))
        setattr(obj, name, value)

    def apply(self, deployment: Any) -> None:
        if self.image is None:
            from deployer.runtimes.supervisor import check_program, program_environment, render_program, write_atomic

            real = self.real
            text = render_program(deployment, templates_dir=real.templates_dir, log_dir=real.log_dir, user=real.user)
            check_program(text, environment=program_environment(deployment))
            for folder in (real.include_dir, real.log_dir):
                folder.mkdir(parents=True, exist_ok=True)
            write_atomic(real.include_dir / f"{deployment.name}.conf", text)
        else:
            _create_container(self.real, deployment, self.image)
        self.added.append(deployment.name)

    def build(self, deployment: Any) -> Any:
        from deployer.runtimes.docker import ImageBuild

        return ImageBuild(str(self.image), True, "bench: shared busybox image", 0.0)

    def flush(self) -> None:
        """supervisor: one reloadConfig, then add every new program (autostart starts it); the bench's own RPC."""
        if self.image is None and self.added:
            rpc = supervisor_rpc(self.world.root / "state" / "supervisor" / "supervisor.sock").supervisor
            added = rpc.reloadConfig()[0][0]
            for name in added:
                rpc.addProcessGroup(name)


_MISSING = object()


def _create_container(runtime: Any, deployment: Any, image: str) -> None:
    from deployer.runtimes.docker import command, environment, labels

    api = runtime.engine.api()
    port = deployment.port
    host_config = api.create_host_config(port_bindings={port: ("127.0.0.1", port)},
                                         restart_policy={"Name": "unless-stopped"}, init=True)
    created = api.create_container(image, name=deployment.name, command=command(deployment.desired),
                                   environment=environment(deployment), labels=labels(deployment), ports=[port],
                                   host_config=host_config, detach=True)
    api.start(created["Id"])


# ---------------------------------------------------------------- one world: a repo, a state dir, a built daemon


@dataclass
class World:
    root: Path
    repo: GitRepo
    config: Path
    daemon: Any  # deployer.app.Daemon
    prefix: str
    runtime: str
    window: int
    counts: Counts
    http: HttpSeam
    clock: SimClock
    size: int = 0

    @property
    def reconciler(self) -> Any:
        return self.daemon.reconciler

    @property
    def observer(self) -> Any:
        return self.daemon.reconciler.rooms.observer

    def names(self, count: int) -> list[str]:
        return [f"{self.prefix}-{index:03d}" for index in range(count)]


def make_world(cleanup: Cleanup, kind: str, max_size: int, image: str | None) -> World:
    from deployer.app import build
    from deployer.settings import load_settings

    root = cleanup.tempdir(f"scale-{kind}")
    repo = GitRepo.create(root / "repo.git", root / "work")
    window = free_window(12000 if kind == "supervisor" else 13000, max_size + 10)
    config = write_config(root / "deployer.toml", listen_port=free_port(), state_dir=root / "state",
                          port_first=window, port_count=max_size + 10,
                          extra=f'[[sources]]\nurl = "{repo.bare}"\nname = "{SOURCE}"\n')
    cleanup.add(f"stop the {kind} world's supervisord", stop_supervisord, root / "state")
    prefix = f"b{secrets.token_hex(2)}{'s' if kind == 'supervisor' else 'd'}"
    if image is not None:
        cleanup.add("remove the bench containers", _remove_containers, prefix)
    counts = Counts()
    http, clock = HttpSeam(counts), SimClock()
    require_internals()
    http.install()  # before build: the rooms bind HttpChecks' methods when they are made
    cleanup.add("unwrap HttpChecks", http.uninstall)
    clock.install()
    cleanup.add("give the observer its clock back", clock.uninstall)
    settings = load_settings(config, environ={})
    daemon = build(settings, config_dir=root)
    cleanup.add("close the store", daemon.store.close)
    world = World(root, repo, config, daemon, prefix, kind, window, counts, http, clock)
    instrument(daemon, counts)
    return world


def require_internals() -> None:
    """The deployer seams this benchmark leans on; stop with their names if any moved."""
    from deployer.app import Daemon
    from deployer.health import HttpChecks
    from deployer.reconcile import Reconciler, ReconcilerConfig
    from deployer.reconcile.observe import Observer
    from deployer.reconcile.passes import Rooms
    from deployer.runtimes.docker import DockerRuntime, SwarmRuntime
    from deployer.runtimes.supervisor import SupervisorRuntime

    wanted: dict[str, tuple[Any, list[str]]] = {
        "Daemon": (Daemon, ["runtimes", "reconciler", "store"]),
        "Reconciler": (Reconciler, ["reconcile_source"]),
        "Rooms": (Rooms, ["observer"]),
        "Observer": (Observer, ["probe_due", "list"]),
        "ReconcilerConfig": (ReconcilerConfig, ["probe_interval"]),
        "HttpChecks": (HttpChecks, list(HttpSeam.METHODS)),
        "SupervisorRuntime": (SupervisorRuntime, [*RUNTIME_METHODS]),
        "DockerRuntime": (DockerRuntime, [*RUNTIME_METHODS, "build"]),
        "SwarmRuntime": (SwarmRuntime, [*RUNTIME_METHODS]),
    }
    fields = {**getattr(Daemon, "__dataclass_fields__", {}), **getattr(Rooms, "__dataclass_fields__", {}),
              **getattr(ReconcilerConfig, "__dataclass_fields__", {})}
    missing = [f"{owner}.{name}" for owner, (obj, names) in wanted.items() for name in names
               if not hasattr(obj, name) and name not in fields]
    if "budget" not in inspect.signature(Observer.__init__).parameters:
        missing.append("Observer(budget=...)")
    if missing:
        raise RuntimeError(f"deployer internals changed, update bench/reconcile_scale.py: missing {', '.join(missing)}")


def probe_settings() -> tuple[float, int]:
    """The probe job's interval and per-tick budget as the daemon runs them (deployer.app passes neither)."""
    from deployer.reconcile import ReconcilerConfig
    from deployer.reconcile.observe import Observer

    interval = ReconcilerConfig.__dataclass_fields__["probe_interval"].default
    budget = inspect.signature(Observer.__init__).parameters["budget"].default
    return float(interval), int(budget)


def manifest(world: World, count: int) -> str:
    lines = ["services:"]
    for name in world.names(count):
        # One shared folder: its git tree (part of every spec hash) does not change when service.yaml grows.
        lines += [f"  - name: {name}", "    path: svc"]
        if world.runtime == "supervisor":
            lines.append("    command: python -I -S tiny.py --port ${PORT}")
        else:
            lines += ["    runtime: docker", "    command: /bin/busybox httpd -f -p ${PORT} -h /www"]
        lines.append("    health: {path: /health, timeout: 30}")
    return "\n".join(lines) + "\n"


def grow(world: World, count: int, image: str | None) -> float:
    """Deploy services up to ``count`` (fast-tracked); the seconds it took until all answer /health."""
    from deployer.model.status import Trigger

    started = time.monotonic()
    files: dict[str, str | bytes | None] = {"service.yaml": manifest(world, count)}
    if world.size == 0:
        files["svc/tiny.py"] = (ROOT / "bench" / "_tiny_service.py").read_text()
    world.repo.commit(files, f"{count} services")
    fast = FastSetup(world, image)
    with fast.patched(), world.http.stubbed():
        result = world.reconciler.reconcile_source(SOURCE, trigger=Trigger.WEBHOOK, fetch=True)
    fast.flush()
    bad = {name: outcome for name, outcome in result.outcomes.items() if outcome not in ("succeeded", "noop")}
    if bad or result.error:
        raise RuntimeError(f"setup pass failed: {result.error} {dict(list(bad.items())[:5])}")
    world.size = count
    ports = [world.daemon.store.ports.of(name) for name in world.names(count)]
    wait_for(lambda: all(_answers(port) for port in ports), 300, f"{count} services answering /health", 0.5)
    if world.runtime == "supervisor":  # and supervisord calls them RUNNING (startsecs passed)
        sock = world.root / "state" / "supervisor" / "supervisor.sock"
        wait_for(lambda: _all_running(sock, world.names(count)), 120, "every program RUNNING", 0.5)
    return time.monotonic() - started


def _answers(port: int | None) -> bool:
    try:
        return port is not None and http_get(port, "/health", timeout=2)[0] == 200
    except OSError:
        return False


def _all_running(sock: Path, names: list[str]) -> bool:
    states = {info["name"]: info["statename"] for info in supervisor_rpc(sock).supervisor.getAllProcessInfo()}
    return all(states.get(name) == "RUNNING" for name in names)


# ---------------------------------------------------------------- measuring


def measure(world: World, passes: int, interval: float, py_spy: str | None = None) -> dict[str, Any]:
    """``passes`` no-op passes ``interval`` simulated seconds apart, the probe job ticking in between.

    Waiting a real interval between passes would make this benchmark take minutes per size, so the
    observer's clock (``SimClock``) is moved on instead: before each pass, ``interval`` one-second
    ticks of the probe job (``Observer.probe_due``, what the daemon's scheduler runs every second),
    each one second later than the last. A pass is then exactly what the daemon runs ``interval``
    seconds after the previous one, the once-a-minute work included (unchanged observations are
    written again once a minute). Six passes at 10 s cover a simulated minute. Pass calls and the
    probe job's are counted apart.
    """
    one_pass(world)  # warm-up: probes every running service never probed, writes every state (not measured)
    runs, job_ticks = [], []
    spy = PySpy(py_spy, _own_pid(), f"reconcile_scale-{world.runtime}-{world.size}", gil=True)
    with spy:
        for _ in range(passes):
            job_ticks.append(probe_job(world, interval))
            runs.append(one_pass(world))
    rss, hwm = rss_mb(_own_pid())
    busiest = max(runs, key=lambda r: r["seconds"])
    ticks = [tick for job in job_ticks for tick in job["ticks"]]
    probes = [tick["probes"] for tick in ticks]
    return {"size": world.size, "runs": runs, "interval": interval,
            "seconds": median([r["seconds"] for r in runs]), "max_seconds": busiest["seconds"],
            "runtime_calls": median([r["runtime_calls"] for r in runs]),
            "max_runtime_calls": max(r["runtime_calls"] for r in runs),
            "pass_http": max(r["http"] for r in runs), "max_store_writes": max(r["store_writes"] for r in runs),
            "calls": min(runs, key=lambda r: r["runtime_calls"])["calls"], "busiest_calls": busiest["calls"],
            "job": {"ticks": len(ticks), "probes_per_s": sum(probes) / max(1, len(ticks)),
                    "max_per_tick": max(probes, default=0), "tick_s": median([t["seconds"] for t in ticks]),
                    "max_tick_s": max((t["seconds"] for t in ticks), default=math.nan),
                    "runtime_calls": sum(job["runtime_calls"] for job in job_ticks),
                    "store_writes": sum(job["store_writes"] for job in job_ticks),
                    "calls": _summed([job["calls"] for job in job_ticks])},
            "rss_mb": rss, "hwm_mb": hwm, "listing": listing_floor(world),
            "profile": spy.summary(only="reconcile_source"), "job_profile": spy.summary(only="probe_due")}


def probe_job(world: World, seconds: float) -> dict[str, Any]:
    """``seconds`` of the daemon's life between two passes: the probe job, once a (simulated) second."""
    world.counts.clear()
    ticks = []
    for _ in range(max(1, round(seconds))):
        world.clock.offset += 1.0
        started = time.monotonic()
        probed = world.observer.probe_due()
        ticks.append({"probes": probed, "seconds": time.monotonic() - started})
    calls = dict(world.counts)
    return {"ticks": ticks, "calls": calls, "runtime_calls": runtime_calls(calls), "store_writes": store_writes(calls)}


def one_pass(world: World) -> dict[str, Any]:
    """One ``SCHEDULE`` pass (what the periodic reconcile runs); it must be a no-op for every service."""
    from deployer.model.status import Trigger

    counts = world.counts
    counts.clear()
    started = time.monotonic()
    result = world.reconciler.reconcile_source(SOURCE, trigger=Trigger.SCHEDULE, fetch=False)
    took = time.monotonic() - started
    outcomes = Counter(result.outcomes.values())
    if set(outcomes) - {"noop"} or len(result.outcomes) != world.size:
        raise RuntimeError(f"not a no-op pass at {world.size}: {dict(outcomes)} {result.error}")
    calls = dict(counts)
    return {"seconds": took, "runtime_calls": runtime_calls(calls), "http": http_probes(calls),
            "store_writes": store_writes(calls), "calls": calls,
            "call_seconds": {key: round(value, 4) for key, value in counts.seconds.items()}}


def _summed(many: list[dict[str, int]]) -> dict[str, int]:
    total: Counter[str] = Counter()
    for calls in many:
        total.update(calls)
    return dict(total)


def _own_pid() -> int:
    import os

    return os.getpid()


def listing_floor(world: World, rounds: int = 5) -> float:
    """The bare listing of the runtime, timed from outside deployer (median of ``rounds``)."""
    times = []
    for _ in range(rounds):
        started = time.monotonic()
        if world.runtime == "supervisor":
            supervisor_rpc(world.root / "state" / "supervisor" / "supervisor.sock").supervisor.getAllProcessInfo()
        else:
            import docker

            client = docker.APIClient(version="auto")
            started = time.monotonic()
            client.containers(all=True, filters={"label": ["deployer.managed=true"]})
            client.close()
        times.append(time.monotonic() - started)
    return median(times)


def health_hits(ports: list[int]) -> int:
    """``/health`` requests the services answered so far, by their own count (bench/_tiny_service.py)."""
    total = 0
    for port in ports:
        try:
            status, body = http_get(port, "/info", timeout=2)
            total += int(json.loads(body).get("health_hits", 0)) if status == 200 else 0
        except (OSError, ValueError):
            continue
    return total


def _scrape(daemon: Any) -> tuple[int, float, int]:
    """The daemon's own pass metric: (passes, seconds in them, passes over the 250 ms target)."""
    metrics = http_get(daemon.port, "/metrics", timeout=10)[1].decode()

    def value(name: str, labels: str) -> float:
        found = re.search(rf"deployer_reconcile_pass_duration_seconds_{name}{{{labels}}} ([0-9.e+]+)", metrics)
        return float(found.group(1)) if found else 0.0

    count = int(value("count", f'source="{SOURCE}"'))
    within = int(value("bucket", f'le="{PASS_TARGET}",source="{SOURCE}"'))
    return count, value("sum", f'source="{SOURCE}"'), count - within


def daemon_check(cleanup: Cleanup, world: World, steady: float, what_if: bool) -> list[dict[str, Any]]:
    """The real daemon on the same state: RSS, its own pass-duration metric, and its probes per second.

    The daemon runs with deployer.toml's default interval (10 s) for ``steady`` seconds after its
    start-up pass; its pass times come from its own histogram (start-up pass excluded), its probes
    per second from the services' own count of ``/health`` requests. With ``what_if``, run again with
    ``MALLOC_ARENA_MAX=2`` (glibc then keeps two malloc arenas instead of one per thread that
    allocates, so memory freed by the daemon's short-lived threads is reused, not left fragmented).
    """
    ports = [port for name in world.names(world.size) if (port := world.daemon.store.ports.of(name)) is not None]
    world.daemon.store.close()
    text = world.config.read_text().replace("interval = 3600\npoll_interval", "interval = 10\npoll_interval", 1)
    world.config.write_text(text)
    runs = [("as configured", {})] + ([("WHAT-IF MALLOC_ARENA_MAX=2", {"MALLOC_ARENA_MAX": "2"})] if what_if else [])
    checks = []
    for label, env in runs:
        daemon = start_daemon(cleanup, world.config, world.root / "state", env=env, timeout=180)
        peak = 0.0
        wait_for(lambda d=daemon: _scrape(d)[0] >= 1, 240, "the daemon's start-up pass", 0.5)
        hits0, at0 = health_hits(ports), time.monotonic()
        first = last = _scrape(daemon)
        durations = []  # each steady pass, from the metric's sum when its count moves by one
        deadline = at0 + steady
        while time.monotonic() < deadline:
            peak = max(peak, rss_mb(daemon.process.pid)[0])
            time.sleep(0.5)
            now = _scrape(daemon)
            if now[0] == last[0] + 1:
                durations.append(now[1] - last[1])
            last = now
        hits1, at1 = health_hits(ports), time.monotonic()
        rss = rss_mb(daemon.process.pid)
        terminate(daemon.process, 30)
        passes = last[0] - first[0]
        checks.append({"label": label, "rss_mb": rss[0], "hwm_mb": rss[1], "peak_rss_mb": max(peak, rss[0]),
                       "passes": passes, "mean_pass_s": (last[1] - first[1]) / passes if passes else math.nan,
                       "pass_s": durations, "median_pass_s": median(durations),
                       "max_pass_s": max(durations, default=math.nan),
                       "slow_passes": last[2] - first[2], "probes_per_s": (hits1 - hits0) / (at1 - at0),
                       "window_s": at1 - at0})
    return checks


# ---------------------------------------------------------------- docker image


def scratch_image(cleanup: Cleanup) -> str:
    return busybox_image(cleanup, {"www/health": b'{"status": "ok"}\n'}, "COPY www /www\n")[1]


def _remove_containers(prefix: str) -> None:
    import docker

    api = docker.APIClient(version="auto", timeout=120)
    for container in api.containers(all=True, filters={"label": ["deployer.managed=true"]}):
        if str((container.get("Labels") or {}).get("deployer.service", "")).startswith(prefix + "-"):
            with contextlib.suppress(docker.errors.NotFound):
                api.remove_container(container["Id"], force=True)


# ---------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="50,200,500", help="Supervisor program counts, comma-separated")
    parser.add_argument("--docker-sizes", default=None,
                        help="Docker container counts ('' or 0 to skip; default 50,100, or 50 with --quick)")
    parser.add_argument("--passes", type=int, default=6, help="no-op passes measured at each size")
    parser.add_argument("--interval", type=float, default=10.0,
                        help="the reconcile interval the passes emulate (deployer.toml's default: 10 s)")
    parser.add_argument("--quick", action="store_true", help="50 programs (and 50 containers) only")
    parser.add_argument("--no-daemon-check", action="store_true",
                        help="skip running the real daemon at the largest Supervisor size")
    parser.add_argument("--daemon-seconds", type=float, default=70,
                        help="how long the real daemon runs after its start-up pass (a minute covers the "
                             "once-a-minute work)")
    parser.add_argument("--what-if-malloc", action="store_true",
                        help="run the real daemon a second time with MALLOC_ARENA_MAX=2 (WHAT-IF)")
    parser.add_argument("--py-spy", default="off", metavar="PATH|auto|off",
                        help="sample the steady passes at the largest sizes with py-spy (optional)")
    parser.add_argument("--timeout", type=float, default=900, help="hard limit for the whole script, seconds")
    args = parser.parse_args()
    py_spy = find_py_spy(args.py_spy)
    sizes = [50] if args.quick else _sizes(args.sizes)
    docker_sizes = _sizes(args.docker_sizes if args.docker_sizes is not None else "50" if args.quick else "50,100")
    probe_interval, budget = probe_settings()
    report = Report("reconcile_scale", "4. No-op reconcile pass at scale",
                    params={"sizes": sizes, "docker_sizes": docker_sizes, "passes": args.passes,
                            "interval": args.interval, "probe_interval": probe_interval, "probe_budget": budget})
    results: dict[str, Any] = {"supervisor": [], "docker": []}
    with Cleanup(args.timeout) as cleanup:
        for kind, wanted in (("supervisor", sizes), ("docker", docker_sizes)):
            if not wanted:
                continue
            try:
                _run_kind(cleanup, kind, wanted, args, py_spy, results)
            except Exception as exc:  # report what was measured; say what failed
                log(f"{kind}: failed: {type(exc).__name__}: {exc}")
                report.notes.append(f"{kind}: FAILED after the sizes above: {type(exc).__name__}: {exc}")
        _report(report, results, probe_interval, budget)
        report.samples = results
    report.finish()
    return 0


def _sizes(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip() and int(part) > 0]


def _run_kind(cleanup: Cleanup, kind: str, wanted: list[int], args: argparse.Namespace, py_spy: str | None,
              results: dict[str, Any]) -> None:
    image = scratch_image(cleanup) if kind == "docker" else None
    world = make_world(cleanup, kind, max(wanted), image)
    try:
        _measure_sizes(cleanup, world, kind, wanted, args, py_spy, image, results)
    finally:  # the next world wraps HttpChecks and the observer's clock again
        world.http.uninstall()
        world.clock.uninstall()


def _measure_sizes(cleanup: Cleanup, world: World, kind: str, wanted: list[int], args: argparse.Namespace,
                   py_spy: str | None, image: str | None, results: dict[str, Any]) -> None:
    base_rss = rss_mb(_own_pid())[0]
    for size in sorted(wanted):
        log(f"{kind}: growing to {size} services (setup)")
        setup = grow(world, size, image)
        log(f"{kind}: {size} up after {setup:.1f} s; measuring {args.passes} passes and the probe job between them")
        measured = measure(world, args.passes, args.interval, py_spy if size == max(wanted) else None)
        measured.update(setup_s=setup, base_rss_mb=base_rss)
        results[kind].append(measured)
        log(f"{kind} {size}: pass {measured['seconds']:.3f} s (busiest {measured['max_seconds']:.3f} s), runtime "
            f"calls {measured['runtime_calls']:.0f}, probe job {measured['job']['probes_per_s']:.1f} probes/s, "
            f"rss {measured['rss_mb']:.0f} MB")
    if kind == "supervisor" and not args.no_daemon_check:
        log(f"the real daemon on the {world.size}-service state (cross-check)")
        results["daemon_check"] = daemon_check(cleanup, world, args.daemon_seconds, args.what_if_malloc)
    stop_supervisord(world.root / "state")


def _report(report: Report, results: dict[str, Any], probe_interval: float, budget: int) -> None:
    for kind in ("supervisor", "docker"):
        rows = results.get(kind) or []
        for measured in rows:
            _report_size(report, kind, measured, probe_interval, budget)
        if len(rows) >= 2:
            for key, label in (("runtime_calls", "median pass"), ("max_runtime_calls", "busiest pass")):
                calls = [r[key] for r in rows]
                report.add(f"{kind}: runtime calls per pass constant in N? ({label})", max(calls), min(calls),
                           "calls", target="constant", met=max(calls) == min(calls),
                           note="largest vs smallest size: " + ", ".join(f"{r['size']}: {r[key]:.0f}" for r in rows))
            first, last = rows[0], rows[-1]
            exponent = math.log(last["seconds"] / first["seconds"]) / math.log(last["size"] / first["size"])
            report.add(f"{kind}: growth exponent of pass time ({first['size']} -> {last['size']})", exponent, 1.0,
                       "", target="<= 1.1 (linear)", met=exponent <= 1.1,
                       note="log(t2/t1)/log(n2/n1); per service: "
                            + ", ".join(f"{r['size']}: {r['seconds'] / r['size'] * 1000:.2f} ms" for r in rows))
    _report_daemon(report, results, probe_interval, budget)
    _report_notes(report, results)


def _report_size(report: Report, kind: str, measured: dict[str, Any], probe_interval: float, budget: int) -> None:
    size, job = measured["size"], measured["job"]
    big = kind == "supervisor" and size == 500
    target = f"< {PASS_TARGET * 1000:.0f} ms" if big else ""
    report.add(f"{kind} {size}: no-op pass (median)", measured["seconds"], measured["listing"], "s",
               target=target, met=(measured["seconds"] < PASS_TARGET) if big else None,
               note=f"median of {len(measured['runs'])} passes, {measured['interval']:g} s apart (simulated, the "
                    "probe job ticking in between); baseline: one bare listing of the runtime")
    report.add(f"  {kind} {size}: busiest pass of the simulated minute", measured["max_seconds"],
               measured["listing"], "s", target=target, met=(measured["max_seconds"] < PASS_TARGET) if big else None,
               note=f"it wrote {measured['max_store_writes']} store rows (unchanged observations are written "
                    "again once a minute)")
    report.add(f"  {kind} {size}: runtime calls per pass (median / busiest)", measured["runtime_calls"],
               measured["max_runtime_calls"], "calls",
               note="supervisord XML-RPC + Docker API made by the pass itself, all runtimes; baseline column: the "
                    "busiest pass")
    report.add(f"  {kind} {size}: HTTP requests to services per pass (most)", measured["pass_http"], None, "",
               target="0", met=measured["pass_http"] == 0,
               note="steady services are probed by the probe job, not by passes")
    expected = min(size / probe_interval, budget)
    rate = job["probes_per_s"]
    report.add(f"  {kind} {size}: probe job, HTTP probes per second", rate, expected, "",
               target=f"~{expected:g} (N/{probe_interval:g} s, <= {budget})",
               met=abs(rate - expected) <= 0.1 * expected + 1 and job["max_per_tick"] <= budget,
               note=f"Observer.probe_due once a simulated second, {job['ticks']} ticks; baseline column: expected; "
                    f"most in one tick {job['max_per_tick']}; it made {job['runtime_calls']} runtime calls and "
                    f"{job['store_writes']} store writes in all")
    report.add(f"  {kind} {size}: probe job, one tick (median / longest)", job["tick_s"], job["max_tick_s"], "s",
               target="< 1 s", met=job["max_tick_s"] < 1.0,
               note="the scheduler runs it every second (max_instances=1): a tick must end within the second; "
                    "baseline column: the longest tick")
    report.add(f"  {kind} {size}: process RSS", measured["rss_mb"], measured["base_rss_mb"], "MB",
               note="in-process (deployer.app.build wiring, plus the bench); baseline: same process before any "
                    "service; the target applies to the real daemon below")


def _report_daemon(report: Report, results: dict[str, Any], probe_interval: float, budget: int) -> None:
    checks = results.get("daemon_check") or []
    size = (results.get("supervisor") or [{}])[-1].get("size", "?")
    for check in checks:
        what_if = check["label"].startswith("WHAT-IF")
        indent = "  " if what_if else ""
        report.add(f"{indent}real daemon, {size} services: RSS ({check['label']})", check["rss_mb"], None, "MB",
                   target=f"< {RSS_TARGET:.0f} MB", met=check["rss_mb"] < RSS_TARGET,
                   note=f"deployer serve on the same state, {check['window_s']:.0f} s after its start-up pass "
                        f"(peak {check['peak_rss_mb']:.0f} MB, high-water mark {check['hwm_mb']:.0f} MB)")
        if what_if:
            continue
        big = size == 500
        each = ", ".join(f"{seconds * 1000:.0f}" for seconds in check["pass_s"])
        report.add(f"real daemon, {size} services: pass by its own metric (median / longest)",
                   check["median_pass_s"], check["max_pass_s"], "s",
                   target=f"< {PASS_TARGET * 1000:.0f} ms" if big else "",
                   met=check["median_pass_s"] < PASS_TARGET if big else None,
                   note=f"deployer_reconcile_pass_duration_seconds, {check['passes']} scheduled passes (the start-up "
                        f"pass excluded; the probe job runs beside them), each in ms: {each}; mean "
                        f"{check['mean_pass_s'] * 1000:.0f} ms; baseline column: the longest")
        expected = min(float(size) / probe_interval, budget) if isinstance(size, int) else math.nan
        report.add(f"real daemon, {size} services: HTTP probes per second", check["probes_per_s"], expected, "",
                   target=f"~{expected:g}", met=abs(check["probes_per_s"] - expected) <= 0.15 * expected + 1,
                   note="counted by the services themselves (GET /health answered, bench/_tiny_service.py) over "
                        f"{check['window_s']:.0f} s; baseline column: N/{probe_interval:g} s, at most {budget} "
                        "a second")


def _report_notes(report: Report, results: dict[str, Any]) -> None:
    for kind in ("supervisor", "docker"):
        rows = results.get(kind) or []
        if not rows:
            continue
        last = rows[-1]
        if last.get("profile"):
            report.notes.append(profile_note(f"{kind} {last['size']} passes", last["profile"]))
        if last.get("job_profile"):
            report.notes.append(profile_note(f"{kind} {last['size']} probe job", last["job_profile"]))
        keys = {key for run in last["runs"] for key in run.get("call_seconds", {})}
        spent = {key: median([run.get("call_seconds", {}).get(key, 0.0) for run in last["runs"]]) for key in keys}
        top = sorted(spent.items(), key=lambda item: -item[1])[:10]
        report.notes.append(f"{kind} {last['size']}, median seconds per pass inside counted calls (nested ones "
                            "overlap): " + ", ".join(f"{key} {value * 1000:.0f} ms" for key, value in top))
        for label, per in (("quietest", last["calls"]), ("busiest", last["busiest_calls"]),
                           ("probe job (all ticks)", last["job"]["calls"])):
            top_calls = sorted(per.items(), key=lambda item: -item[1])[:12]
            report.notes.append(f"{kind} {last['size']}, calls in the {label} pass: "
                                if label != "probe job (all ticks)" else
                                f"{kind} {last['size']}, calls of the probe job (all ticks): ")
            report.notes[-1] += ", ".join(f"{key} {value}" for key, value in top_calls)


if __name__ == "__main__":
    sys.exit(main())
