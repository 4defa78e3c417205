"""End to end: a model whose weights are in Git LFS, deployed by the daemon from a signed webhook.

A real supervisord runs the service, which answers ``/info`` with the sha256 of the weight file
it reads: the real bytes arrive, a code-only push fetches nothing, and new weights whose object
was never uploaded fail with ``ArtifactFetchFailed`` while the old revision keeps serving.
"""

from __future__ import annotations

import hashlib
import shutil
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests import gitea_payloads as gp
from tests.conftest import unavailable
from tests.gitea_standin import GiteaStandIn
from tests.helpers import GitRepo, git, start_daemon, stop_supervisord, wait_for, write_config

SECRET = "lfs-e2e-webhook-secret"
OWNER, REPO = "acme", "bert"
ZERO = "0" * 40
WEIGHTS = bytes(range(256)) * 2048  # 512 KiB
SERVICE = """name: bert
command: python server.py --port ${PORT}
port: auto
health:
  path: /health
  timeout: 30
"""
SERVER = '''import hashlib, json, os, sys
from http.server import BaseHTTPRequestHandler, HTTPServer

WEIGHTS = open("models/model.bin", "rb").read()  # what a model server loads at start
INFO = {"weights_sha256": hashlib.sha256(WEIGHTS).hexdigest(), "weights_bytes": len(WEIGHTS), "code": CODE,
        "pid": os.getpid()}


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps(INFO if self.path == "/info" else {"ok": True}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


HTTPServer(("127.0.0.1", int(sys.argv[2])), Handler).serve_forever()
'''


def server(code: int) -> str:
    return SERVER.replace("CODE,", f"{code},")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    if shutil.which("git-lfs") is None:
        unavailable("git-lfs is not installed (scripts/services.sh installs it)")
    root = tmp_path_factory.mktemp("lfs-e2e")
    repo = GitRepo.create(root / "gitea" / OWNER / f"{REPO}.git", root / "work")
    git(repo.work, "lfs", "install", "--local")
    gitea = GiteaStandIn()
    gitea.up()
    repo.on_commit = gitea.add_repo(OWNER, REPO, []).shas.append
    config, _ = write_config(root, extra=f"""[gitea]
url = "{gitea.url}"
clone_base = "file://{root / 'gitea'}"
allowed_owners = ["{OWNER}"]""")
    daemon = start_daemon(config, root / "state",
                          env={"DEPLOYER_WEBHOOK_SECRET": SECRET, "DEPLOYER_GITEA_TOKEN": gitea.token})
    try:
        yield {"repo": repo, "daemon": daemon}
    finally:
        daemon.stop()
        stop_supervisord(root / "state")
        gitea.stop()


def push(world: dict[str, Any], files: dict[str, str | bytes | None], message: str, *,
         lose_object: bytes | None = None) -> str:
    """Commit and push (the LFS hook uploads the objects), then deliver the signed webhook.

    ``lose_object``: that content's LFS object is deleted from the remote before the webhook
    (pushed without ``git lfs push``, or lost on the server).
    """
    repo = world["repo"]
    before = repo.shas[-1] if repo.shas else ZERO
    sha = repo.commit(files, message)
    if lose_object is not None:
        digest = hashlib.sha256(lose_object).hexdigest()
        (repo.bare / "lfs" / "objects" / digest[:2] / digest[2:4] / digest).unlink()
    payload = gp.push_payload(OWNER, REPO, "refs/heads/main", before, sha, f"http://gitea.invalid/{OWNER}/{REPO}.git",
                              commits=[{"id": sha, "message": message}])
    body = gp.encode(payload)
    response = world["daemon"].post("/hooks/gitea", body, gp.headers(body, SECRET, delivery=str(uuid.uuid4())))
    assert response.status_code == 202, response.text
    return sha


def finished(world: dict[str, Any], sha: str) -> dict[str, Any]:
    """The service once an attempt at ``sha`` has ended; its newest attempt first in ``attempts``."""
    def check() -> dict[str, Any] | None:
        service = world["daemon"].service("bert")
        attempts = service["attempts"] if service else []
        newest = attempts[0] if attempts else None
        shas = {revision["id"]: revision["sha"] for revision in service["revisions"]} if service else {}
        # the attempt at sha itself: desired_sha moves when the revision is recorded, before its attempt starts
        done = newest is not None and newest["outcome"] != "running" and shas.get(newest["revision"]) == sha
        return service if done else None

    return wait_for(check, 90, f"an attempt at {sha[:7]} finished")


def info(service: dict[str, Any]) -> dict[str, Any]:
    return dict(httpx.get(f"http://127.0.0.1:{service['port']}/info", timeout=5).json())


def lfs_step(service: dict[str, Any]) -> dict[str, Any]:
    return next(step for step in service["attempts"][0]["steps"] if step["name"] == "lfs")


def test_weights_in_lfs_reach_the_service_once_and_a_missing_object_keeps_the_old_revision(
        world: dict[str, Any]) -> None:
    first = push(world, {".gitattributes": "models/*.bin filter=lfs diff=lfs merge=lfs -text\n",
                         "service.yaml": SERVICE, "server.py": server(1), "models/model.bin": WEIGHTS}, "bert v1")
    service = finished(world, first)
    assert service["attempts"][0]["outcome"] == "succeeded", service["attempts"][0]
    assert {key: value for key, value in info(service).items() if key != "pid"} == {
        "weights_sha256": hashlib.sha256(WEIGHTS).hexdigest(), "weights_bytes": len(WEIGHTS), "code": 1}
    assert f"fetched 1 object(s), {len(WEIGHTS)} bytes" in lfs_step(service)["output"]

    code_only = push(world, {"server.py": server(2)}, "code only")
    service = finished(world, code_only)
    serving = info(service)
    assert service["attempts"][0]["outcome"] == "succeeded" and serving["code"] == 2
    assert "fetched 0 object(s), 0 bytes" in lfs_step(service)["output"]

    newer = WEIGHTS[::-1]
    digest = hashlib.sha256(newer).hexdigest()
    broken = push(world, {"models/model.bin": newer}, "v2 weights, object lost", lose_object=newer)
    service = finished(world, broken)
    attempt = service["attempts"][0]
    assert attempt["reason"] == "ArtifactFetchFailed", attempt
    assert f"models/model.bin (oid {digest}" in attempt["message"]
    assert service["running_sha"] == code_only
    # The previous revision serves (its weights, its code), untouched: like any failure before the
    # start (a build), nothing was stopped, so its process was not even restarted.
    assert "kept serving (the new one failed before it was started)" in attempt["message"], attempt
    assert info(service) == serving
