"""The JSON API refuses what it cannot use with a 4xx and a message, never a 500."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.helpers import Daemon, start_daemon, stop_supervisord, write_config

TOKEN = "api-inputs-token"


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    root: Path = tmp_path_factory.mktemp("api-inputs")
    config, _ = write_config(root)
    daemon = start_daemon(config, root / "state", env={"DEPLOYER_API_TOKEN": TOKEN})
    yield daemon
    daemon.stop()
    stop_supervisord(root / "state")


def post(daemon: Daemon, path: str, body: bytes) -> httpx.Response:
    return httpx.post(daemon.url + path, content=body, timeout=10,
                      headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})


@pytest.mark.parametrize("revision", [b'"abc"', b"[1]", b"1e30", b"-3", b"true", b'{"id": 1}', b"1.5"])
def test_a_revision_that_is_not_a_revision_number_is_a_400(daemon: Daemon, revision: bytes) -> None:
    for action in ("pin", "rollback"):
        response = post(daemon, f"/api/services/anything/{action}", b'{"revision": ' + revision + b"}")
        assert response.status_code == 400, response.text
        assert "revision must be a revision number" in response.json()["error"]


def test_deeply_nested_json_bodies_are_a_400(daemon: Daemon) -> None:
    deep = b'{"a":' * 10_000 + b"1" + b"}" * 10_000
    for path in ("/api/reconcile", "/api/services/anything/pin"):
        response = post(daemon, path, deep)
        assert response.status_code == 400, response.text
        assert "nested too deeply" in response.json()["error"]


def test_a_revision_given_as_digits_is_accepted_as_a_number(daemon: Daemon) -> None:
    response = post(daemon, "/api/services/anything/pin", b'{"revision": "12"}')
    assert response.status_code == 404  # parsed fine; the service does not exist


@pytest.mark.parametrize(("body", "status", "says"), [
    (b"{}", 400, "name the services"),
    (b'{"services": "op-a"}', 400, "services must be a list"),
    (b'{"services": [1, 2]}', 400, "services must be a list"),
    (b'{"services": ["nope"]}', 404, "no service named 'nope'"),
    (b'{"group": "nope"}', 404, "no group named 'nope'"),
    (b'{"source": "nope"}', 404, "no services from a source named 'nope'"),
    (b'{"all": "yes"}', 400, "name the services"),
])
def test_a_batch_that_names_no_known_service_is_refused_whole(daemon: Daemon, body: bytes, status: int,
                                                               says: str) -> None:
    for action in ("stop", "start", "restart"):
        response = post(daemon, f"/api/actions/{action}", body)
        assert response.status_code == status, response.text
        assert says in response.json()["error"]


def test_operator_actions_need_the_token_and_unknown_ones_are_404(daemon: Daemon) -> None:
    for path in ("/api/actions/stop", "/api/services/anything/restart"):
        response = httpx.post(daemon.url + path, json={"all": True}, timeout=10)
        assert response.status_code == 401, response.text
    assert post(daemon, "/api/actions/explode", b'{"all": true}').status_code == 404
    assert post(daemon, "/api/services/anything/stop", b"{}").status_code == 404
    for operation in ("12345", "abc"):
        response = httpx.get(f"{daemon.url}/api/operations/{operation}", timeout=10)
        assert response.status_code == 404 and "no operation" in response.json()["error"]
