"""Benchmark 4: the cost of a no-op reconcile pass as the number of services grows.

In-process, with the daemon's own wiring (``deployer.app.build`` from a deployer.toml, so the
same runtimes, store and reconciler the daemon has), against a real embedded supervisord with
N cheap programs (bench/_tiny_service.py, one shared file) and a real Docker engine with M
containers (FROM scratch + static busybox httpd). Measured per pass: wall time of
``Reconciler.reconcile_source(..., trigger=SCHEDULE, fetch=False)`` (what the periodic
reconcile runs), runtime calls (supervisord XML-RPC and Docker API calls, counted by wrapping
the runtime objects), HTTP requests to services, store calls, and the process's RSS.

Baseline, same run: one bare listing per runtime — ``getAllProcessInfo`` over supervisord's
socket, ``containers(all=True, label filter)`` on the engine — the floor of "observe, see that
nothing changed". RSS baseline: the same process with the daemon built but no services yet.

Setup (not measured) is fast-tracked: the first pass writes the program files (and creates the
containers) without waiting on each start, then one reloadConfig starts them all. Passes are
measured as the daemon runs them every [reconcile] interval (its per-service once-a-minute work
included: see ``measure``).
After the largest size, the real daemon (``deployer serve``) is started on the same state for a
few passes: its RSS and its own pass-duration metric cross-check the in-process figures.

Run: ``.venv/bin/python bench/reconcile_scale.py [--sizes 50,200,500] [--docker-sizes 50,100]``,
``--quick`` for 50 of each only.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import re
import secrets
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
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
    """Calls by label, and the seconds spent in them (``seconds``; nested labels overlap)."""

    def __init__(self) -> None:
        super().__init__()
        self.seconds: Counter[str] = Counter()

    def clear(self) -> None:
        super().clear()
        self.seconds.clear()

    def wrap(self, label: str, func: Callable[..., Any]) -> Callable[..., Any]:
        def counted(*args: Any, **kwargs: Any) -> Any:
            self[label] += 1
            started = time.monotonic()
            try:
                return func(*args, **kwargs)
            finally:
                self.seconds[label] += time.monotonic() - started

        return counted


class _CountingApi:
    """A docker APIClient whose method calls are counted."""

    def __init__(self, api: Any, counts: Counts, prefix: str) -> None:
        self._api, self._counts, self._prefix = api, counts, prefix

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._api, name)
        return self._counts.wrap(f"{self._prefix}.{name}", value) if callable(value) else value


def instrument(reconciler: Any, counts: Counts) -> None:
    """Count runtime methods, supervisord RPCs, Docker API calls, store calls and HTTP to services."""
    from deployer import reconcile
    from deployer.store import Store

    for key, runtime in reconciler.runtimes.items():
        for method in ("check", "observe", "logs", "apply", "start", "stop", "remove"):
            setattr(runtime, method, counts.wrap(f"{key}:{method}", getattr(runtime, method)))
        if hasattr(runtime, "rpc"):
            rpc = runtime.rpc
            original = rpc.call
            rpc.call = lambda method, *a, _o=original, _k=key, **kw: counts.wrap(f"{_k}.rpc.{method}", _o)(
                method, *a, **kw)
        if hasattr(runtime, "engine"):
            engine = runtime.engine
            real_api = engine.api
            engine.api = lambda _r=real_api, _k=key: _CountingApi(_r(), counts, f"{_k}.api")
            engine.ping = counts.wrap(f"{key}.api.ping", engine.ping)
    store = reconciler.store
    for name, member in vars(Store).items():
        if callable(member) and not name.startswith("_"):
            setattr(store, name, counts.wrap(f"store.{name}", getattr(store, name)))
    reconciler._probe = counts.wrap("http.probe", reconciler._probe)
    info_owner = reconciler.http if hasattr(getattr(reconciler, "http", None), "fetch_info") else reconcile
    info_owner.fetch_info = counts.wrap("http.info", info_owner.fetch_info)


def runtime_calls(counts: Counts) -> int:
    """Calls that reach a runtime: supervisord XML-RPC and Docker API requests."""
    return sum(n for key, n in counts.items() if ".rpc." in key or ".api." in key)


# ---------------------------------------------------------------- fast setup


class FastSetup:
    """For setup only: ``apply`` writes the program file (or creates and starts the container) and
    returns at once; ``observe`` answers the pass's first listing for the whole pass."""

    def __init__(self, real: Any, image: str | None = None) -> None:
        self.real, self.image, self.added = real, image, []
        self._seen: Any = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    def observe(self) -> Any:
        if self._seen is None:
            self._seen = self.real.observe()
        return self._seen

    def apply(self, deployment: Any) -> None:
        if self.image is None:
            from deployer.runtimes.supervisor import check_program, program_environment, render_program, write_atomic

            real = self.real
            text = render_program(deployment, templates_dir=real.templates_dir, log_dir=real.log_dir, user=real.user)
            check_program(text, environment=program_environment(deployment))
            real._prepare_dirs()
            write_atomic(real._program_file(deployment.name), text)
        else:
            _create_container(self.real, deployment, self.image)
        self.added.append(deployment.name)

    def flush(self) -> None:
        """supervisor: one reloadConfig, then add every new program (autostart starts it)."""
        if self.image is None:
            added, _, _ = self.real._reload()
            for name in added:
                self.real._call("addProcessGroup", name)


