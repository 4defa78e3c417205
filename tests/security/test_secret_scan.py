"""Secrets, checked by a scan and not by reading code: a service that prints its secret at
start, answers it in ``/info`` and crashes with it in a later revision; then every page, every
API answer, the daemon's log, the database and every file others could read are searched.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers import GitRepo, local_source, start_daemon, stop_supervisord, wait_for, write_config

HF_TOKEN = "hf_Zq8secretvalue-that-must-never-show"
API_TOKEN = "api-token-for-the-scan-5b1e"

SERVER = '''
import json, os, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

token = os.environ["HF_TOKEN"]
print("loaded model with token", token, flush=True)
if os.environ.get("CRASH"):
    raise SystemExit(f"cannot authenticate with {token}")

class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({"ok": True, "token": token, "nested": [{"t": token}]}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        print("request with", token, flush=True)

ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
'''


def manifest(crash: bool = False) -> str:
    env = "env: {CRASH: '1'}\n" if crash else ""
    return f"""name: leaky
command: python server.py ${{PORT}}
secrets: [HF_TOKEN]
health: {{path: /health, timeout: 8}}
{env}"""


@pytest.fixture
def world(tmp_path: Path) -> Iterator[dict[str, Any]]:
    secrets = tmp_path / "state" / "secrets"
    secrets.mkdir(parents=True, mode=0o700)
    fd = os.open(secrets / "HF_TOKEN", os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, HF_TOKEN.encode() + b"\n")
    os.close(fd)
    repo = GitRepo.create(tmp_path / "repo.git", tmp_path / "work")
    config, _ = write_config(tmp_path, sources=local_source("models"), poll_interval=1)
    daemon = start_daemon(config, tmp_path / "state", env={"DEPLOYER_API_TOKEN": API_TOKEN})
    try:
        yield {"root": tmp_path, "repo": repo, "daemon": daemon}
    finally:
        daemon.stop()
        stop_supervisord(tmp_path / "state")


def reachable_by_others(path: Path, top: Path) -> bool:
    """World-readable, inside folders every user may enter (from ``top`` down)."""
    if not path.stat().st_mode & stat.S_IROTH:
        return False
    folder = path.parent
    while True:
        if not folder.stat().st_mode & stat.S_IXOTH:
            return False
        if folder == top:
            return True
        folder = folder.parent


def test_a_printed_secret_reaches_no_page_answer_row_log_or_readable_file(world: dict[str, Any]) -> None:
    daemon, repo, root = world["daemon"], world["repo"], world["root"]
    repo.commit({"service.yaml": manifest(), "server.py": SERVER}, "v1 prints its token")
    wait_for(lambda: (s := daemon.service("leaky")) and s["healthy"], 60, "v1 healthy")
    # v2 crashes with the token in its last words: the failure message quotes the output.
    repo.commit({"service.yaml": manifest(crash=True)}, "v2 crashes")
    wait_for(lambda: (s := daemon.service("leaky")) and s["last_attempt"]["revision"] != s["running_revision"]
             and s["last_attempt"]["outcome"] in ("rolled_back", "failed"), 60, "v2 rolled back")
    # The page's snapshot is taken after each deploy: wait until its log tail is there.
    wait_for(lambda: "loaded model with token" in daemon.get("/services/leaky").text, 30, "log tail on the page")

    unauthenticated = daemon.get("/api/services/leaky/logs")
    assert unauthenticated.status_code in (401, 403)
    authorised = httpx.get(daemon.url + "/api/services/leaky/logs", timeout=10,
                           headers={"Authorization": f"Bearer {API_TOKEN}"})
    assert authorised.status_code == 200 and "loaded model with token ******" in authorised.text

    answers = {path: daemon.get(path).text for path in
               ("/", "/services/leaky", "/api/services", "/api/services/leaky", "/deliveries", "/metrics",
                "/api/plan", "/api/services/leaky/demos")}
    answers["logs"] = authorised.text
    answers["daemon log"] = daemon.log()
    for where, text in answers.items():
        assert HF_TOKEN not in text, f"the secret is in {where}"
    assert "******" in answers["/services/leaky"]  # masked, not merely absent

    state = root / "state"
    database = (state / "deployer.db").read_bytes() + b"".join(
        p.read_bytes() for p in state.glob("deployer.db-*"))
    assert HF_TOKEN.encode() not in database
    for path in state.rglob("*"):
        if path.is_file() and not path.is_symlink() and reachable_by_others(path, root):
            assert HF_TOKEN.encode() not in path.read_bytes(), f"{path} is readable by others and holds the secret"
