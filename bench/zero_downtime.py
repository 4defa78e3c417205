"""Benchmark: requests lost while a service is redeployed, blue-green behind the gateway vs recreate.

A service that takes ``--boot`` seconds (3) to load its "model" before it opens its port, deployed
by the real daemon with its embedded nginx and supervisord. A request loop (``--rate`` 50/s, bounded
in count and time, loopback only; one httpx client reusing keep-alive connections) calls it through
the gateway path and through its sticky port while ``--redeploys`` (10) code-only revisions and
``--failing`` (3) revisions that cannot load their model are pushed, one after the other, each
waited for. The same run is made with ``rollout: {strategy: recreate}``, the baseline: it counts
its failures and the seconds the service did not answer. Also: the gateway hop's cost, p50/p99
through the gateway path vs the slot's port; and the handover: a service deployed without the
gateway, moved behind it by turning ``[gateway]`` on and restarting deployer, called on its
sticky port meanwhile (``--handover-rate`` 200/s, a new connection per request, plus a keep-alive
loop beside it): the requests that failed and the seconds the port did not answer.

Run: ``.venv/bin/python bench/zero_downtime.py [--redeploys 10] [--failing 3] [--boot 3]``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    Cleanup,
    DaemonProc,
    Report,
    free_port,
    free_window,
    git,
    log,
    quantile,
    start_daemon,
    terminate,
    wait_for,
    write_config,
)

SERVER = '''import json, sys, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

VERSION = "{version}"
time.sleep({boot})  # loading the model: the port opens only after this
{crash}

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body are two writes: no 40 ms delayed-ACK stall behind a proxy

    def do_GET(self):
        body = json.dumps({{"version": VERSION}}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
'''


def manifest(strategy: str) -> str:
    return f"""name: slow-model
