"""Crash safety: SIGKILL the daemon in the middle of a deploy — while building, while
applying (writing the program file and starting it), while health-gating — then start
it again. The interrupted attempt is recorded as such, the service converges to the
branch head, supervisord has exactly one program for it, and it kept serving meanwhile.
"""

from __future__ import annotations

import functools
import http.server
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers import (
    EXAMPLE,
    Daemon,
    GitRepo,
    local_source,
    make_wheel,
    start_daemon,
    stop_supervisord,
    wait_for,
    write_config,
)


class SlowIndex(http.server.SimpleHTTPRequestHandler):
    """A --find-links page that answers slowly, so an environment build takes seconds."""

    delay = 4.0

    def do_GET(self) -> None:
        time.sleep(self.delay)
        super().do_GET()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def index(tmp_path: Path) -> Iterator[str]:
    wheels = tmp_path / "index"
    make_wheel(wheels, "slowdep", "0.1", "VALUE = 1\n")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(SlowIndex, directory=str(wheels)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()


def start(root: Path, port: int) -> Daemon:
    return start_daemon(root / "deployer.toml", root / "state")


@pytest.fixture
def world(tmp_path: Path) -> Iterator[dict[str, Any]]:
    repo = GitRepo.create(tmp_path / "repo.git", tmp_path / "work")
    repo.commit(repo.copy_tree(EXAMPLE), "v1")
    _, port = write_config(tmp_path, sources=local_source("models"), poll_interval=2)
    world: dict[str, Any] = {"root": tmp_path, "repo": repo, "port": port}
    world["daemon"] = start(tmp_path, port)
    try:
        yield world
    finally:
        world["daemon"].stop()
        stop_supervisord(tmp_path / "state")


def service_of(daemon: Daemon) -> dict[str, Any] | None:
    return daemon.service("text-classify")


def reconcile(world: dict[str, Any]) -> None:
    """Ask for a pass now, with the API token the daemon made in its state dir (none is configured)."""
    requested = world["daemon"].request_pass()
    assert requested.status_code == 202, requested.text


def program_count(root: Path) -> int:
    ctl = Path(sys.executable).parent / "supervisorctl"
    status = subprocess.run([str(ctl), "-c", str(root / "state" / "supervisor" / "supervisord.conf"), "status"],
                            capture_output=True, text=True)
    return sum(1 for line in status.stdout.splitlines() if line.strip())


def change_for(step: str, repo: GitRepo, index_url: str) -> dict[str, str | bytes | None]:
    """A commit whose deploy spends seconds in ``step``."""
    server = (repo.work / "server.py").read_text()
    if step == "build":
        return {"requirements.txt": f"--no-index\n--find-links {index_url}\nslowdep==0.1\n"}
    if step == "health":  # the new process takes 4 s before it listens
        return {"server.py": server.replace("def main() -> None:\n", "def main() -> None:\n    time.sleep(4)\n")}
    return {"server.py": server.replace('"status": "ok"', '"status": "ok", "v": 2')}  # apply: ~1 s startsecs


@pytest.mark.parametrize(("step", "after_step"), [("build", "checkout"), ("apply", "build"), ("health", "apply")])
def test_sigkill_mid_deploy_then_restart_converges(world: dict[str, Any], index: str, step: str,
                                                   after_step: str) -> None:
    daemon, repo, root = world["daemon"], world["repo"], world["root"]
    first = wait_for(lambda: (s := service_of(daemon)) and s["healthy"] and s["running_sha"] == repo.shas[0] and s,
                     60, "v1 deployed")
    old_port = first["port"]
    sha = repo.commit(change_for(step, repo, index), f"v2 slow in {step}")
    reconcile(world)

    def in_step() -> bool:
        service = service_of(daemon)
        attempt = service["attempts"][0] if service and service["attempts"] else None
        names = [s["name"] for s in attempt["steps"]] if attempt else []
        return bool(attempt and attempt["revision"] != first["running_revision"] and attempt["outcome"] == "running"
                    and names and names[-1] == after_step)

    wait_for(in_step, 60, f"the deploy to reach the {step} step", interval=0.02)
    daemon.process.send_signal(signal.SIGKILL)
    daemon.process.wait(10)
    # Services keep serving while the daemon is down (for the apply and health cases the new
    # process may be mid-restart, so only the build case can promise an uninterrupted old one).
    if step == "build":
        assert httpx.get(f"http://127.0.0.1:{old_port}/health", timeout=5).status_code == 200

    world["daemon"] = daemon = start(root, world["port"])
    converged = wait_for(
        lambda: (s := service_of(daemon)) and s["healthy"] and s["running_sha"] == sha
        and s["last_attempt"]["outcome"] == "succeeded" and s,
        90, "convergence to v2 after the restart")
    attempts = converged["attempts"]
    interrupted = [a for a in attempts if a["outcome"] == "interrupted"]
    assert len(interrupted) == 1 and interrupted[0]["reason"] == "Interrupted", attempts
    assert [s["name"] for s in interrupted[0]["steps"]][-1] == after_step
    assert not [a for a in attempts if a["outcome"] == "running"]
    assert program_count(root) == 1
    assert converged["port"] == old_port


def test_sigterm_during_a_deploy_finishes_it_and_leaves_consistent_history(world: dict[str, Any],
                                                                           index: str) -> None:
    daemon, repo, root = world["daemon"], world["repo"], world["root"]
    wait_for(lambda: (s := service_of(daemon)) and s["healthy"] and s, 60, "v1 deployed")
    sha = repo.commit(change_for("health", repo, index), "v2 slow to become healthy")
    reconcile(world)

    def in_health() -> bool:
        service = service_of(daemon)
        attempt = service["attempts"][0] if service and service["attempts"] else None
        return bool(attempt and attempt["outcome"] == "running" and attempt["steps"]
                    and attempt["steps"][-1]["name"] == "apply")

    wait_for(in_health, 60, "the deploy to reach the health gate", interval=0.02)
    started = time.monotonic()
    daemon.process.send_signal(signal.SIGTERM)
    # uvicorn re-raises the signal once its graceful shutdown is done: death by SIGTERM is
    # a clean stop (systemd counts it as success too).
    assert daemon.process.wait(60) in (0, -signal.SIGTERM)
    print(f"\nSIGTERM to exit during a health gate: {time.monotonic() - started:.2f}s")
    assert "deployer stopped" in daemon.log()

    world["daemon"] = daemon = start(root, world["port"])
    service = service_of(daemon)
    assert service is not None
    newest = service["attempts"][0]
    assert newest["outcome"] == "succeeded" and newest["revision"] == service["running_revision"], newest
    assert service["running_sha"] == sha
    assert not [a for a in service["attempts"] if a["outcome"] in ("running", "interrupted")]
