"""The API never blocks behind a deploy (issue 14, item 7), against the real daemon, supervisord and git:
``demo``, ``reconcile`` and ``rollback`` answer 202 at once with an operation; the operation ends
with what the work did (the attempt the pass started, the demo answers), and the CLI follows it,
echoing the attempt's steps, exiting 1 when the attempt failed.

A service whose process sleeps ``DELAY`` seconds before it listens makes a deploy that holds the
service's lock for that long. One daemon serves the module, following two local repositories.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.helpers import Daemon, GitRepo, local_source, start_daemon, stop_supervisord, wait_for, write_config

pytestmark = pytest.mark.timeout(300)

TOKEN = "long-actions-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
VERSIONS = itertools.count(2)
SERVER = '''
import json, os, sys, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

if os.environ.get("BROKEN"):
    sys.exit("cannot load the model: broken on purpose")
time.sleep(float(os.environ.get("DELAY", "0")))  # a slow model load: the gate waits for it


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        self.answer({"version": os.environ.get("VERSION")})

    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length") or 0))
        self.answer({"label": "positive", "version": os.environ.get("VERSION")})

    def answer(self, data):
        body = json.dumps(data).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
'''


def manifest(name: str, version: str, *, delay: float = 0, broken: bool = False) -> str:
    env = f'VERSION: "{version}", DELAY: "{delay}"' + (', BROKEN: "1"' if broken else "")
    return (f"name: {name}\ncommand: python server.py ${{PORT}}\nenv: {{{env}}}\n"
            "health: {path: /health, timeout: 30}\ndemo:\n  - {name: ping, input: demo/ping.json}\n")


def publish(repo: GitRepo, name: str, version: str, **options: Any) -> None:
    repo.commit({"service.yaml": manifest(name, version, **options), "server.py": SERVER,
                 "demo/ping.json": '{"text": "hello"}'}, f"{name} {version}")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("long-actions")
    repos = {}
    for source, service in (("models", "slowgate"), ("other", "plain")):
        repos[source] = GitRepo.create(root / f"{source}.git", root / f"work-{source}")
        publish(repos[source], service, "1.0")
    config, _ = write_config(root, sources=local_source("models", "models.git") + local_source("other", "other.git"))
    daemon = start_daemon(config, root / "state", env={"DEPLOYER_API_TOKEN": TOKEN})
    try:
        for service in ("slowgate", "plain"):
            settled(daemon, service)
        yield {"root": root, "repos": repos, "daemon": daemon}
    finally:
        daemon.stop()
        stop_supervisord(root / "state")


def settled(daemon: Daemon, name: str, after: int = 0) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        detail = daemon.service(name)
        newest = detail["attempts"][0] if detail and detail["attempts"] else None
        return detail if newest and newest["id"] > after and newest["outcome"] != "running" else None

    return wait_for(check, 90, f"{name} to finish an attempt")


def newest_attempt(daemon: Daemon, name: str) -> dict[str, Any]:
    detail = daemon.service(name)
    assert detail is not None and detail["attempts"]
    return dict(detail["attempts"][0])


def operation_done(daemon: Daemon, operation: dict[str, Any]) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        found = daemon.get(f"/api/operations/{operation['id']}").json()
        return found if found["done"] else None

    return wait_for(check, 90, f"operation {operation['id']} ({operation['action']}) to end")


def cli(world: dict[str, Any], *args: str) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("DEPLOYER_")}
    env["DEPLOYER_API_TOKEN"] = TOKEN
    return subprocess.run([sys.executable, "-m", "deployer", *args, "--url", world["daemon"].url],
                          cwd=world["root"], env=env, capture_output=True, text=True, timeout=240)


def test_demo_answers_at_once_while_a_deploy_holds_the_service(world: dict[str, Any]) -> None:
    daemon, version = world["daemon"], f"{next(VERSIONS)}.0"
    before = settled(daemon, "slowgate")["attempts"][0]["id"]
    publish(world["repos"]["models"], "slowgate", version, delay=5)
    asked = httpx.post(daemon.url + "/api/reconcile", json={"service": "slowgate"}, headers=AUTH, timeout=10)
    assert asked.status_code == 202, asked.text
    deploying = wait_for(lambda: (found := newest_attempt(daemon, "slowgate"))["id"] > before
                         and found["outcome"] == "running" and found, 60, "the deploy to start")

    started = time.monotonic()  # the deploy holds slowgate's lock for seconds: nothing here may wait for it
    demo = httpx.post(daemon.url + "/api/services/slowgate/demo", headers=AUTH, timeout=10)
    answered = time.monotonic() - started
    assert demo.status_code == 202 and answered < 1.0, (demo.status_code, answered, demo.text)
    assert demo.json()["action"] == "demo" and demo.json()["items"][0]["state"] in ("queued", "running")
    started = time.monotonic()
    assert daemon.get("/api/services").status_code == 200 and time.monotonic() - started < 1.0
    assert newest_attempt(daemon, "slowgate")["outcome"] == "running", "the deploy ended too soon to prove anything"

    reconcile = asked.json()
    assert reconcile["requested"] == ["models"] and reconcile["action"] == "reconcile"
    assert reconcile["items"][0]["service"] == "slowgate" and reconcile["items"][0]["state"] == "running"
    deployed = operation_done(daemon, reconcile)["items"][0]
    finished = newest_attempt(daemon, "slowgate")
    assert deployed["attempt"] == deploying["id"] == finished["id"] and deployed["ok"], deployed
    assert deployed["outcome"] == "succeeded" and deployed["revision"] == finished["revision"]
    ran = operation_done(daemon, demo.json())["items"][0]  # after the deploy, against what it left running
    assert ran["ok"] and ran["outcome"] == "passed", ran
    assert ran["message"] == f"1/1 demos passed against revision {finished['revision']}"
    runs = daemon.get("/api/services/slowgate/demos").json()["runs"]
    assert any(run["revision"] == finished["revision"] and run["results"][0]["ok"] for run in runs)

    shown = cli(world, "demo", "slowgate")  # the CLI follows the same way and prints the answers
    assert shown.returncode == 0, shown.stdout + shown.stderr
    assert f"slowgate: revision {finished['revision']}" in shown.stdout and "ping" in shown.stdout


def test_reconcile_follows_the_attempt_and_exits_1_when_it_fails(world: dict[str, Any]) -> None:
    daemon, repo = world["daemon"], world["repos"]["models"]
    settled(daemon, "slowgate")
    publish(repo, "slowgate", f"{next(VERSIONS)}.0")
    good = cli(world, "reconcile", "slowgate")
    assert good.returncode == 0, good.stdout + good.stderr
    lines = good.stdout.splitlines()
    assert lines[0] == "pass requested for models"
    assert any(line.split()[:2] == ["health", "ok"] for line in lines), good.stdout  # the attempt's steps
    assert lines[-1].split()[:2] == ["slowgate", "succeeded"] and "ReconciliationSucceeded" in lines[-1]

    publish(repo, "slowgate", f"{next(VERSIONS)}.0", broken=True)
    bad = cli(world, "reconcile", "slowgate", "--json")
    assert bad.returncode == 1, bad.stdout + bad.stderr
    item = json.loads(bad.stdout)["items"][0]
    failed = newest_attempt(daemon, "slowgate")
    assert item["attempt"] == failed["id"] and item["ok"] is False and item["outcome"] == failed["outcome"]
    assert failed["outcome"] in ("rolled_back", "failed"), failed

    held = cli(world, "reconcile", "slowgate")  # the failed revision is held: nothing tried, and said why
    assert held.returncode == 0 and "held: revision" in held.stdout, held.stdout + held.stderr
    retried = cli(world, "reconcile", "slowgate", "--retry")
    assert retried.returncode == 1 and "FAILED" in retried.stdout, retried.stdout + retried.stderr


def test_reconcile_of_every_source_has_a_line_per_source(world: dict[str, Any]) -> None:
    daemon = world["daemon"]
    publish(world["repos"]["other"], "plain", f"{next(VERSIONS)}.0")
    done = cli(world, "reconcile", "--json")
    final = json.loads(done.stdout)
    assert sorted(final["requested"]) == ["models", "other"] and final["done"], final
    by_source = {item["source"]: item for item in final["items"]}
    assert set(by_source) == {"models", "other"} and all(item["service"] is None for item in final["items"])
    assert by_source["other"]["ok"] and by_source["other"]["outcome"] == "succeeded", by_source
    assert "succeeded: plain" in by_source["other"]["message"]
    assert newest_attempt(daemon, "plain")["outcome"] == "succeeded"


def test_rollback_answers_with_the_operation_that_follows_its_attempt(world: dict[str, Any]) -> None:
    daemon, repo = world["daemon"], world["repos"]["models"]
    publish(repo, "slowgate", f"{next(VERSIONS)}.0")
    assert cli(world, "reconcile", "slowgate").returncode == 0
    running = settled(daemon, "slowgate")["running_revision"]
    done = cli(world, "rollback", "slowgate", "--why", "the new model mislabels")
    assert done.returncode == 0, done.stdout + done.stderr
    attempt = newest_attempt(daemon, "slowgate")  # (a periodic pass running when the pin came may deploy it first)
    assert attempt["outcome"] == "succeeded" and attempt["revision"] != running, attempt
    assert "health" in done.stdout and "slowgate  succeeded" in done.stdout
    pinned = httpx.post(daemon.url + "/api/services/slowgate/rollback", json={"revision": running}, headers=AUTH,
                        timeout=10)  # back again, by the API: the answer keeps its keys and adds the operation
    assert pinned.status_code == 202, pinned.text
    body = pinned.json()
    assert body["service"] == "slowgate" and body["override"]["revision"] == running and body["action"] == "rollback"
    item = operation_done(daemon, body)["items"][0]
    assert item["ok"] and item["attempt"] == newest_attempt(daemon, "slowgate")["id"] and item["revision"] == running
    assert cli(world, "unpin", "slowgate").returncode == 0