class FastDockerSetup(FastSetup):
    def build(self, deployment: Any) -> Any:
        from deployer.runtimes.docker import ImageBuild

        return ImageBuild(str(self.image), True, "bench: shared busybox image", 0.0)


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
    counts: Counts = field(default_factory=Counts)
    size: int = 0

    @property
    def reconciler(self) -> Any:
        return self.daemon.reconciler

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
    settings = load_settings(config, environ={})
    daemon = build(settings, config_dir=root)
    cleanup.add("close the store", daemon.store.close)
    require_internals(daemon)
    world = World(root, repo, config, daemon, prefix, kind, window)
    instrument(world.reconciler, world.counts)
    return world


def require_internals(daemon: Any) -> None:
    """The deployer internals this benchmark leans on; stop with their names if any moved."""
    from deployer import reconcile

    wanted = {"reconciler": (daemon.reconciler, ["_probe", "_wait_healthy", "_snapshot_at", "runtimes", "store",
                                                 "reconcile_source"]),
              "reconciler (snapshots)": (getattr(daemon.reconciler, "http", None) or reconcile, ["fetch_info"]),
              "supervisor runtime": (daemon.runtimes["supervisor"], ["_reload", "_call", "_prepare_dirs",
                                                                     "_program_file", "templates_dir", "log_dir",
                                                                     "user", "rpc"])}
    if "docker" in daemon.runtimes:
        wanted["docker runtime"] = (daemon.runtimes["docker"], ["engine"])
    missing = [f"{owner}.{name}" for owner, (obj, names) in wanted.items() for name in names if not hasattr(obj, name)]
    if missing:
        raise RuntimeError(f"deployer internals changed, update bench/reconcile_scale.py: missing {', '.join(missing)}")


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
    from deployer import reconcile
    from deployer.health import Probe
    from deployer.model.status import Trigger

    started = time.monotonic()
    files: dict[str, str | bytes | None] = {"service.yaml": manifest(world, count)}
    if world.size == 0:
        files["svc/tiny.py"] = (ROOT / "bench" / "_tiny_service.py").read_text()
    world.repo.commit(files, f"{count} services")
    rec = world.reconciler
    real = rec.runtimes[world.runtime]
    fast = FastSetup(real) if image is None else FastDockerSetup(real, image)
    info_owner = rec.http if hasattr(getattr(rec, "http", None), "fetch_info") else reconcile
    saved = (rec._wait_healthy, rec._probe, info_owner.fetch_info)
    rec.runtimes[world.runtime] = fast
    rec._wait_healthy = lambda *args, **kwargs: 0.0
    rec._probe = lambda *args, **kwargs: Probe(False, "setup")
    info_owner.fetch_info = lambda *args, **kwargs: (None, "setup")
    try:
        result = rec.reconcile_source(SOURCE, trigger=Trigger.WEBHOOK, fetch=True)
        fast.flush()
    finally:
        rec.runtimes[world.runtime] = real
        rec._wait_healthy, rec._probe, info_owner.fetch_info = saved
    bad = {name: outcome for name, outcome in result.outcomes.items() if outcome not in ("succeeded", "noop")}
    if bad or result.error:
        raise RuntimeError(f"setup pass failed: {result.error} {dict(list(bad.items())[:5])}")
    world.size = count
    ports = [world.daemon.store.ports.of(name) for name in world.names(count)]
    wait_for(lambda: all(_answers(port) for port in ports), 300, f"{count} services answering /health", 0.5)
    if world.runtime == "supervisor":  # and supervisord calls them RUNNING (startsecs passed)
        wait_for(lambda: _all_running(real, world.names(count)), 120, "every program RUNNING", 0.5)
    return time.monotonic() - started


def _answers(port: int | None) -> bool:
    try:
        return port is not None and http_get(port, "/health", timeout=2)[0] == 200
    except OSError:
        return False


