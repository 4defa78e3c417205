"""Truthful state, end to end: the daemon under uvicorn, a real supervisord, a real git repository.

A revision that dies at import is caught in seconds (not after its 60 s health timeout) and the
API never says healthy while nothing answers; after the rollback the service is healthy on its
own (non-default) health path; a revision that crash-loops after passing its gate is shown
failing and recorded; a restarted deployer shows a service that kept running as running and
healthy from its first observation.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers import (
    Background,
    Daemon,
    GitRepo,
    local_source,
    more_passes,
    queue_drained,
    start_daemon,
    stop_supervisord,
    wait_for,
    write_config,
)

NAME = "truth"
SERVER = '''
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MODE = os.environ["MODE"]
if MODE == "dies-at-import":
    time.sleep(2)  # a slow import (a model library) before the one that fails
    import a_model_library_that_is_missing  # noqa: F401


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/ready" else 404)
        self.end_headers()
        self.wfile.write(os.environ["VERSION"].encode())

    def log_message(self, *args):
        pass


if MODE == "dies-later":  # passes its gate, then dies: supervisord restarts it, again and again
    threading.Timer(3, lambda: (print("RuntimeError: lost the model store", flush=True), os._exit(3))).start()
print("serving", MODE, flush=True)
ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
'''


def manifest(mode: str, version: str) -> str:
    return (f"name: {NAME}\ncommand: python server.py\nport: auto\nenv: {{MODE: {mode}, VERSION: \"{version}\"}}\n"
            "health: {path: /ready, timeout: 60}\n")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("truthful")
    repo = GitRepo.create(root / "repo.git", root / "work")
    repo.commit({"service.yaml": manifest("good", "1"), "server.py": SERVER}, "good")
    config, _ = write_config(root, sources=local_source("models"))
    world: dict[str, Any] = {"root": root, "repo": repo, "config": config}
    world["daemon"] = start_daemon(config, root / "state", timeout=90)
    try:
        yield world
    finally:
        world["daemon"].stop()
        stop_supervisord(root / "state")


def service(world: dict[str, Any]) -> dict[str, Any]:
    found = world["daemon"].service(NAME)
    assert found is not None
    return found


def serving(world: dict[str, Any], version: str) -> dict[str, Any]:
    """Commit (when needed) the good server at ``version``, ask for a pass, wait until it serves."""
    repo: GitRepo = world["repo"]
    if (repo.work / "service.yaml").read_text() != manifest("good", version):
        repo.commit({"service.yaml": manifest("good", version)}, f"good {version}")
    assert world["daemon"].request_pass().status_code == 202

    def ready() -> dict[str, Any] | None:
        found = world["daemon"].service(NAME)
        done = found and found["last_attempt"] and found["last_attempt"]["outcome"] != "running"
        return found if done and found["healthy"] and found["running_sha"] == repo.shas[-1] else None

    found = wait_for(ready, 120, f"{NAME} serving version {version}")
    queue_drained(world["daemon"])
    return found


def answers(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/ready", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


class LieDetector(Background):
    """Polls the API while probing the port: a "healthy" bracketed by two refused probes is a lie."""

    def __init__(self, daemon: Daemon, port: int) -> None:
        super().__init__()
        self.daemon, self.port = daemon, port
        self.lies: list[str] = []
        self.samples = 0

    def _run(self) -> None:
        while not self._stop.is_set():
            before = answers(self.port)
            said = self.daemon.service(NAME) or {}
            after = answers(self.port)
            self.samples += 1
            if said.get("healthy") and not before and not after:
                self.lies.append(f"{said.get('state')} healthy={said.get('healthy')} {said.get('detail')}")
            self._stop.wait(0.05)


def test_a_revision_that_dies_at_import_is_caught_in_seconds_and_never_shown_healthy(world: dict[str, Any]) -> None:
    good = serving(world, "1")
    previous = good["attempts"][0]["id"]
    world["repo"].commit({"service.yaml": manifest("dies-at-import", "2")}, "dies at import")
    with LieDetector(world["daemon"], good["port"]) as detector:
        started = time.monotonic()
        assert world["daemon"].request_pass().status_code == 202

        def finished() -> dict[str, Any] | None:
            attempts = service(world)["attempts"]
            newest = attempts[0] if attempts else None
            return newest if newest and newest["id"] > previous and newest["outcome"] != "running" else None

        attempt = wait_for(finished, 20, "the failed attempt (health.timeout is 60 s)")
        took = time.monotonic() - started
    print(f"\ndies at import: attempt over after {took:.1f}s (health.timeout 60 s), {detector.samples} API samples")
    assert not detector.lies, detector.lies
    assert attempt["outcome"] == "rolled_back" and attempt["reason"] == "HealthCheckFailed", attempt
    message = attempt["message"]
    cause = "ModuleNotFoundError: No module named 'a_model_library_that_is_missing' (at server.py:"
    assert message.count(cause) == 1, message
    assert "/checkouts/" not in message and "the process exited" in message, message
    health = next(step for step in attempt["steps"] if step["name"] == "health")
    assert health["output"].count("ModuleNotFoundError") >= 1  # the whole tail is kept with the step

    # After the rollback: probed on its own path (/ready), healthy, and the page says so truthfully.
    after = wait_for(lambda: (found := service(world))["healthy"] and found, 15, "healthy after the rollback")
    assert after["running_revision"] == good["running_revision"] and after["state"] == "running"
    page = world["daemon"].get(f"/services/{NAME}").text
    banner = page.split('<div class="banner', 1)[1].split("</div>", 1)[0]
    assert "previous revision kept serving" in banner and "/checkouts/" not in banner, banner
    assert banner.count("ModuleNotFoundError") == 1 and f'href="#attempt-{attempt["id"]}"' in banner, banner

    # A plain `deployer reconcile` does not try the held revision again (no new outage).
    assert world["daemon"].request_pass().status_code == 202
    queue_drained(world["daemon"])
    assert service(world)["attempts"][0]["id"] == attempt["id"]
    plan = world["daemon"].get("/api/plan").json()
    held = next(action for action in plan["actions"] if action["service"] == NAME)
    assert held["reason"].startswith(f"held: revision {service(world)['desired_revision']} failed (HealthCheckFailed")


def test_a_revision_that_crash_loops_after_its_gate_is_shown_failing(world: dict[str, Any]) -> None:
    serving(world, "3")
    world["repo"].commit({"service.yaml": manifest("dies-later", "4")}, "dies 3 s after each start")
    assert world["daemon"].request_pass().status_code == 202

    def failing() -> dict[str, Any] | None:
        found = service(world)
        return found if found["state"] == "failed" and not found["healthy"] else None

    found = wait_for(failing, 45, "the crash loop shown as failed")
    assert "crash loop after its gate passed" in found["detail"], found
    assert "RuntimeError: lost the model store" in found["detail"], found
    crash = found["attempts"][0]
    assert (crash["trigger"], crash["outcome"], crash["reason"]) == ("drift", "failed", "CrashLoop"), crash
    assert found["attempts"][1]["outcome"] == "succeeded"  # its gate had passed


def test_a_restarted_deployer_shows_a_running_service_running_from_its_first_observation(
        world: dict[str, Any]) -> None:
    good = serving(world, "5")
    world["daemon"].stop()
    restarted = datetime.now(UTC)
    world["daemon"] = start_daemon(world["config"], world["root"] / "state", timeout=90)
    seen: list[dict[str, Any]] = []

    def observed() -> bool:
        found = service(world)
        at = found["observed_at"]
        if at and datetime.fromisoformat(at).replace(tzinfo=UTC) > restarted:
            seen.append(found)
        return bool(seen)

    wait_for(observed, 60, "the restarted deployer's first observation", interval=0.05)
    sampled = threading.Thread(target=lambda: more_passes(world["daemon"], "models", 3))
    sampled.start()
    while sampled.is_alive():  # and every answer until three more passes are over
        observed()
        sampled.join(0.05)
    wrong = [(entry["state"], entry["healthy"], entry["detail"]) for entry in seen
             if entry["state"] != "running" or not entry["healthy"]]
    assert not wrong, wrong
    assert answers(good["port"]) and service(world)["running_revision"] == good["running_revision"]


def test_state_dir_paths_stay_out_of_the_answers(world: dict[str, Any]) -> None:
    state = str(Path(world["root"]) / "state")
    listing = world["daemon"].get("/api/services").text
    assert "/checkouts/" not in listing and f"{state}/checkouts" not in listing
