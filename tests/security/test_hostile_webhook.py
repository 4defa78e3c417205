"""Signed pushes a hostile or unusual repository can send, against the real daemon.

Repository names Gitea allows (``_private``, ``.profile``) are followed; names deployer
cannot use as a folder, forged identities and absurd nesting are refused with a 4xx
before anything is written; and no stored row can ever stop ``deployer serve`` again.
"""

from __future__ import annotations

import contextlib
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from deployer.store import Store
from tests import gitea_payloads as gp
from tests.helpers import Daemon, GitRepo, start_daemon, stop_supervisord, wait_for, write_config

SECRET = "hostile-webhook-secret"
ZERO = "0" * 40


@pytest.fixture
def world(tmp_path: Path) -> Iterator[dict[str, Any]]:
    gitea = tmp_path / "gitea"
    config, _ = write_config(tmp_path, extra=f"""
[gitea]
clone_base = "file://{gitea}"
allowed_owners = ["acme"]
""")
    env = {"DEPLOYER_WEBHOOK_SECRET": SECRET}
    daemon = start_daemon(config, tmp_path / "state", env=env)
    world = {"root": tmp_path, "gitea": gitea, "config": config, "env": env, "daemon": daemon}
    try:
        yield world
    finally:
        world["daemon"].stop()
        stop_supervisord(tmp_path / "state")


def send(daemon: Daemon, payload: dict[str, Any] | bytes) -> Any:
    body = payload if isinstance(payload, bytes) else gp.encode(payload)
    headers = gp.headers(body, SECRET, content_type="json", event="push", delivery=str(uuid.uuid4()))
    return daemon.post("/hooks/gitea", body, headers)


def repo_push(world: dict[str, Any], owner: str, name: str) -> dict[str, Any]:
    repo = GitRepo.create(world["gitea"] / owner / f"{name}.git", world["root"] / "work" / owner / name)
    sha = repo.commit({"README.md": "no service here yet\n"}, "first")
    return gp.push_payload(owner, name, "refs/heads/main", ZERO, sha, f"http://gitea.invalid/{owner}/{name}.git",
                           commits=[{"id": sha, "message": "first"}])


def test_names_gitea_allows_are_followed_and_survive_a_restart(world: dict[str, Any]) -> None:
    daemon: Daemon = world["daemon"]
    for name in ("_private", ".profile"):
        response = send(daemon, repo_push(world, "acme", name))
        assert response.status_code == 202, response.text

    daemon.stop()
    world["daemon"] = daemon = start_daemon(world["config"], world["root"] / "state", env=world["env"])
    assert daemon.get("/").status_code == 200
    assert daemon.get("/healthz").status_code == 200
    # Both were fetched: the error the page shows is about the missing manifest, not the name.
    page = wait_for(lambda: (lambda text: text if text.count("service.yaml") >= 2 else None)(daemon.get("/").text),
                    30, "both sources fetched and their missing service.yaml reported")
    assert "acme/_private" in page and "acme/.profile" in page


@pytest.mark.parametrize("change, why", [
    ({"name": "-rf", "full_name": "acme/-rf"}, "cannot be followed"),
    ({"name": "x.git", "full_name": "acme/x.git"}, "cannot be followed"),
    ({"full_name": "evil/x"}, "is not repository.owner.login/repository.name"),
    ({"full_name": "acme/../../etc"}, "is not repository.owner.login/repository.name"),
])
def test_forged_or_unusable_repository_names_are_refused_before_anything_is_written(
        world: dict[str, Any], change: dict[str, str], why: str) -> None:
    daemon: Daemon = world["daemon"]
    payload = gp.push_payload("acme", "x", "refs/heads/main", ZERO, "a" * 40, "http://gitea.invalid/acme/x.git")
    payload["repository"].update(change)
    response = send(daemon, payload)
    assert response.status_code == 400, response.text
    assert why in response.json()["detail"]
    store = Store(f"sqlite:///{world['root'] / 'state' / 'deployer.db'}")
    assert store.sources.all() == []


def test_deeply_nested_json_is_a_400_not_a_500(world: dict[str, Any]) -> None:
    body = ('{"a":' * 10_000 + "1" + "}" * 10_000).encode()
    response = send(world["daemon"], body)
    assert response.status_code == 400, response.text
    assert "nested too deeply" in response.json()["detail"]
    wait_for(lambda: "nested too deeply" in world["daemon"].get("/deliveries").text, 10,
             "the refused delivery in the audit")


def test_a_stored_source_deployer_cannot_follow_does_not_stop_start_up(world: dict[str, Any]) -> None:
    world["daemon"].stop()
    store = Store(f"sqlite:///{world['root'] / 'state' / 'deployer.db'}")
    store.sources.upsert("acme/-bad", "file:///nowhere/acme/-bad.git", "main", "gitea")  # written by an old version
    store.close()

    daemon = world["daemon"] = start_daemon(world["config"], world["root"] / "state", env=world["env"])
    assert daemon.get("/healthz").status_code == 200
    page = daemon.get("/").text
    assert "acme/-bad" in page and "not followed" in page
    assert "stored source skipped" in daemon.log()


def _raw(daemon: Daemon, head: bytes, filler: int) -> bytes:
    """Sends ``head`` then ``filler`` bytes more of header lines; what the daemon answered (b"" if nothing)."""
    host, _, port = daemon.url.removeprefix("http://").partition(":")
    with socket.create_connection((host, int(port)), timeout=10) as conn:
        try:
            conn.sendall(head)
            line = b"X-Filler: " + b"a" * 8000 + b"\r\n"
            for _ in range(filler // len(line)):
                conn.sendall(line)
            conn.sendall(b"\r\n")
        except OSError:  # closed on us mid-send: read what it said before
            pass
        answer = b""
        with contextlib.suppress(OSError):
            while chunk := conn.recv(65536):
                answer += chunk
        return answer


def test_a_request_head_larger_than_the_bound_is_refused_431_and_the_daemon_goes_on(world: dict[str, Any]) -> None:
    daemon: Daemon = world["daemon"]
    answer = _raw(daemon, b"POST /hooks/gitea HTTP/1.1\r\nHost: x\r\n", 8 * 2**20)
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]
    long_url = _raw(daemon, b"GET /api/services?q=" + b"a" * 2**20 + b" HTTP/1.1\r\nHost: x\r\n", 0)
    assert long_url.startswith(b"HTTP/1.1 431 "), long_url[:200]
    assert daemon.get("/healthz").status_code == 200
    assert "refused a request from 127.0.0.1" in daemon.log()


def test_large_headers_under_the_bound_and_large_bodies_are_served_on_one_connection(
        world: dict[str, Any]) -> None:
    daemon: Daemon = world["daemon"]
    payload = repo_push(world, "acme", "big-message")
    payload["head_commit"] = {**(payload.get("head_commit") or {}), "message": "x" * 900_000}  # a body near 1 MiB
    body = gp.encode(payload)
    headers = gp.headers(body, SECRET, content_type="json", event="push", delivery=str(uuid.uuid4()))
    with httpx.Client(base_url=daemon.url, timeout=10) as client:  # keep-alive: one connection throughout
        big = client.post("/hooks/gitea", content=body, headers={**headers, "X-Large": "b" * 40_000})
        assert big.status_code == 202, big.text
        assert client.get("/healthz", headers={"X-Large": "c" * 40_000}).status_code == 200
        assert client.get("/api/services").status_code == 200