command: python server.py ${{PORT}}
health: {{path: /health, timeout: 30}}
gateway: {{path: /ai/slow-model/}}
rollout: {{strategy: {strategy}}}
"""


@dataclass
class Loop:
    """Requests to each URL in turn at ``rate`` per second, bounded; failures and outages counted."""

    urls: list[str]
    rate: float
    limit: int
    keepalive: bool = True  # False: a new connection per request
    answers: int = 0
    failures: int = 0
    outage: float = 0.0  # seconds during which the last request of every URL failed
    latency: dict[str, list[float]] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)  # "url: what" -> count
    _stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        failing_since: float | None = None
        limits = httpx.Limits() if self.keepalive else httpx.Limits(max_keepalive_connections=0)
        with httpx.Client(trust_env=False, timeout=5, limits=limits) as client:
            sent, started = 0, time.monotonic()
            while not self._stop.is_set() and sent < self.limit:
                for url in self.urls:
                    began = time.monotonic()
                    try:
                        status = client.get(url).status_code
                        ok, what = status == 200, f"HTTP {status}"
                    except httpx.HTTPError as exc:
                        ok, what = False, type(exc).__name__
                    if not ok:
                        key = f"{url.split('/')[2]}: {what}"
                        self.errors[key] = self.errors.get(key, 0) + 1
                    sent += 1
                    if ok:
                        self.answers += 1
                        self.latency.setdefault(url, []).append((time.monotonic() - began) * 1000)
                        if failing_since is not None:
                            self.outage += time.monotonic() - failing_since
                            failing_since = None
                    else:
                        self.failures += 1
                        failing_since = failing_since or began
                time.sleep(max(0.0, started + sent / self.rate - time.monotonic()))

    @contextmanager
    def running(self) -> Iterator[Loop]:
        thread = threading.Thread(target=self.run, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            thread.join(10)


def push(work: Path, files: dict[str, str], message: str) -> str:
    for name, text in files.items():
        (work / name).write_text(text)
    git(work, "add", "-A")
    git(work, "commit", "-q", "-m", message)
    git(work, "push", "-q", "origin", "HEAD:main")
    return git(work, "rev-parse", "HEAD").strip()


def settle(daemon: DaemonProc, sha: str, token: str, timeout: float = 120) -> dict[str, Any]:
    daemon.post("/api/reconcile", b"{}", {"Authorization": f"Bearer {token}"})

    def done() -> dict[str, Any] | None:
        service = daemon.service("slow-model")
        attempt = service.get("last_attempt") if service else None
        return service if service and service["desired_sha"] == sha and attempt and \
            attempt["revision"] == service["desired_revision"] and attempt["outcome"] != "running" else None

    return wait_for(done, timeout, f"the attempt for {sha[:7]}")


@dataclass
class World:
    """A fresh repository and daemon (embedded nginx and supervisord) for one run."""

    work: Path
    config: Path
    state: Path
    daemon: DaemonProc
    token: str
    gateway_port: int
    first: str


def make_world(name: str, strategy: str, args: argparse.Namespace, cleanup: Cleanup, root: Path, *,
               gateway: bool = True) -> World:
    base = root / name
    bare, work = base / "repo.git", base / "work"
    bare.mkdir(parents=True)
    git(bare, "init", "-q", "--bare", "--initial-branch=main")
    git(base, "clone", "-q", str(bare), str(work))
    git(work, "config", "user.email", "bench@example.com")
    git(work, "config", "user.name", "bench")
    first = push(work, {"service.yaml": manifest(strategy),
                        "server.py": SERVER.format(version="v0", boot=args.boot, crash="")}, "v0")
    listen, gateway_port = free_port(), free_port()
    ports = free_window(20000, 10)
    slots = free_window(ports + 10, 10)
    config = write_config(base / "deployer.toml", listen_port=listen, state_dir=base / "state", port_first=ports,
                          port_count=10, interval=3600, poll_interval=3600, docker="false",
                          extra=f'[[sources]]\nurl = "{bare}"\nname = "models"\n'
                                f'[gateway]\nenabled = {str(gateway).lower()}\n'
                                f'listen = "127.0.0.1:{gateway_port}"\ndrain = 1\n'
                                f'nginx = "{shutil.which("nginx") or "/usr/sbin/nginx"}"\n')
    config.write_text(config.read_text().replace("[ports]\n", f'[ports]\nslot_range = "{slots}-{slots + 9}"\n'))
    daemon = start_daemon(cleanup, config, base / "state")
    cleanup.add("stop the gateway", _stop_nginx, base / "state")
    token = (base / "state" / "api-token").read_text().strip()
    return World(work, config, base / "state", daemon, token, gateway_port, first)


def one_strategy(strategy: str, args: argparse.Namespace, cleanup: Cleanup, root: Path) -> dict[str, Any]:
    """A fresh daemon and repository; the loop runs through every redeploy and failing revision."""
    world = make_world(strategy, strategy, args, cleanup, root)
    daemon, work, token = world.daemon, world.work, world.token
    service = settle(daemon, world.first, token)
    sticky = f"http://127.0.0.1:{service['port']}/predict"
    path = f"http://127.0.0.1:{world.gateway_port}/ai/slow-model/predict"
    loop = Loop([path, sticky], rate=args.rate, limit=int(args.rate * 600))
    outcomes: list[str] = []
    with loop.running():
        for number in range(1, args.redeploys + args.failing + 1):
            crash = "raise SystemExit('cannot load the model')" if number > args.redeploys else ""
            sha = push(work, {"server.py": SERVER.format(version=f"v{number}", boot=args.boot, crash=crash)},
                       f"v{number}")
            outcomes.append(settle(daemon, sha, token)["last_attempt"]["outcome"])
            log(f"{strategy}: v{number} {outcomes[-1]}; {loop.failures} failed of {loop.answers + loop.failures}")
    slot_port = _slot_port(daemon)
    hop = _hop(path, f"http://127.0.0.1:{slot_port}/predict") if slot_port else {}
    return {"answers": loop.answers, "failures": loop.failures, "outage": loop.outage, "outcomes": outcomes,
            "errors": loop.errors,
            "sent": loop.answers + loop.failures, "hop": hop}


def handover(args: argparse.Namespace, cleanup: Cleanup, root: Path) -> dict[str, Any]:
    """A service running without the gateway, moved behind it: the sticky port's one handover."""
    world = make_world("handover", "blue-green", args, cleanup, root, gateway=False)
    service = settle(world.daemon, world.first, world.token)
    sticky = f"http://127.0.0.1:{service['port']}/predict"
    fresh = Loop([sticky], rate=args.handover_rate, limit=int(args.handover_rate * 300), keepalive=False)
    kept = Loop([sticky], rate=args.handover_rate / 4, limit=int(args.handover_rate * 75))
    with fresh.running(), kept.running():
        wait_for(lambda: fresh.answers > 50 and kept.answers > 10, 30, "both loops answered")
        terminate(world.daemon.process)  # the service goes on: supervisord runs it, not deployer
        world.config.write_text(world.config.read_text().replace("enabled = false", "enabled = true"))
        daemon = start_daemon(cleanup, world.config, world.state)

        def moved() -> dict[str, Any] | None:
            found = daemon.service("slow-model")
            attempt = (found or {}).get("last_attempt") or {}
            return found if found and found["slot"] and attempt.get("outcome") not in (None, "running") else None

        moved_to = wait_for(moved, 120, "the service moved behind the gateway")
        answered = fresh.answers
        wait_for(lambda: fresh.answers > answered + 100, 30, "more answers through nginx on the sticky port")
    steps = moved_to["attempts"][0].get("steps", [])
    switch = next((step["output"] for step in steps if step["name"] == "switch"), "")
    log(f"handover: {fresh.failures} of {fresh.answers + fresh.failures} failed (new connections), "
        f"{kept.failures} of {kept.answers + kept.failures} (keep-alive); {switch}")
    return {"outcome": moved_to["last_attempt"]["outcome"], "slot": moved_to["slot"], "switch": switch,
            "failures": fresh.failures, "sent": fresh.answers + fresh.failures, "outage": fresh.outage,
            "errors": fresh.errors, "keepalive_failures": kept.failures,
            "keepalive_sent": kept.answers + kept.failures, "keepalive_errors": kept.errors}


