"""``deployer serve`` with span tracing, for the benchmarks that split deployer's time by phase.

Wraps (without changing any deployer file) the functions a push-to-healthy pass goes through
— git, store, supervisord RPC, runtimes, env build, rendering, health probes, status reports,
the reconciler's own steps — and appends one JSON line per call to ``$BENCH_TRACE``:
``{"n": label, "t0": start, "t1": end, "th": thread}`` on ``time.monotonic``'s clock, which is
system-wide, so the bench process can line spans up with its own measurements.
Usage: ``python bench/_traced_serve.py serve --config deployer.toml`` (what common.start_daemon runs).
Without ``$BENCH_TRACE`` nothing is traced; ``$BENCH_TRACEMALLOC=FILE`` records allocations and
appends the top sites to FILE on each SIGUSR2 (for finding where the daemon's memory goes).
"""

from __future__ import annotations

import functools
import inspect
import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

_LOCK = threading.Lock()
_TRACE = os.environ.get("BENCH_TRACE")
_OUT = open(_TRACE, "a", buffering=1) if _TRACE else None  # noqa: SIM115 - lives as long as the process


def _emit(label: str, started: float, ended: float) -> None:
    if _OUT is None:
        return
    line = json.dumps({"n": label, "t0": started, "t1": ended, "th": threading.current_thread().name})
    with _LOCK:
        _OUT.write(line + "\n")


def _wrap(func: Any, label: Any) -> Any:
    """``label`` is a string, or a function of the call's arguments returning one."""

    @functools.wraps(func)
    def traced(*args: Any, **kwargs: Any) -> Any:
        started = time.monotonic()
        try:
            return func(*args, **kwargs)
        finally:
            _emit(label(*args, **kwargs) if callable(label) else label, started, time.monotonic())

    return traced


def _methods(cls: type, prefix: str, names: list[str] | None = None) -> None:
    missing = sorted(set(names or []) - set(vars(cls)))
    if missing:  # deployer changed: say so rather than measure less than the bench thinks
        print(f"bench tracer: {cls.__name__} has no {', '.join(missing)}; those spans are missing",
              file=sys.stderr, flush=True)
    for name, member in list(vars(cls).items()):
        if names is not None and name not in names:
            continue
        if names is None and name.startswith("_"):
            continue
        if inspect.isfunction(member):
            setattr(cls, name, _wrap(member, f"{prefix}.{name}"))


def install() -> None:
    from deployer import health
    from deployer.build import EnvBuilder
    from deployer.gitea import StatusReporter
    from deployer.reconcile import Reconciler
    from deployer.reconcile import resolve as resolve_module
    from deployer.reconcile.demos import DemoRunner
    from deployer.reconcile.execute import PassExecutor
    from deployer.reconcile.observe import Observer
    from deployer.reconcile.planner import PassPlanner
    from deployer.reconcile.prepare import Preparation
    from deployer.reconcile.resolve import Resolver
    from deployer.reconcile.rollout import Gate, Rollout
    from deployer.runtimes.docker import DockerRuntime, ImageBuilder, SwarmRuntime
    from deployer.runtimes.supervisor import SupervisorRuntime
    from deployer.runtimes.supervisor import runtime as supervisor_runtime
    from deployer.runtimes.supervisor.listing import ProcessListing
    from deployer.runtimes.supervisor.rpc import SupervisorRpc
    from deployer.source import GitSource
    from deployer.web.webhook import WebhookReceiver

    _methods(GitSource, "git")
    _trace_store_parts()
    _methods(EnvBuilder, "build", ["ensure"])
    _methods(StatusReporter, "status", ["report"])
    _methods(SupervisorRuntime, "sup", ["check", "observe", "apply", "stop", "start", "logs",
                                        "_unload", "_reload", "_start_and_wait"])
    _methods(ProcessListing, "sup", ["_with_port_holders"])
    _methods(DockerRuntime, "docker", ["check", "observe", "apply", "build", "logs", "_present", "_create",
                                       "_replace", "_start", "_settle", "_discard", "_stop"])
    _methods(ImageBuilder, "images", ["ensure", "prune", "exists", "recipe"])
    _methods(SwarmRuntime, "swarm", ["check", "observe", "apply", "build", "logs"])
    # The reconciler's rooms: the pass, one service's rollout, its gate, observation, resolution, demos.
    _methods(Reconciler, "rec", ["reconcile_source", "deploy"])
    _methods(PassPlanner, "rec", ["_recorded_commit", "_plan", "_probe_unknown"])
    _methods(PassExecutor, "rec", ["_execute_isolated", "_apply", "_leave"])
    _methods(Rollout, "rollout", ["deploy", "remove", "_roll_out", "_roll_back", "_observe_after", "_capture_after"])
    _methods(Preparation, "rollout", ["prepare"])
    _methods(Gate, "gate", ["check"])
    _methods(Observer, "observe", ["list", "record", "probe_due", "probe_unknown", "snapshot", "capture",
                                   "running_desired"])
    _methods(Resolver, "resolve", ["resolve"])
    _methods(DemoRunner, "demos", ["run"])
    _methods(WebhookReceiver, "webhook", ["_route"])
    _trace_engine_calls()
    rpc = SupervisorRpc
    rpc.call = _wrap(rpc.call, lambda self, method, *a, **k: f"rpc.{method}")  # type: ignore[method-assign]
    # Patched in the module that calls them: the runtime looks these names up in its own globals.
    supervisor_runtime.render_program = _wrap(supervisor_runtime.render_program, "render.program")  # type: ignore[attr-defined]
    supervisor_runtime.check_program = _wrap(supervisor_runtime.check_program, "render.check")  # type: ignore[attr-defined]
    resolve_module.load_manifest_with_text = _wrap(resolve_module.load_manifest_with_text,  # type: ignore[attr-defined]
                                                   "loader.manifest")
    # Every HTTP call to a service goes through one HttpChecks; the rooms bind its methods when the
    # daemon is built (after this), so wrapping the class traces the gate, each probe and /info.
    _methods(health.HttpChecks, "health", ["probe", "fetch_info"])
    checks = health.HttpChecks
    checks.wait_healthy = _wrap(checks.wait_healthy, "health.gate")  # type: ignore[method-assign]