def _all_running(runtime: Any, names: list[str]) -> bool:
    states = {info["name"]: info["statename"] for info in runtime._call("getAllProcessInfo")}
    return all(states.get(name) == "RUNNING" for name in names)


# ---------------------------------------------------------------- measuring


def measure(world: World, passes: int, interval: float, py_spy: str | None = None) -> dict[str, Any]:
    """``passes`` no-op passes as the daemon runs them every ``interval`` seconds, then the what-ifs.

    The reconciler spreads some per-service work over time (log/info snapshots once a minute per
    service, spread by name; unchanged observations written again once a minute). Waiting a real
    interval between passes would make this benchmark take minutes per size, so before each pass
    those clocks are moved back by ``interval``: each pass then does what a pass of the daemon does
    ``interval`` seconds after the previous one. Six passes at 10 s cover a simulated minute.
    """
    one_pass(world, interval)  # warm-up: absorbs what the fast setup left behind (not measured)
    spy = PySpy(py_spy, _own_pid(), f"reconcile_scale-{world.runtime}-{world.size}", gil=True)
    with spy:
        runs = [one_pass(world, interval) for _ in range(passes)]
    rss, hwm = rss_mb(_own_pid())
    what_if = {name: [one_pass(world, interval, probe) for _ in range(passes)]
               for name, probe in what_if_probes().items()}
    busiest = max(runs, key=lambda r: r["seconds"])
    return {"size": world.size, "runs": runs, "interval": interval,
            "seconds": median([r["seconds"] for r in runs]), "max_seconds": busiest["seconds"],
            "runtime_calls": median([r["runtime_calls"] for r in runs]),
            "max_runtime_calls": max(r["runtime_calls"] for r in runs),
            "calls": min(runs, key=lambda r: r["runtime_calls"])["calls"], "busiest_calls": busiest["calls"],
            "rss_mb": rss, "hwm_mb": hwm, "listing": listing_floor(world), "profile": spy.summary(),
            "what_if": {name: median([r["seconds"] for r in runs]) for name, runs in what_if.items()}}


def age_clocks(reconciler: Any, seconds: float) -> None:
    """Move the reconciler's per-service clocks back, as if ``seconds`` had passed."""
    snapshots = reconciler._snapshot_at
    for name, at in list(snapshots.items()):
        snapshots[name] = at - seconds
    written = getattr(reconciler, "_written", None)
    if isinstance(written, dict):
        for name, (observed, at) in list(written.items()):
            written[name] = (observed, at - seconds)


def one_pass(world: World, interval: float, probe: Callable[..., Any] | None = None) -> dict[str, Any]:
    """One ``SCHEDULE`` pass (what the periodic reconcile runs); it must be a no-op for every service."""
    from deployer.model.status import Trigger

    rec, counts = world.reconciler, world.counts
    age_clocks(rec, interval)
    saved = rec._probe
    if probe is not None:
        rec._probe = counts.wrap("http.probe", probe)
    counts.clear()
    try:
        started = time.monotonic()
        result = rec.reconcile_source(SOURCE, trigger=Trigger.SCHEDULE, fetch=False)
        took = time.monotonic() - started
    finally:
        rec._probe = saved
    outcomes = Counter(result.outcomes.values())
    if set(outcomes) - {"noop"} or len(result.outcomes) != world.size:
        raise RuntimeError(f"not a no-op pass at {world.size}: {dict(outcomes)} {result.error}")
    return {"seconds": took, "runtime_calls": runtime_calls(counts), "calls": dict(counts),
            "call_seconds": {key: round(value, 4) for key, value in counts.seconds.items()}}


def what_if_probes() -> dict[str, Callable[..., Any]]:
    """A proposed change, measured in the same run (never deployer's committed behaviour).

    no-probe: steady services are not probed over HTTP in the pass at all (health probing moved out
    of the reconcile pass to its own cadence): what the pass costs without it.
    """
    from deployer.health import Probe

    return {"no-probe": lambda url, timeout=2.0: Probe(True, "HTTP 200")}


def _own_pid() -> int:
    import os

    return os.getpid()


def listing_floor(world: World, rounds: int = 5) -> float:
    """The bare listing of the runtime, timed from outside deployer (median of ``rounds``)."""
    times = []
    for _ in range(rounds):
        started = time.monotonic()
        if world.runtime == "supervisor":
            from bench.common import supervisor_rpc

            supervisor_rpc(world.root / "state" / "supervisor" / "supervisor.sock").supervisor.getAllProcessInfo()
        else:
            import docker

            client = docker.APIClient(version="auto")
            started = time.monotonic()
            client.containers(all=True, filters={"label": ["deployer.managed=true"]})
            client.close()
        times.append(time.monotonic() - started)
    return median(times)


