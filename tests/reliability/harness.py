"""What every reliability case ends with: the services kept serving throughout (a request loop
counts failures), the history is complete (every attempt has an outcome), and the daemon converged
within a stated time after the fault cleared."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

from tests.helpers import Background, Daemon, GitRepo, wait_for

SERVER = """import http.server, os, sys
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        found = self.path in ("/health", "/info")
        body = os.environ.get("GREETING", "hi").encode() if found else b"no"
        self.send_response(200 if found else 404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
"""


def manifest(name: str, greeting: str, *, timeout: int = 30) -> str:
    return (f"name: {name}\ncommand: python server.py ${{PORT}}\nenv: {{GREETING: {greeting}}}\n"
            f"health: {{path: /health, timeout: {timeout}}}\n")


def publish(repo: GitRepo, name: str, greeting: str, **extra: str | bytes | None) -> str:
    return repo.commit({"server.py": SERVER, "service.yaml": manifest(name, greeting), **extra}, greeting)


def answer(port: int) -> str | None:
    try:
        response = httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)
    except httpx.HTTPError:
        return None
    return response.text if response.status_code == 200 else None


def serving(daemon: Daemon, name: str, greeting: str, timeout: float) -> float:
    """Wait until the service answers ``greeting`` on its port; the seconds it took."""
    started = time.monotonic()

    def check() -> bool:
        found = daemon.service(name)
        return bool(found and found.get("port") and answer(found["port"]) == greeting)

    wait_for(check, timeout, f"{name} serving {greeting!r}")
    return time.monotonic() - started


class RequestLoop(Background):
    """Calls a service's port every ``interval`` seconds on a thread of its own, a fresh connection each
    time, and counts what did not answer 200."""

    def __init__(self, port: int, interval: float = 0.05) -> None:
        super().__init__()
        self.port, self.interval = port, interval
        self.sent = 0
        self.failures: Counter[str] = Counter()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sent += 1
            try:
                response = httpx.get(f"http://127.0.0.1:{self.port}/health", timeout=5)
                if response.status_code != 200:
                    self.failures[f"HTTP {response.status_code}"] += 1
            except httpx.HTTPError as exc:
                self.failures[type(exc).__name__] += 1

    def assert_served(self) -> None:
        assert self.sent > 0, "the request loop sent nothing"
        assert not self.failures, f"{sum(self.failures.values())} of {self.sent} requests failed: {dict(self.failures)}"


def history_complete(daemon: Daemon, name: str) -> list[dict[str, Any]]:
    """Every attempt of the service has ended with an outcome (none left 'running' once idle)."""
    found = daemon.service(name)
    assert found is not None, f"{name} unknown to the daemon"
    attempts: list[dict[str, Any]] = found["attempts"]
    open_ = [attempt for attempt in attempts if attempt["outcome"] == "running" or not attempt["finished_at"]]
    assert not open_, f"attempts without an outcome: {open_}"
    return attempts


def state_of(daemon: Daemon, name: str) -> dict[str, Any]:
    found = daemon.service(name)
    assert found is not None
    return found


def wait_idle_history(daemon: Daemon, name: str, timeout: float = 60) -> list[dict[str, Any]]:
    def ended() -> list[dict[str, Any]] | None:
        try:
            return history_complete(daemon, name)
        except AssertionError:
            return None

    return wait_for(ended, timeout, f"every attempt of {name} to end")


def free_bytes(path: Path) -> int:
    import os

    stats = os.statvfs(path)
    return stats.f_bavail * stats.f_frsize