def _trace_store_parts() -> None:
    """``store.<part>.<method>`` spans: each part the Store holds, wrapped when the Store is built."""
    from deployer.store import Store

    built = Store.__init__

    @functools.wraps(built)
    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        built(self, *args, **kwargs)
        for part_name, part in vars(self).items():
            if part_name == "db":
                continue
            for name, member in vars(type(part)).items():
                if inspect.isfunction(member) and not name.startswith("_"):
                    setattr(part, name, _wrap(getattr(part, name), f"store.{part_name}.{name}"))

    Store.__init__ = init  # type: ignore[method-assign]


class _TracedApi:
    """A docker APIClient whose method calls become ``dockerapi.<method>`` spans."""

    def __init__(self, api: Any) -> None:
        self._api = api

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._api, name)
        return _wrap(value, f"dockerapi.{name}") if callable(value) else value


def _trace_engine_calls() -> None:
    from deployer.runtimes.docker import Engine

    engine = Engine
    original = engine.api
    engine.api = lambda self: _TracedApi(original(self))  # type: ignore[method-assign]


def what_if(names: str) -> None:
    """Proposed deployer changes, patched in for a what-if run (``BENCH_WHATIF``, comma-separated).

    Never the default: a benchmark run with any of these says WHAT-IF in its title.
    """
    patches = {"stop-process": _stop_process, "inline-route": _inline_route, "audit-batch": _audit_batch,
               "switch-interval": _switch_interval, "no-passes": _no_passes, "no-audit": _no_audit,
               "no-port-scan": _no_port_scan, "gil-probe": _gil_probe}
    for name in names.split(","):
        if name not in patches:
            raise SystemExit(f"unknown BENCH_WHATIF {name!r} (known: {', '.join(patches)})")
        patches[name]()


def _stop_process() -> None:
    """SupervisorRuntime.stop with stopProcess instead of stopProcessGroup.

    stopProcess(wait) returns as soon as the process is gone; stopProcessGroup(wait) only on
    supervisord's next 1-second loop tick. deployer never writes [group:] sections, so the group
    named NAME holds exactly the process NAME.
    """
    from supervisor.xmlrpc import Faults

    from deployer.runtimes.supervisor import runtime as supervisor_runtime

    def stop(self: Any, name: str) -> None:
        self._call("stopProcess", name, True, ok={Faults.BAD_NAME, Faults.NOT_RUNNING},
                   timeout=self.rpc.timeout + supervisor_runtime._STOP_ALLOWANCE)

    supervisor_runtime.SupervisorRuntime.stop = stop  # type: ignore[method-assign]


def _inline_route() -> None:
    """The webhook's routing runs on the event loop (it no longer touches the database) instead of
    hopping to a worker thread and back for every request."""
    from deployer.web import webhook

    async def inline(func: Any, *args: Any, **kwargs: Any) -> Any:
        return func(*args, **kwargs)

    webhook.run_in_threadpool = inline  # type: ignore[attr-defined]


def _audit_batch() -> None:
    """The audit writer waits up to 100 ms to fill a batch instead of writing whatever one row is there."""
    import queue as queue_module

    from deployer.web import webhook

    def run(self: Any) -> None:
        while True:
            batch = [self._rows.get()]
            deadline = time.monotonic() + 0.1
            while len(batch) < webhook.AUDIT_BATCH and batch[-1] is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                try:
                    batch.append(self._rows.get(timeout=left))
                except queue_module.Empty:
                    break
            rows = [row for row in batch if row is not None]
            try:
                if rows:
                    self._write(rows)
            except Exception:
                webhook.log.exception("could not record %d webhook deliveries", len(rows))
            finally:
                for _ in batch:
                    self._rows.task_done()
            if len(rows) < len(batch):
                return

    webhook._AuditWriter._run = run  # type: ignore[attr-defined]


