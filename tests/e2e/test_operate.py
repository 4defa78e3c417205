"""Stop, start and restart against the real daemon, real supervisord (and nginx for blue/green),
driven by the ``deployer`` CLI with no token set up (it finds the one ``serve`` made):
a stop holds across a push and a deployer restart until a start; a batch over a group
reports each member, one failing; a restart behind the gateway loses no request, and one
that fails its gate leaves the serving slot as it was.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.test_gateway_bluegreen import Loop, make_world, tear_down
from tests.helpers import (
    Daemon,
    GitRepo,
    local_source,
    queue_drained,
    start_daemon,
    stop_supervisord,
    wait_for,
    write_config,
)

pytestmark = pytest.mark.timeout(300)

SERVER = '''
import json, os, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

VERSION = "{version}"
FLAG = os.environ.get("FLAG_FILE", "")
BROKEN = ""  # read once at start, like a model file: "once" breaks this start only, anything else every start
if FLAG and os.path.exists(FLAG):
    with open(FLAG) as handle:
        BROKEN = handle.read().strip()
    if BROKEN == "once":
        os.remove(FLAG)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def do_GET(self):
        body = json.dumps({{"version": VERSION, "pid": os.getpid()}}).encode()
        self.send_response(503 if BROKEN and self.path == "/health" else 200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
'''


def entry(name: str, flag: Path) -> str:
    return f"""  - name: {name}
    path: {name}
    command: python server.py ${{PORT}}
    group: fleet
    env: {{FLAG_FILE: "{flag}"}}
    health: {{path: /health, timeout: 6}}
"""


def fleet(root: Path, versions: dict[str, str]) -> dict[str, str | bytes | None]:
    files: dict[str, str | bytes | None] = {
        "service.yaml": "services:\n" + "".join(entry(name, root / f"{name}.flag") for name in versions)}
    files.update({f"{name}/server.py": SERVER.format(version=version) for name, version in versions.items()})
    return files


def cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The CLI as an operator on the daemon's host runs it: no DEPLOYER_* variable, no token given."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("DEPLOYER_")}
    return subprocess.run([sys.executable, "-m", "deployer", *args, "--config", str(config)], cwd=config.parent,
                          env=env, capture_output=True, text=True, timeout=240)


def answer(port: int | None, path: str = "/predict") -> dict[str, Any] | None:
    try:
        return dict(httpx.get(f"http://127.0.0.1:{port}{path}", timeout=2).json())
    except (httpx.HTTPError, ValueError):
        return None


def healthy(daemon: Daemon, name: str, version: str) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        service = daemon.service(name)
        if not service or not service["healthy"] or (service["last_attempt"] or {}).get("outcome") == "running":
            return None
        seen = answer(service["port"])
        return service if seen and seen["version"] == version else None

    return wait_for(check, 90, f"{name} healthy at {version}")


def lines(done: subprocess.CompletedProcess[str]) -> dict[str, str]:
    """The CLI's one line per service: name -> the rest of the line."""
    return {line.split()[0]: line for line in done.stdout.splitlines() if line.strip()}


@pytest.fixture
def world(tmp_path: Path) -> Iterator[dict[str, Any]]:
    repo = GitRepo.create(tmp_path / "repo.git", tmp_path / "work")
    repo.commit(fleet(tmp_path, {"op-a": "a1", "op-b": "b1", "op-c": "c1"}), "three")
    config, _ = write_config(tmp_path, sources=local_source("fleet"))
    daemon = start_daemon(config, tmp_path / "state")
    world = {"root": tmp_path, "repo": repo, "config": config, "daemon": daemon}
    try:
        yield world
    finally:
        world["daemon"].stop()
        stop_supervisord(tmp_path / "state")


def test_a_stop_holds_across_a_push_and_a_deployer_restart_until_started(world: dict[str, Any]) -> None:
    daemon, repo, config, root = world["daemon"], world["repo"], world["config"], world["root"]
    for name, version in (("op-a", "a1"), ("op-b", "b1"), ("op-c", "c1")):
        healthy(daemon, name, version)
    port = daemon.service("op-a")["port"]

    done = cli(config, "stop", "op-a", "--why", "free the GPU")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "stopped" in lines(done)["op-a"], done.stdout
    assert answer(port) is None, "nothing answers on a stopped service's port"
    service = daemon.service("op-a")
    assert service["state"] == "stopped" and service["override"] == "stopped"
    assert any(o["kind"] == "stopped" and o["why"] == "free the GPU" and "@" in o["who"]
               for o in service["overrides"])

    sha = repo.commit(fleet(root, {"op-a": "a2", "op-b": "b1", "op-c": "c1"}), "a2 while op-a is stopped")
    assert daemon.request_pass().status_code == 202
    wait_for(lambda: daemon.service("op-a")["desired_sha"] == sha, 60, "the new commit recorded")
    queue_drained(daemon)
    service = daemon.service("op-a")
    assert service["state"] == "stopped" and service["running_revision"] != service["desired_revision"]
    assert answer(port) is None, "a push does not start a stopped service"
    plan = cli(config, "plan")
    assert "not started while stopped" in plan.stdout, plan.stdout + plan.stderr
    page = daemon.get("/").text
    assert "not started while stopped" in page and "polled only" in page  # no webhook ever came for it

    daemon.stop()  # deployer restarts; supervisord and the services keep running
    world["daemon"] = daemon = start_daemon(config, root / "state")
    assert daemon.request_pass().status_code == 202
    queue_drained(daemon)
    assert daemon.service("op-a")["state"] == "stopped" and answer(port) is None

    done = cli(config, "start", "op-a")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "started" in lines(done)["op-a"], done.stdout
    service = healthy(daemon, "op-a", "a2")
    assert service["override"] is None and service["running_sha"] == sha


