"""Which repository a signed push makes deployer follow, and from where it is cloned.

The source's name, the allowed-owner check and the clone URL all come from the push's one
validated identity (``repository.full_name``). Without ``[gitea] url``/``clone_base``
the payload's ``clone_url`` is followed only when it is that repository's URL on an
http(s) host that is not this machine or a link-local (metadata) address.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from deployer.store import Store
from tests import gitea_payloads as gp
from tests.security.inprocess import App, running_app

SHA = "a" * 40
ZERO = "0" * 40


@pytest.fixture
def app(tmp_path: Path) -> Iterator[App]:
    with running_app(tmp_path, extra='[gitea]\nallowed_owners = ["acme"]\n') as app:
        yield app


def push(owner: str, name: str, clone_url: str) -> dict[str, Any]:
    return gp.push_payload(owner, name, "refs/heads/main", ZERO, SHA, clone_url)


@pytest.mark.parametrize("clone_url", [
    "/srv/git/acme/x.git",
    "file:///srv/git/acme/x.git",
    "../../acme/x.git",
    "ext::sh -c touch% /tmp/pwned/acme/x.git",
    "http://169.254.169.254/acme/x.git",
    "http://[fe80::1]/acme/x.git",
    "http://127.0.0.1:3000/acme/x.git",
    "http://127.1/acme/x.git",
    "http://2130706433/acme/x.git",
    "http://[::ffff:169.254.169.254]/acme/x.git",
    "http://localhost./acme/x.git",
    "http://metadata.google.internal/acme/x.git",
    "http://user:token@gitea.example/acme/x.git",
    "http://gitea.example/evil/other.git",  # not this repository's URL
    "http://gitea.example/acme/x.git?upload-pack=sh",
])
def test_without_a_configured_gitea_a_local_or_internal_clone_url_is_refused(app: App, clone_url: str) -> None:
    response = app.push(push("acme", "x", clone_url))
    assert response.status_code == 400, response.text
    assert "repository.clone_url" in response.json()["detail"]
    assert "token" not in response.json()["detail"]
    assert app.state() == ([], 0)
    assert Store(f"sqlite:///{app.state_dir / 'deployer.db'}").sources.all() == []


def test_a_clone_url_of_the_repository_on_a_lan_or_public_host_is_followed(app: App) -> None:
    response = app.push(push("acme", "x", "http://10.0.0.7:3000/acme/x.git"))
    assert response.status_code == 202, response.text
    assert app.state() == ([("acme/x", "http://10.0.0.7:3000/acme/x.git")], 1)


def test_with_a_configured_gitea_the_payload_url_is_never_used(tmp_path: Path) -> None:
    extra = '[gitea]\nurl = "http://gitea.example:3000"\nallowed_owners = ["acme"]\n'
    with running_app(tmp_path, extra=extra) as app:
        response = app.push(push("acme", "x", "file:///etc/acme/x.git"))
        assert response.status_code == 202, response.text
        assert app.state()[0] == [("acme/x", "http://gitea.example:3000/acme/x.git")]


def test_the_owner_check_reads_the_identity_not_owner_login(app: App) -> None:
    payload = push("acme", "x", "http://gitea.example/evil/x.git")
    payload["repository"]["full_name"] = "evil/x"
    assert app.push(payload).status_code == 400  # full_name must be owner.login/name
    payload = push("evil", "x", "http://gitea.example/evil/x.git")
    payload["repository"]["owner"]["login"] = "acme"
    assert app.push(payload).status_code == 400
    assert app.state() == ([], 0)


def test_a_renamed_owner_of_a_followed_repository_is_not_a_second_source(app: App) -> None:
    assert app.push(push("acme", "x", "http://gitea.example/acme/x.git")).status_code == 202
    # Gitea names are case-insensitive: after renaming the user to "Acme" its pushes say "Acme/x".
    response = app.push(gp.push_payload("Acme", "x", "refs/heads/main", SHA, "b" * 40,
                                        "http://gitea.example/Acme/x.git"))
    assert response.status_code == 202, response.text
    assert app.state() == ([("acme/x", "http://gitea.example/acme/x.git")], 1)


def test_a_stored_source_with_a_local_clone_url_is_not_followed_after_a_restart(tmp_path: Path) -> None:
    """A row an older version wrote from a payload's ``clone_url`` is reported and skipped at start."""
    extra = '[gitea]\nallowed_owners = ["acme"]\n'
    with running_app(tmp_path, extra=extra) as app:
        app.daemon.store.sources.upsert("acme/x", "file:///etc/acme/x.git", "main", "gitea")
    with running_app(tmp_path, extra=extra) as app:
        assert app.state() == ([], 0)
        assert "not followed" in app.daemon.reconciler.sources.errors()["acme/x"]