def _slot_port(daemon: DaemonProc) -> int | None:
    """The serving slot's port: the newest succeeded attempt's apply step names it."""
    service = daemon.service("slow-model") or {}
    for attempt in service.get("attempts", []):
        if attempt["outcome"] != "succeeded":
            continue
        for step in attempt.get("steps", []):
            if step["name"] == "apply" and " on port " in step["output"]:
                return int(step["output"].rsplit(" ", 1)[1])
    return None


def _hop(through: str, direct: str, count: int = 400) -> dict[str, float]:
    """The gateway hop: latency through nginx vs the slot's own port, alternating, same run."""
    samples: dict[str, list[float]] = {"gateway": [], "direct": []}
    with httpx.Client(trust_env=False, timeout=5) as client:
        for _ in range(count):
            for key, url in (("gateway", through), ("direct", direct)):
                began = time.monotonic()
                client.get(url)
                samples[key].append((time.monotonic() - began) * 1000)
    return {f"{key}_{q}": quantile(values, q / 100) for key, values in samples.items() for q in (50, 99)}


def _stop_nginx(state_dir: Path) -> None:
    """The embedded nginx outlives the daemon by design: the bench stops it itself."""
    for pid_file in (state_dir / "gateway" / "nginx.pid", state_dir / "gateway" / "inner" / "nginx.pid"):
        with contextlib.suppress(FileNotFoundError, ValueError, ProcessLookupError):
            os.kill(int(pid_file.read_text()), signal.SIGQUIT)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--redeploys", type=int, default=10)
    parser.add_argument("--failing", type=int, default=3)
    parser.add_argument("--boot", type=float, default=3.0)
    parser.add_argument("--rate", type=float, default=50.0)
    parser.add_argument("--handover-rate", type=float, default=200.0)
    parser.add_argument("--timeout", type=float, default=1500, help="the script's own time limit (s)")
    args = parser.parse_args()
    report = Report("zero_downtime", "Requests lost during redeploys: blue-green behind the gateway vs recreate",
                    params=vars(args))
    with Cleanup(args.timeout) as cleanup:
        root = cleanup.tempdir("zero-downtime-")
        results = {strategy: one_strategy(strategy, args, cleanup, root) for strategy in ("blue-green", "recreate")}
        results["handover"] = handover(args, cleanup, root)
    green, recreate, moved = results["blue-green"], results["recreate"], results["handover"]
    report.samples = results
    report.add(f"failed requests, {args.redeploys} redeploys + {args.failing} failing revisions", green["failures"],
               recreate["failures"], "n", target="0 with blue-green", met=green["failures"] == 0,
               note=f"of {green['sent']} (blue-green) and {recreate['sent']} (recreate) requests, "
                    f"{args.rate:g}/s through the gateway path and the sticky port")
    report.add("seconds the service did not answer", green["outage"], recreate["outage"], "s")
    hop = green["hop"]
    if hop:
        report.add("latency p50 through the gateway (vs the slot's port)", hop["gateway_50"], hop["direct_50"], "ms")
        report.add("latency p99 through the gateway (vs the slot's port)", hop["gateway_99"], hop["direct_99"], "ms")
    report.add("handover, gateway turned on for a running service: failed requests", moved["failures"], None, "n",
               note=f"of {moved['sent']} at {args.handover_rate:g}/s on the sticky port, a new connection each; "
                    f"keep-alive loop beside it: {moved['keepalive_failures']} of {moved['keepalive_sent']} failed "
                    f"({moved['keepalive_errors'] or 'none'}); deployer's switch step: {moved['switch']}")
    report.add("handover: seconds the sticky port did not answer", moved["outage"], None, "s")
    report.notes.append(f"outcomes blue-green: {green['outcomes']}; recreate: {recreate['outcomes']}")
    report.notes.append(f"failures blue-green: {green['errors'] or 'none'}")
    report.finish()


if __name__ == "__main__":
    main()
