"""A demo that calls a real API gates the deploy: the model service answers on
``/api/model/predict`` only with a ``token`` header (a per-service secret), reads that
token from a ``.env`` file deployer writes from another secret (``files:``), and keeps
answering ``/health`` even when its model cannot load. A revision whose model answers
500 is caught by the demo and rolled back; the previous revision keeps serving; no
token reaches a page, an API answer or the daemon's log.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers import GitRepo, local_source, start_daemon, stop_supervisord, wait_for, write_config

API_TOKEN = "api-token-for-the-demo-e2e"
MODEL_TOKEN = "tok-model-5f3a9c0e7b21"

SERVER = '''
import json, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

settings = dict(line.split("=", 1) for line in Path(".env").read_text().splitlines() if "=" in line)
model = Path("model.txt").read_text().strip()

class Handler(BaseHTTPRequestHandler):
    def send(self, status, data):
        body = json.dumps(data).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        self.send(200, {"ok": True})  # the heartbeat never touches the model

    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length") or 0))
        if self.path != "/api/model/predict":
            return self.send(404, {"error": "not found"})
        if self.headers.get("token") != settings["TOKEN"]:
            return self.send(401, {"error": "bad token " + str(self.headers.get("token"))})
        if model != "good":
            return self.send(500, {"error": "model cannot load: pickled by another version"})
        self.send(200, {"label": "positive", "scores": [0.93, 0.07]})

    def log_message(self, *args):
        pass

ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
'''

MANIFEST = """name: classifier
command: python server.py ${PORT}
health: {path: /health, timeout: 20}
files:
  - {path: .env, secret: DOTENV}
demo:
  - name: review
    path: /api/model/predict
    input: demo/review.json
    headers: {token: {secret: MODEL_TOKEN}}
    json: {label: positive, scores.0: {min: 0.5}}
  - {name: heartbeat, method: GET, path: /info, json: {ok: true}}
"""


def secret(state: Path, service: str, name: str, value: str) -> None:
    folder = state / "secrets" / service
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(folder / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.write(fd, value.encode())
    os.close(fd)


@pytest.fixture
def world(tmp_path: Path) -> Iterator[dict[str, Any]]:
    state = tmp_path / "state"
    secret(state, "classifier", "MODEL_TOKEN", MODEL_TOKEN + "\n")
    secret(state, "classifier", "DOTENV", f"TOKEN={MODEL_TOKEN}\n")
    repo = GitRepo.create(tmp_path / "repo.git", tmp_path / "work")
    config, _ = write_config(tmp_path, sources=local_source("models"), poll_interval=1)
    daemon = start_daemon(config, state, env={"DEPLOYER_API_TOKEN": API_TOKEN})
    try:
        yield {"root": tmp_path, "repo": repo, "daemon": daemon}
    finally:
        daemon.stop()
        stop_supervisord(state)


def newest_attempt(daemon: Any, after: int = 0) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        detail = daemon.service("classifier")
        newest = detail["attempts"][0] if detail and detail["attempts"] else None
        return newest if newest and newest["id"] > after and newest["outcome"] != "running" else None

    return wait_for(check, 90, "an attempt of classifier to finish")


def test_a_demo_with_a_path_and_a_secret_header_catches_a_model_that_answers_500(world: dict[str, Any]) -> None:
    daemon, repo, root = world["daemon"], world["repo"], world["root"]
    tree = {"service.yaml": MANIFEST, "server.py": SERVER, "model.txt": "good\n",
            "demo/review.json": '{"text": "works well"}'}
    repo.commit(tree, "v1: a model that loads")
    good = newest_attempt(daemon)
    assert good["outcome"] == "succeeded", good
    steps = {step["name"]: step for step in good["steps"]}
    assert steps["demo"]["ok"] and "review: HTTP 200" in steps["demo"]["output"]
    assert "heartbeat: HTTP 200" in steps["demo"]["output"]
    assert ".env (mode 0600) from secret DOTENV" in steps["files"]["output"]
    v1 = daemon.service("classifier")["running_revision"]

    # the .env deployer wrote: 0600, in the checkout the service runs in (which others cannot enter)
    env_files = list((root / "state").rglob(".env"))
    assert env_files and all(stat.S_IMODE(path.stat().st_mode) == 0o600 for path in env_files)

    repo.commit({"model.txt": "corrupt\n"}, "v2: a model that cannot load (health still answers)")
    caught = newest_attempt(daemon, after=good["id"])
    assert caught["outcome"] == "rolled_back" and caught["reason"] == "DemoFailed", caught
    assert "review: HTTP 500" in caught["message"] and "expected HTTP 200, got 500" in caught["message"]
    detail = daemon.service("classifier")
    assert detail["running_revision"] == v1

    # the previous revision keeps serving the real API
    answer = httpx.post(f"http://127.0.0.1:{detail['port']}/api/model/predict", json={"text": "x"},
                        headers={"token": MODEL_TOKEN}, timeout=10)
    assert answer.status_code == 200 and answer.json()["label"] == "positive"

    # `deployer demo` runs the same request (path, header) against the running revision
    env = {key: value for key, value in os.environ.items() if not key.startswith("DEPLOYER_")}
    env["DEPLOYER_API_TOKEN"] = API_TOKEN
    done = subprocess.run([sys.executable, "-m", "deployer", "demo", "classifier", "--url", daemon.url],
                          cwd=root, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "review" in done.stdout, done.stdout + done.stderr

    seen = {path: daemon.get(path).text for path in ("/", "/services/classifier", "/api/services/classifier",
                                                     "/api/services/classifier/demos", "/showcase")}
    assert daemon.get("/services/classifier").status_code == 200  # a demo with no input shows too
    seen["daemon log"] = daemon.log()
    for where, text in seen.items():
        assert MODEL_TOKEN not in text, f"the token is in {where}"
    assert "MODEL_TOKEN" in seen["/api/services/classifier"]  # the name is shown, never the value


def test_a_demo_without_its_secret_waits_and_deploys_nothing(world: dict[str, Any]) -> None:
    daemon, repo, root = world["daemon"], world["repo"], world["root"]
    (root / "state" / "secrets" / "classifier" / "MODEL_TOKEN").unlink()
    repo.commit({"service.yaml": MANIFEST, "server.py": SERVER, "model.txt": "good\n",
                 "demo/review.json": "{}"}, "v1 without its demo secret")
    attempt = newest_attempt(daemon)
    assert attempt["reason"] == "SecretMissing" and "MODEL_TOKEN" in attempt["message"], attempt
    assert attempt["message"].count("keeps serving") <= 1
    assert daemon.service("classifier")["running_revision"] is None