def daemon_check(cleanup: Cleanup, world: World, seconds: float) -> list[dict[str, Any]]:
    """The real daemon on the same state: its RSS and its own pass-duration metric after a few passes.

    Run twice: as configured, and with ``MALLOC_ARENA_MAX=2`` (a WHAT-IF: glibc then keeps two
    malloc arenas instead of one per thread that allocates, so memory freed by the daemon's many
    short-lived threads is reused instead of left fragmented across arenas).
    """
    world.daemon.store.close()
    text = world.config.read_text().replace("interval = 3600\npoll_interval", "interval = 5\npoll_interval", 1)
    world.config.write_text(text)
    checks = []
    for label, env in (("as configured", {}), ("WHAT-IF MALLOC_ARENA_MAX=2", {"MALLOC_ARENA_MAX": "2"})):
        daemon = start_daemon(cleanup, world.config, world.root / "state", env=env, timeout=180)
        deadline = time.monotonic() + seconds
        peak, passes, total = 0.0, 0, 0.0
        while time.monotonic() < deadline:
            peak = max(peak, rss_mb(daemon.process.pid)[0])
            metrics = http_get(daemon.port, "/metrics", timeout=10)[1].decode()
            count = re.search(rf'deployer_reconcile_pass_duration_seconds_count{{source="{SOURCE}"}} ([0-9.e+]+)',
                              metrics)
            summed = re.search(rf'deployer_reconcile_pass_duration_seconds_sum{{source="{SOURCE}"}} ([0-9.e+]+)',
                               metrics)
            if count and summed:
                passes, total = int(float(count.group(1))), float(summed.group(1))
            if passes >= 5:
                break
            time.sleep(1)
        rss = rss_mb(daemon.process.pid)
        terminate(daemon.process, 30)
        checks.append({"label": label, "rss_mb": rss[0], "hwm_mb": rss[1], "peak_rss_mb": max(peak, rss[0]),
                       "passes": passes, "mean_pass_s": total / passes if passes else math.nan})
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
    parser.add_argument("--docker-sizes", default="50,100", help="Docker container counts ('' to skip)")
    parser.add_argument("--passes", type=int, default=6, help="no-op passes measured at each size")
    parser.add_argument("--interval", type=float, default=10.0,
                        help="the reconcile interval the passes emulate (deployer.toml's default: 10 s)")
    parser.add_argument("--quick", action="store_true", help="50 programs and 50 containers only")
    parser.add_argument("--no-daemon-check", action="store_true",
                        help="skip running the real daemon at the largest Supervisor size")
    parser.add_argument("--py-spy", default="off", metavar="PATH|auto|off",
                        help="sample the steady passes at the largest sizes with py-spy (optional)")
    parser.add_argument("--timeout", type=float, default=900, help="hard limit for the whole script, seconds")
    args = parser.parse_args()
    py_spy = find_py_spy(args.py_spy)
    sizes = [50] if args.quick else [int(s) for s in args.sizes.split(",") if s.strip()]
    docker_sizes = [50] if args.quick else [int(s) for s in args.docker_sizes.split(",") if s.strip()]
    report = Report("reconcile_scale", "4. No-op reconcile pass at scale",
                    params={"sizes": sizes, "docker_sizes": docker_sizes, "passes": args.passes,
                            "interval": args.interval})
    results: dict[str, list[dict[str, Any]]] = {"supervisor": [], "docker": []}
    with Cleanup(args.timeout) as cleanup:
        for kind, wanted in (("supervisor", sizes), ("docker", docker_sizes)):
            if not wanted:
                continue
            try:
                _run_kind(cleanup, kind, wanted, args, py_spy, results)
            except Exception as exc:  # report what was measured; say what failed
                log(f"{kind}: failed: {type(exc).__name__}: {exc}")
                report.notes.append(f"{kind}: FAILED after the sizes above: {type(exc).__name__}: {exc}")
        _report(report, results)
        report.samples = results
    report.finish()
    return 0


