"""Signed pushes a hostile or unusual repository can send, against the real daemon.

Repository names Gitea allows (``_private``, ``.profile``) are followed; names deployer
cannot use as a folder, forged identities and absurd nesting are refused with a 4xx
before anything is written; and no stored row can ever stop ``deployer serve`` again.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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
