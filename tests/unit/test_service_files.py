"""``files:``: a secret or a repository file put in the service folder before start, mode 0600,
never outside it; a changed content redeploys, and no value reaches the spec or the database."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import pytest

from deployer.errors import ManifestError, Reason, StalledError
from deployer.loader import load_manifest, load_manifest_file
from deployer.model.status import Trigger
from deployer.reconcile.resolve import Resolver
from deployer.safety import UnsafePath, write_inside
from deployer.secrets import SecretStore
from deployer.store import Store
from tests.helpers import GitRepo
from tests.memory_runtime import MemoryRuntime
from tests.unit.test_reconcile import Gate, make_reconciler

DOTENV = "API_KEY=k-0123456789\nMODE=prod\n"
MANIFEST = """name: solo
command: python app.py --port ${PORT}
files:
  - {path: .env, secret: DOTENV}
  - {path: config/app.toml, from: conf/prod.toml}
"""


# ---------------------------------------------------------------- the manifest


def test_a_from_file_must_exist_in_the_service_folder(tmp_path: Path) -> None:
    (tmp_path / "service.yaml").write_text(MANIFEST)
    with pytest.raises(ManifestError) as caught:
        load_manifest_file(tmp_path / "service.yaml")
    assert str(caught.value) == "service.yaml:5:35: files[1].from: file 'conf/prod.toml' does not exist " \
                                "in the service folder"


@pytest.mark.parametrize(("files", "expected"), [
    ("[{path: .env}]", "files[0]: give exactly one of 'secret' (a secret's value) or 'from'"),
    ("[{path: .env, secret: A, from: b}]", "files[0]: give exactly one of"),
    ("[{path: ../.env, secret: A}]", "files[0].path: must stay inside the repository"),
    ("[{path: /etc/passwd, secret: A}]", "files[0].path: must be relative"),
    ("[{path: x, from: ../y}]", "files[0].from: must stay inside the repository"),
    ("[{path: x, secret: 'a b'}]", "files[0].secret: must match"),
    ("[{path: x, secret: A, mode: 0644}]", "files[0]: unknown key 'mode'"),
    ("[{path: x, secret: A}, {path: x, secret: B}]", "files: x is given twice"),
    ("[{path: service.yaml, secret: A}]", "files: service.yaml is the manifest"),
    ("[{path: requirements.txt, secret: A}]", "files: requirements.txt is the requirements file"),
    ("[{path: uv.lock, secret: A}]", "files: uv.lock is the lock file"),
    ("[{path: a, secret: A}, {path: b, from: a}]", "files: b is made from a, which 'files:' writes itself"),
])
def test_bad_files_entries_point_into_the_file(files: str, expected: str) -> None:
    with pytest.raises(ManifestError) as caught:
        load_manifest(f"name: a\ncommand: x\nfiles: {files}\n")
    assert str(caught.value).startswith("service.yaml:3:") and expected in str(caught.value), str(caught.value)


# ---------------------------------------------------------------- writing inside


def test_write_inside_makes_a_private_file_in_private_folders(tmp_path: Path) -> None:
    written = write_inside(tmp_path, "config/deep/app.toml", b"x = 1\n")
    assert written.read_bytes() == b"x = 1\n"
    assert stat.S_IMODE(written.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "config").stat().st_mode) == 0o700


def test_write_inside_never_follows_a_link_out(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (outside / "target").write_text("keep")
    (root / "conf").symlink_to(outside)
    (root / ".env").symlink_to(outside / "target")
    for relative in ("conf/app.toml", ".env"):
        with pytest.raises(UnsafePath):
            write_inside(root, relative, b"secret")
    assert (outside / "target").read_text() == "keep" and not (outside / "app.toml").exists()


def test_a_link_inside_is_replaced_not_followed(tmp_path: Path) -> None:
    (tmp_path / "real").write_text("repo content")
    (tmp_path / ".env").symlink_to(tmp_path / "real")
    write_inside(tmp_path, ".env", b"secret")
    assert not (tmp_path / ".env").is_symlink() and (tmp_path / ".env").read_bytes() == b"secret"
    assert (tmp_path / "real").read_text() == "repo content"


# ---------------------------------------------------------------- through the reconciler


@pytest.fixture
def world(tmp_path: Path) -> dict[str, Any]:
    repo = GitRepo.create(tmp_path / "bare.git", tmp_path / "work")
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    store.migrate()
    world = {"repo": repo, "store": store, "runtime": MemoryRuntime("supervisor"), "gate": Gate(), "tmp": tmp_path}
    make_reconciler(world)
    return world


def run(world: dict[str, Any]) -> dict[str, str]:
    result = world["reconciler"].reconcile_source("repo", trigger=Trigger.WEBHOOK)
    assert result.error is None, result.error
    return dict(result.outcomes)


def put_secret(world: dict[str, Any], value: str) -> None:
    folder = world["tmp"] / "secrets" / "solo"  # this service's own
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    (folder / "DOTENV").write_text(value)


def test_files_are_written_before_start_and_a_changed_secret_redeploys(world: dict[str, Any]) -> None:
    repo, store = world["repo"], world["store"]
    repo.commit({"service.yaml": MANIFEST, "app.py": "x", "conf/prod.toml": "port = 1\n"}, "files")
    assert run(world) == {"solo": "waiting"}  # the secret is not there yet: nothing is written, nothing fails
    attempt = store.history.attempts("solo", 1)[0]
    assert attempt.reason == Reason.SECRET_MISSING.value and "DOTENV" in attempt.message

    put_secret(world, DOTENV)
    assert run(world) == {"solo": "succeeded"}
    workdir = world["runtime"].deployments["solo"].workdir
    assert (workdir / ".env").read_text() == DOTENV  # byte for byte, trailing newline kept
    assert (workdir / "config" / "app.toml").read_text() == "port = 1\n"
    for path in (workdir / ".env", workdir / "config" / "app.toml"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert not os.stat(workdir).st_mode & stat.S_IROTH  # the checkout is the daemon's own
    steps = {step.name: step.output_tail for step in store.history.attempts("solo", 1)[0].steps}
    assert ".env (mode 0600) from secret DOTENV" in steps["files"] and "k-0123456789" not in steps["files"]
    first = store.history.revisions("solo")[0]

    assert run(world) == {"solo": "noop"}  # nothing changed: nothing redeployed
    put_secret(world, DOTENV.replace("prod", "test"))
    assert run(world) == {"solo": "succeeded"}  # same commit, another secret value: a new revision
    second = store.history.revisions("solo")[0]
    assert second.id != first.id and second.sha == first.sha
    assert second.spec["files_hash"] != first.spec["files_hash"]
    assert (workdir / ".env").read_text() == DOTENV.replace("prod", "test")
    for revision in store.history.revisions("solo"):
        assert "k-0123456789" not in str(revision.spec) and "MODE=" not in str(revision.spec)
    database = (world["tmp"] / "db.sqlite").read_bytes()
    assert b"k-0123456789" not in database


def test_a_repository_file_change_redeploys_too(world: dict[str, Any]) -> None:
    repo = world["repo"]
    put_secret(world, DOTENV)
    repo.commit({"service.yaml": MANIFEST, "app.py": "x", "conf/prod.toml": "port = 1\n"}, "files")
    assert run(world) == {"solo": "succeeded"}
    repo.commit({"conf/prod.toml": "port = 2\n"}, "config change")
    assert run(world) == {"solo": "succeeded"}
    assert (world["runtime"].deployments["solo"].workdir / "config" / "app.toml").read_text() == "port = 2\n"


def test_specs_without_files_keep_their_hash(world: dict[str, Any]) -> None:
    world["repo"].commit({"service.yaml": "name: solo\ncommand: python app.py\n", "app.py": "x"}, "plain")
    run(world)
    spec = world["store"].history.revisions("solo")[0].spec
    assert "files" not in spec and "files_hash" not in spec


def test_a_from_link_leading_out_is_refused_and_never_read(tmp_path: Path) -> None:
    (tmp_path / "leak").symlink_to("/etc/passwd")
    (tmp_path / "service.yaml").write_text("name: a\ncommand: x\nfiles: [{path: conf, from: leak}]\n")
    with pytest.raises(ManifestError) as caught:
        load_manifest_file(tmp_path / "service.yaml")
    assert "files[0].from: 'leak' leads outside the repository" in str(caught.value)
    assert "root:" not in str(caught.value)


def test_swarm_services_cannot_use_files(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    store.migrate()
    resolver = Resolver(store, ["swarm"], default_runtime="swarm", port_bounds=(9000, 9100),
                        secrets=SecretStore(tmp_path / "secrets"))
    entry = load_manifest("name: a\nruntime: swarm\nfiles: [{path: .env, secret: DOTENV}]\n").services[0]
    with pytest.raises(StalledError, match="'files' is not supported by runtime swarm"):
        resolver._check(entry, "repo")