def _run_kind(cleanup: Cleanup, kind: str, wanted: list[int], args: argparse.Namespace, py_spy: str | None,
              results: dict[str, list[dict[str, Any]]]) -> None:
    image = scratch_image(cleanup) if kind == "docker" else None
    world = make_world(cleanup, kind, max(wanted), image)
    base_rss = rss_mb(_own_pid())[0]
    for size in sorted(wanted):
        log(f"{kind}: growing to {size} services (setup)")
        setup = grow(world, size, image)
        log(f"{kind}: {size} up after {setup:.1f} s; measuring {args.passes} passes + what-ifs")
        measured = measure(world, args.passes, args.interval, py_spy if size == max(wanted) else None)
        measured.update(setup_s=setup, base_rss_mb=base_rss)
        results[kind].append(measured)
        log(f"{kind} {size}: pass {measured['seconds']:.3f} s, runtime calls "
            f"{measured['runtime_calls']:.0f}, rss {measured['rss_mb']:.0f} MB")
    if kind == "supervisor" and not args.no_daemon_check:
        log(f"the real daemon on the {world.size}-service state (cross-check)")
        results["daemon_check"] = daemon_check(cleanup, world, 90)
    stop_supervisord(world.root / "state")


def _report(report: Report, results: dict[str, list[dict[str, Any]]]) -> None:
    for kind in ("supervisor", "docker"):
        rows = results.get(kind) or []
        for measured in rows:
            size = measured["size"]
            big = kind == "supervisor" and size == 500
            target = f"< {PASS_TARGET * 1000:.0f} ms" if big else ""
            report.add(f"{kind} {size}: no-op pass (median)", measured["seconds"], measured["listing"], "s",
                       target=target, met=(measured["seconds"] < PASS_TARGET) if big else None,
                       note=f"median of {len(measured['runs'])} passes, {measured['interval']:g} s apart (emulated); "
                            "baseline: one bare listing of the runtime")
            report.add(f"  {kind} {size}: busiest pass of the simulated minute", measured["max_seconds"],
                       measured["listing"], "s", target=target,
                       met=(measured["max_seconds"] < PASS_TARGET) if big else None)
            for name, seconds in (measured.get("what_if") or {}).items():
                report.add(f"  {kind} {size}: WHAT-IF {name}", seconds, measured["listing"], "s",
                           target=target, met=(seconds < PASS_TARGET) if big else None,
                           note="a proposed change measured in this run, not the committed code (see README)")
            report.add(f"  {kind} {size}: runtime calls per pass (median / busiest)", measured["runtime_calls"],
                       measured["max_runtime_calls"], "calls",
                       note="supervisord XML-RPC + Docker API, all runtimes; baseline column: the busiest pass")
            report.add(f"  {kind} {size}: process RSS", measured["rss_mb"], measured["base_rss_mb"], "MB",
                       target=f"< {RSS_TARGET:.0f} MB" if big else "", met=(measured["rss_mb"] < RSS_TARGET) if big
                       else None, note="in-process (deployer.app.build wiring); baseline: same process before any "
                                       "service")
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
    checks = results.get("daemon_check") or []
    size = (results.get("supervisor") or [{}])[-1].get("size", "?")
    for check in checks:
        what_if = check["label"].startswith("WHAT-IF")
        report.add(f"{'  ' if what_if else ''}real daemon, {size} services: RSS ({check['label']})", check["rss_mb"],
                   None, "MB", target=f"< {RSS_TARGET:.0f} MB", met=check["rss_mb"] < RSS_TARGET,
                   note=f"deployer serve on the same state after {check['passes']} passes (peak "
                        f"{check['peak_rss_mb']:.0f} MB); mean pass {check['mean_pass_s']:.2f} s by its own metric, "
                        "the start-up pass (fetch, re-resolution of every service) included")
    for kind in ("supervisor", "docker"):
        rows = results.get(kind) or []
        if rows and rows[-1].get("profile"):
            report.notes.append(profile_note(f"{kind} {rows[-1]['size']} passes", rows[-1]["profile"]))
        if rows:
            keys = {key for run in rows[-1]["runs"] for key in run.get("call_seconds", {})}
            spent = {key: median([run.get("call_seconds", {}).get(key, 0.0) for run in rows[-1]["runs"]])
                     for key in keys}
            top = sorted(spent.items(), key=lambda item: -item[1])[:10]
            report.notes.append(f"{kind} {rows[-1]['size']}, median seconds per pass inside counted calls (nested "
                                "ones overlap; http.probe runs on 16 threads): "
                                + ", ".join(f"{key} {value * 1000:.0f} ms" for key, value in top))
            for label, per in (("quietest", rows[-1]["calls"]), ("busiest", rows[-1]["busiest_calls"])):
                top = sorted(per.items(), key=lambda item: -item[1])[:12]
                report.notes.append(f"{kind} {rows[-1]['size']}, calls in the {label} pass: "
                                    + ", ".join(f"{key} {value}" for key, value in top))


if __name__ == "__main__":
    sys.exit(main())
