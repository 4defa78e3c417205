"""Model weights by digest, end to end: the daemon under uvicorn, real supervisord, real git, moto's S3
server and a loopback HTTP file server.

One daemon serves the module; the tests run in order and each builds on the last (first deploy,
code-only push, a second service naming the same digest, a wrong digest, an unreachable store).
Each service reads its weight file at start and answers its sha256 on /info, so "the bytes
arrived" is checked from the service's side.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.artifact_servers import FileServer, S3Server, sha256
from tests.helpers import (
    GitRepo,
    free_port,
    local_source,
    metric,
    start_daemon,
    stop_supervisord,
    wait_for,
    write_config,
)

WEIGHTS = os.urandom(300_000)
OTHER = os.urandom(200_000)
SERVER = '''\
import hashlib, json, os, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

DIGEST = hashlib.sha256(open("models/w.bin", "rb").read()).hexdigest()  # {note}


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({{"weights": DIGEST, "note": "{note}"}}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
'''


def service(name: str, url: str, digest: str) -> str:
    return (f"  - name: {name}\n    path: {name}\n    command: python serve.py\n    health: {{path: /health}}\n"
            f"    artifacts:\n      - {{url: '{url}', sha256: {digest}, path: models/w.bin}}\n")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, moto_s3: S3Server) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("artifacts")
    (root / "served").mkdir()
    (root / "keys").mkdir()
    (root / "keys" / "access").write_text(moto_s3.access_key)
    (root / "keys" / "secret").write_text(moto_s3.secret_key)
    repo = GitRepo.create(root / "repo.git", root / "work")
    other = GitRepo.create(root / "other.git", root / "other-work")
    other.commit({"service.yaml": "name: tiny\ncommand: python serve.py\nhealth: {path: /health}\n",
                  "serve.py": SERVER.format(note="0").replace('open("models/w.bin", "rb").read()', 'b""')},
                 "a service without artifacts, in another source")
    extra = (f'[artifacts]\ns3_endpoint = "{moto_s3.endpoint}"\ncache_max = 2000000\n'
             f's3_access_key_file = "{root / "keys" / "access"}"\ns3_secret_key_file = "{root / "keys" / "secret"}"\n')
    with FileServer(root / "served") as files:
        s3_url = moto_s3.put("models", "bert/v3.bin", WEIGHTS)
        http_url = files.put("mirror/bert-v3.bin", WEIGHTS)
        repo.commit({"service.yaml": "services:\n" + service("a", s3_url, sha256(WEIGHTS)),
                     "a/serve.py": SERVER.format(note="v1")}, "a with weights from S3")
        write_config(root, sources=local_source("models") + local_source("other", "other.git"), extra=extra)
        daemon = start_daemon(root / "deployer.toml", root / "state")
        try:
            yield {"root": root, "repo": repo, "other": other, "daemon": daemon, "files": files, "s3_url": s3_url,
                   "http_url": http_url, "s3": moto_s3}
        finally:
            daemon.stop()
            stop_supervisord(root / "state")


def attempt_for(world: dict[str, Any], name: str, sha: str, timeout: float = 90) -> dict[str, Any]:
    """The finished attempt of ``name``'s revision at ``sha`` (a pass asked for first)."""
    daemon = world["daemon"]
    assert daemon.request_pass().status_code == 202

    def finished() -> dict[str, Any] | None:
        detail = daemon.service(name)
        if detail is None:
            return None
        revisions = {revision["id"]: revision["sha"] for revision in detail["revisions"]}
        for attempt in detail["attempts"]:
            if revisions.get(attempt["revision"]) == sha and attempt["outcome"] != "running":
                return attempt
        return None

    return wait_for(finished, timeout, f"{name}'s attempt at {sha[:7]}")


def step(attempt: dict[str, Any], name: str) -> dict[str, Any]:
    return next(found for found in attempt["steps"] if found["name"] == name)


def weights_served(world: dict[str, Any], name: str) -> str:
    port = world["daemon"].service(name)["port"]
    return str(httpx.get(f"http://127.0.0.1:{port}/info", timeout=5).json()["weights"])


def test_first_deploy_places_the_weights_before_the_service_starts(world: dict[str, Any]) -> None:
    attempt = attempt_for(world, "a", world["repo"].shas[-1])
    assert attempt["outcome"] == "succeeded", attempt
    assert step(attempt, "artifacts")["output"] == "artifacts: 1 file, 300.0 KB fetched of 300.0 KB"
    assert [found["name"] for found in attempt["steps"]][:2] == ["checkout", "artifacts"]
    assert weights_served(world, "a") == sha256(WEIGHTS)
    cache = world["root"] / "state" / "artifacts" / "sha256" / sha256(WEIGHTS)
    assert cache.read_bytes() == WEIGHTS and cache.stat().st_mode & 0o777 == 0o444


def test_a_code_only_push_fetches_nothing(world: dict[str, Any]) -> None:
    repo = world["repo"]
    sha = repo.commit({"a/serve.py": SERVER.format(note="v2")}, "code only")
    attempt = attempt_for(world, "a", sha)
    assert attempt["outcome"] == "succeeded", attempt
    assert step(attempt, "artifacts")["output"] == "artifacts: 1 file, 0 B fetched (cached)"
    assert weights_served(world, "a") == sha256(WEIGHTS)