def _no_passes() -> None:
    """Isolation, not a proposal: while the file ``$BENCH_NO_PASSES_FLAG`` exists, requested passes are
    dropped (nothing is fetched or deployed), so the figures show webhook ingestion alone, without the
    reconcile work it causes competing for the CPU. The bench creates the file after its setup deploys."""
    from deployer import app

    flag = Path(os.environ.get("BENCH_NO_PASSES_FLAG") or "/nonexistent/bench-no-passes")
    real = app._run_pass  # type: ignore[attr-defined]

    def run_pass(reconciler: Any, request: Any, last_errors: Any) -> None:
        if not flag.exists():
            real(reconciler, request, last_errors)

    app._run_pass = run_pass  # type: ignore[attr-defined]


def _no_audit() -> None:
    """Isolation, not a proposal: delivery audit rows are dropped instead of written (no ORM insert)."""
    from deployer.web import webhook

    webhook._AuditWriter._write = lambda self, rows: None  # type: ignore[attr-defined]


def _no_port_scan() -> None:
    """Isolation, not a proposal: the supervisor runtime's listing never looks for who holds the port of a
    service that is not running (``port_holders``: a psutil scan of every socket of every process)."""
    from deployer.runtimes.supervisor import listing

    listing.port_holders = lambda *args, **kwargs: []  # type: ignore[attr-defined]


def _gil_probe() -> None:
    """Diagnosis, not a proposal: appends to ``$BENCH_GIL_PROBE`` (JSON lines, on time.monotonic's clock)
    every garbage collection longer than 2 ms, every time a thread sleeping 1 ms at a time woke more than
    5 ms late (it waited for the GIL), and every time the event loop did (``looplag``: the loop was busy
    or waited) — what keeps acknowledgements waiting. webhook_burst.py keeps the file in results/profiles
    and records the burst's start on the same clock (``started_monotonic``)."""
    import gc
    import json as json_module

    path = Path(os.environ.get("BENCH_GIL_PROBE") or os.devnull)
    path.parent.mkdir(parents=True, exist_ok=True)
    out = path.open("a", buffering=1)  # lives as long as the process
    started: dict[str, float] = {}

    def collected(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            started["gc"] = time.monotonic()
            return
        took = time.monotonic() - started.get("gc", time.monotonic())
        if took > 0.002:
            out.write(json_module.dumps({"n": f"gc{info['generation']}", "t0": started["gc"], "t1": time.monotonic(),
                                         "collected": info["collected"]}) + "\n")

    def lag() -> None:
        while True:
            asked = time.monotonic()
            time.sleep(0.001)
            woke = time.monotonic()
            if woke - asked > 0.006:
                out.write(json_module.dumps({"n": "lag", "t0": asked, "t1": woke}) + "\n")

    async def loop_lag() -> None:
        import asyncio

        while True:
            asked = time.monotonic()
            await asyncio.sleep(0.001)
            woke = time.monotonic()
            if woke - asked > 0.006:
                out.write(json_module.dumps({"n": "looplag", "t0": asked, "t1": woke}) + "\n")

    import uvicorn

    real_startup = uvicorn.Server.startup

    async def startup(self: Any, *args: Any, **kwargs: Any) -> None:
        import asyncio

        self._gil_probe_task = asyncio.get_running_loop().create_task(loop_lag())
        await real_startup(self, *args, **kwargs)

    uvicorn.Server.startup = startup  # type: ignore[method-assign]
    gc.callbacks.append(collected)
    threading.Thread(target=lag, name="gil-probe", daemon=True).start()


def _switch_interval() -> None:
    """A 1 ms GIL switch interval (CPython's default is 5 ms): the event loop waits less for the GIL."""
    sys.setswitchinterval(0.001)


def memory_dumps(path: str) -> None:
    """tracemalloc from the start; each SIGUSR2 appends the top allocation sites to ``path``."""
    import signal
    import tracemalloc

    tracemalloc.start(1)

    def dump(_signum: int, _frame: Any) -> None:
        snapshot = tracemalloc.take_snapshot()
        current, peak = tracemalloc.get_traced_memory()
        with open(path, "a") as out:
            out.write(f"== traced {current / 2**20:.1f} MB (peak {peak / 2**20:.1f} MB)\n")
            for stat in snapshot.statistics("filename")[:25]:
                out.write(f"{stat.size / 2**20:8.2f} MB {stat.count:8d} {stat.traceback[0].filename}\n")
            out.write("-- by line\n")
            for stat in snapshot.statistics("lineno")[:25]:
                frame = stat.traceback[0]
                out.write(f"{stat.size / 2**20:8.2f} MB {stat.count:8d} {frame.filename}:{frame.lineno}\n")

    signal.signal(signal.SIGUSR2, dump)


if __name__ == "__main__":
    if os.environ.get("BENCH_WHATIF"):
        what_if(os.environ["BENCH_WHATIF"])
    if os.environ.get("BENCH_TRACEMALLOC"):
        memory_dumps(os.environ["BENCH_TRACEMALLOC"])
    install()
    from deployer.cli import main

    sys.exit(main(sys.argv[1:]))