def test_a_batch_restart_over_a_group_reports_each_member_and_fails_for_one(world: dict[str, Any]) -> None:
    daemon, config, root = world["daemon"], world["config"], world["root"]
    before = {name: healthy(daemon, name, version)
              for name, version in (("op-a", "a1"), ("op-b", "b1"), ("op-c", "c1"))}
    pids = {name: answer(service["port"])["pid"] for name, service in before.items()}  # type: ignore[index]
    (root / "op-c.flag").write_text("once")  # op-c's restart reads a broken model file, once

    done = cli(config, "restart", "--group", "fleet", "--why", "reload the models")
    assert done.returncode == 1, done.stdout + done.stderr
    outcome = lines(done)
    assert set(outcome) == {"op-a", "op-b", "op-c"}, done.stdout
    assert "restarted" in outcome["op-a"] and "restarted" in outcome["op-b"], done.stdout
    assert "rolled_back" in outcome["op-c"] and "HealthCheckFailed" not in outcome["op-c"], done.stdout
    for name, version in (("op-a", "a1"), ("op-b", "b1"), ("op-c", "c1")):
        service = healthy(daemon, name, version)  # op-c put back as it was: the same revision, started again
        assert answer(service["port"])["pid"] != pids[name], f"{name} was restarted"  # type: ignore[index]
        assert service["running_revision"] == before[name]["running_revision"]
    attempt = daemon.service("op-a")["attempts"][0]
    assert attempt["trigger"] == "restart" and attempt["reason"] == "Restarted"
    assert "reload the models" in attempt["message"]
    failed = daemon.service("op-c")["attempts"][0]
    assert failed["outcome"] == "rolled_back" and failed["rolled_back_to"] == before["op-c"]["running_revision"]

    usage = cli(config, "restart")
    assert usage.returncode == 2 and "--all" in usage.stderr
    unknown = cli(config, "stop", "op-a", "nope")
    assert unknown.returncode == 1 and "nope" in unknown.stderr
    assert daemon.service("op-a")["override"] is None, "a refused batch changes nothing"


GATEWAY_MANIFEST = """name: slow
command: python server.py ${{PORT}}
env: {{FLAG_FILE: "{flag}"}}
health: {{path: /health, timeout: 6}}
gateway: {{path: /ai/slow/}}
"""


def test_a_restart_behind_the_gateway_loses_no_request_and_a_failed_one_keeps_the_serving_slot(
        tmp_path: Path) -> None:
    flag = tmp_path / "slow.flag"
    world = make_world(tmp_path, {"service.yaml": GATEWAY_MANIFEST.format(flag=flag),
                                  "server.py": SERVER.format(version="v1")})
    try:
        daemon, gateway, config = world["daemon"], world["gateway"], world["config"]
        first = healthy(daemon, "slow", "v1")
        path = f"{gateway}/ai/slow/predict"
        with Loop([path]) as loop:
            done = cli(config, "restart", "slow")
            assert done.returncode == 0, done.stdout + done.stderr
            service = daemon.service("slow")
            assert service["slot"] != first["slot"] and service["healthy"]
            steps = [step["name"] for step in service["attempts"][0]["steps"]]
            assert steps[-3:] == ["health", "switch", "drain"], steps

            flag.write_text("broken")  # every start from now on reads a broken model
            done = cli(config, "restart", "slow")
            assert done.returncode == 1 and "rolled_back" in done.stdout, done.stdout + done.stderr
            assert "kept serving" in done.stdout
        assert loop.failures == [] and loop.answers > 50, (loop.failures[:5], loop.answers)
        after = daemon.service("slow")
        assert after["slot"] == service["slot"] and after["healthy"], "the slot serving before still serves"
    finally:
        tear_down(world)