def test_a_second_service_naming_the_same_digest_fetches_nothing(world: dict[str, Any]) -> None:
    repo, files = world["repo"], world["files"]
    files.served.reset()
    manifest = "services:\n" + service("a", world["s3_url"], sha256(WEIGHTS)) + service(
        "b", world["http_url"], sha256(WEIGHTS))
    sha = repo.commit({"service.yaml": manifest, "b/serve.py": SERVER.format(note="b")}, "b, same weights by HTTP")
    attempt = attempt_for(world, "b", sha)
    assert attempt["outcome"] == "succeeded", attempt
    assert step(attempt, "artifacts")["output"] == "artifacts: 1 file, 0 B fetched (cached)"
    assert files.served.requests == []
    assert weights_served(world, "b") == sha256(WEIGHTS)


def test_a_wrong_digest_fails_the_attempt_and_the_previous_revision_keeps_serving(world: dict[str, Any]) -> None:
    repo = world["repo"]
    wrong = hashlib.sha256(b"not these bytes").hexdigest()
    manifest = "services:\n" + service("a", world["s3_url"], wrong) + service("b", world["http_url"],
                                                                              sha256(WEIGHTS))
    sha = repo.commit({"service.yaml": manifest}, "a: a digest that does not match")
    attempt = attempt_for(world, "a", sha)
    assert attempt["outcome"] == "rolled_back" and attempt["reason"] == "ArtifactFetchFailed", attempt
    assert f"{world['s3_url']}: sha256 mismatch: expected {wrong}, got {sha256(WEIGHTS)}" in attempt["message"]
    assert not step(attempt, "artifacts")["ok"]
    assert not any(found["name"] == "apply" for found in attempt["steps"])  # the new revision never started
    assert weights_served(world, "a") == sha256(WEIGHTS)


def test_an_unreachable_store_fails_clearly(world: dict[str, Any]) -> None:
    repo = world["repo"]
    gone = f"http://127.0.0.1:{free_port()}/weights.bin"
    manifest = "services:\n" + service("a", gone, sha256(OTHER)) + service("b", world["http_url"], sha256(WEIGHTS))
    sha = repo.commit({"service.yaml": manifest}, "a: weights from a store that is down")
    attempt = attempt_for(world, "a", sha)
    assert attempt["reason"] == "ArtifactFetchFailed", attempt
    assert f"{gone}: ConnectError" in attempt["message"]
    assert weights_served(world, "a") == sha256(WEIGHTS)


def test_new_weights_arrive_and_the_cache_use_is_shown(world: dict[str, Any]) -> None:
    repo, daemon = world["repo"], world["daemon"]
    url = world["s3"].put("models", "bert/v4.bin", OTHER)
    manifest = "services:\n" + service("a", url, sha256(OTHER)) + service("b", world["http_url"], sha256(WEIGHTS))
    sha = repo.commit({"service.yaml": manifest}, "a: new weights")
    attempt = attempt_for(world, "a", sha)
    assert attempt["outcome"] == "succeeded", attempt
    assert weights_served(world, "a") == sha256(OTHER)
    scraped = daemon.get("/metrics").text
    assert metric(scraped, "deployer_artifact_cache_objects") == 2
    assert metric(scraped, "deployer_artifact_cache_bytes") == len(WEIGHTS) + len(OTHER)
    assert metric(scraped, "deployer_artifact_cache_budget_bytes") == 2_000_000
    assert "Artifact cache: 2 files, 500.0 kB of 2.0 MB" in daemon.get("/").text


def test_the_s3_keys_never_reach_the_log_or_the_store(world: dict[str, Any]) -> None:
    secret = world["s3"].secret_key
    assert secret not in world["daemon"].log()
    assert secret not in world["daemon"].get("/api/services/a").text
    assert not list(Path(world["root"] / "state").glob("**/*.log")) or all(
        secret not in path.read_text(errors="replace") for path in Path(world["root"] / "state").glob("**/*.log"))


def test_a_slow_download_does_not_hold_another_source_s_deploy(world: dict[str, Any]) -> None:
    repo, other, daemon, files = world["repo"], world["other"], world["daemon"], world["files"]
    attempt_for(world, "tiny", other.shas[-1])  # deployed since the start
    big = os.urandom(2 << 20)
    files.served.pause = 0.08  # 32 blocks of 64 KiB: about 2.5 s
    url = files.put("slow/v5.bin", big)
    manifest = "services:\n" + service("a", url, sha256(big)) + service("b", world["http_url"], sha256(WEIGHTS))
    slow = repo.commit({"service.yaml": manifest}, "a: weights from a slow store")
    assert daemon.request_pass().status_code == 202
    wait_for(lambda: "Fetching artifacts: <a href=\"/services/a\">a</a>" in daemon.get("/").text, 30,
             "a's transfer on the status page")
    quick = other.commit({"serve.py": SERVER.format(note="1").replace('open("models/w.bin", "rb").read()', 'b""')},
                         "tiny: code only")
    done = attempt_for(world, "tiny", quick)
    assert done["outcome"] == "succeeded", done
    running = daemon.service("a")["attempts"][0]
    assert running["outcome"] == "running", "a's download finished before tiny's deploy: the test proves nothing"
    files.served.pause = 0
    finished = attempt_for(world, "a", slow)
    assert finished["outcome"] == "succeeded", finished
    assert step(finished, "artifacts")["output"] == "artifacts: 1 file, 2.1 MB fetched of 2.1 MB"
