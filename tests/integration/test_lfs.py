"""Git LFS weights with real git-lfs and ``file://``-style remotes: pushed to a bare repository as
Gitea would hold them, fetched once into the mirror's store, linked into checkouts as real files.

The host's git config is made explicit per test (``GIT_CONFIG_SYSTEM``/``GIT_CONFIG_GLOBAL``), with
and without a ``filter.lfs`` as Debian's package writes it, so the result never depends on it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from deployer.app import git_token
from deployer.errors import ArtifactFetchError, Reason, SourceError
from deployer.lfs import LfsStore
from deployer.settings import load_settings
from deployer.source import GitSource, HttpToken
from deployer.store import Store
from tests.conftest import unavailable
from tests.docker_fixtures import TEMPLATES, ServiceFolder, http_get
from tests.helpers import GitRepo, git, wait_for
from tests.memory_runtime import MemoryRuntime
from tests.unit.test_reconcile import Gate, make_reconciler, manifest, run

WEIGHTS = bytes(range(256)) * 4096 + b"tail"  # 1 MiB and a bit: far above a pointer's 1024 bytes
HOST_FILTER = ("[filter \"lfs\"]\n\tclean = git-lfs clean -- %f\n\tsmudge = git-lfs smudge -- %f\n"
               "\tprocess = git-lfs filter-process\n\trequired = true\n")


@pytest.fixture(autouse=True)
def _git_lfs_installed() -> None:
    if shutil.which("git-lfs") is None:
        unavailable("git-lfs is not installed (scripts/services.sh installs it)")


@pytest.fixture(params=["host-filter", "no-host-filter"])
def host_config(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """The host's system and global git config: with Debian's ``filter.lfs`` in both, or empty."""
    config = tmp_path / "host-gitconfig"
    config.write_text(HOST_FILTER if request.param == "host-filter" else "")
    monkeypatch.setenv("GIT_CONFIG_SYSTEM", str(config))
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(config))
    monkeypatch.delenv("GIT_CONFIG_NOSYSTEM", raising=False)
    return str(request.param)


def lfs_repo(tmp_path: Path) -> GitRepo:
    """A bare repository and a work clone whose ``*.bin`` under ``svc/`` are LFS-tracked (pushed by its hook)."""
    repo = GitRepo.create(tmp_path / "upstream.git", tmp_path / "work")
    git(repo.work, "lfs", "install", "--local")
    (repo.work / "svc").mkdir()
    (repo.work / "svc" / ".gitattributes").write_text("*.bin filter=lfs diff=lfs merge=lfs -text\n")
    return repo


def oid(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def remote_object(repo: GitRepo, data: bytes) -> Path:
    digest = oid(data)
    return repo.bare / "lfs" / "objects" / digest[:2] / digest[2:4] / digest


def materialised(source: GitSource, sha: str) -> tuple[Path, Any]:
    source.fetch()
    folder = source.checkout(sha) / "svc"
    return folder, source.materialise_lfs(sha, folder, source.lfs_pointers(sha, folder))


def test_weights_arrive_as_real_read_only_files_and_a_code_only_push_fetches_nothing(
        tmp_path: Path, host_config: str) -> None:
    repo = lfs_repo(tmp_path)
    first = repo.commit({"svc/model.bin": WEIGHTS, "svc/app.py": "print(1)\n"}, "weights")
    assert remote_object(repo, WEIGHTS).is_file(), "the pre-push hook uploaded the object"
    source = GitSource("models", str(repo.bare), "main", tmp_path / "state")

    folder, fetched = materialised(source, first)
    weight = folder / "model.bin"
    assert weight.read_bytes() == WEIGHTS, host_config
    assert (fetched.files, fetched.fetched_objects, fetched.fetched_bytes) == (1, 1, len(WEIGHTS))
    assert weight.stat().st_mode & 0o222 == 0, "read-only"
    stored = LfsStore(source.mirror_dir).object(oid(WEIGHTS))
    assert weight.stat().st_ino == stored.stat().st_ino, "a hard link to the source's store"
    assert source.lfs_pointers(first, folder) == [], "nothing left to replace"

    second = repo.commit({"svc/app.py": "print(2)\n"}, "code only")
    folder2, fetched2 = materialised(source, second)
    assert (folder2 / "model.bin").read_bytes() == WEIGHTS
    assert (fetched2.files, fetched2.fetched_objects, fetched2.fetched_bytes) == (1, 0, 0)
    assert "fetched 0 object(s), 0 bytes" in fetched2.summary()

    source.prune_checkouts({second})  # the first revision's checkout goes; the store stays whole
    assert not folder.exists() and stored.read_bytes() == WEIGHTS
    assert (folder2 / "model.bin").read_bytes() == WEIGHTS


def test_only_the_services_folder_is_fetched(tmp_path: Path, host_config: str) -> None:
    repo = lfs_repo(tmp_path)
    other = WEIGHTS[::-1]
    (repo.work / "other").mkdir()
    (repo.work / "other" / ".gitattributes").write_text("*.bin filter=lfs diff=lfs merge=lfs -text\n")
    sha = repo.commit({"svc/model.bin": WEIGHTS, "other/big.bin": other}, "two folders")
    source = GitSource("models", str(repo.bare), "main", tmp_path / "state")
    _folder, fetched = materialised(source, sha)
    assert fetched.fetched_bytes == len(WEIGHTS)
    assert not LfsStore(source.mirror_dir).object(oid(other)).exists(), "another folder's object is not fetched"
    assert (source.checkout(sha) / "other" / "big.bin").stat().st_size < 1024, "still its pointer"


def test_a_missing_object_names_the_file_and_its_oid(tmp_path: Path, host_config: str) -> None:
    repo = lfs_repo(tmp_path)
    sha = repo.commit({"svc/model.bin": WEIGHTS}, "weights")
    remote_object(repo, WEIGHTS).unlink()
    source = GitSource("models", str(repo.bare), "main", tmp_path / "state")
    with pytest.raises(ArtifactFetchError) as raised:
        materialised(source, sha)
    assert raised.value.reason is Reason.ARTIFACT_FETCH_FAILED
    assert f"svc/model.bin (oid {oid(WEIGHTS)}, {len(WEIGHTS)} bytes)" in str(raised.value)
    assert "missing" in str(raised.value)


def test_an_unreachable_lfs_server_fails_clearly(tmp_path: Path) -> None:
    repo = lfs_repo(tmp_path)
    sha = repo.commit({"svc/model.bin": WEIGHTS}, "weights")
    source = GitSource("models", str(repo.bare), "main", tmp_path / "state")
    source.fetch()
    git(source.mirror_dir, "config", "lfs.url", "http://deployer:s3cret-token@127.0.0.1:9/models.git/info/lfs")
    folder = source.checkout(sha) / "svc"
    with pytest.raises(ArtifactFetchError) as raised:
        source.materialise_lfs(sha, folder, source.lfs_pointers(sha, folder))
    assert "svc/model.bin" in str(raised.value) and "127.0.0.1:9" in str(raised.value)
    assert "s3cret-token" not in str(raised.value)


def test_without_git_lfs_the_attempt_says_so_and_no_pointer_is_taken_for_weights(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    repo = lfs_repo(tmp_path)
    sha = repo.commit({"svc/model.bin": WEIGHTS}, "weights")
    only_git = tmp_path / "bin"
    only_git.mkdir()
    (only_git / "git").symlink_to(shutil.which("git") or "git")
    monkeypatch.setenv("PATH", str(only_git))
    source = GitSource("models", str(repo.bare), "main", tmp_path / "state")
    with pytest.raises(ArtifactFetchError, match="git-lfs is not installed on this host") as raised:
        materialised(source, sha)
    assert "svc/model.bin" in str(raised.value)


# -- through the reconciler: steps, reasons and rollback ---------------------------------------


@pytest.fixture
def world(tmp_path: Path) -> dict[str, Any]:
    repo = lfs_repo(tmp_path)
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    store.migrate()
    world = {"repo": repo, "store": store, "runtime": MemoryRuntime("supervisor"), "gate": Gate(), "tmp": tmp_path}
    make_reconciler(world)
    return world


def test_the_attempt_records_what_it_fetched_and_a_missing_object_keeps_the_old_revision(
        world: dict[str, Any]) -> None:
    repo, store, runtime = world["repo"], world["store"], world["runtime"]
    text = manifest({"name": "bert", "path": "svc"})
    repo.commit({"service.yaml": text, "svc/app.py": "print(1)\n", "svc/model.bin": WEIGHTS}, "weights")
    assert run(world) == {"bert": "succeeded"}
    steps = {step.name: step for step in store.history.attempts("bert", 1)[0].steps}
    assert list(steps)[:3] == ["checkout", "lfs", "build"]
    assert f"fetched 1 object(s), {len(WEIGHTS)} bytes" in steps["lfs"].output_tail
    assert (runtime.deployments["bert"].workdir / "model.bin").read_bytes() == WEIGHTS

    repo.commit({"svc/app.py": "print(2)\n"}, "code only")
    assert run(world) == {"bert": "succeeded"}
    steps = {step.name: step for step in store.history.attempts("bert", 1)[0].steps}
    assert "fetched 0 object(s), 0 bytes; 1 already in the source's store" in steps["lfs"].output_tail
    good = store.views.service("bert")
    assert good is not None

    newer = WEIGHTS + b"v2"
    repo.commit({"svc/model.bin": newer}, "new weights, never uploaded")
    remote_object(repo, newer).unlink()
    assert run(world) == {"bert": "rolled_back"}
    attempt = store.history.attempts("bert", 1)[0]
    assert attempt.reason == Reason.ARTIFACT_FETCH_FAILED.value
    assert f"svc/model.bin (oid {oid(newer)}" in attempt.message
    assert attempt.rolled_back_to == good.running_revision
    failed = next(step for step in attempt.steps if step.name == "lfs")
    assert not failed.ok and oid(newer) in failed.output_tail
    running = runtime.deployments["bert"]
    assert running.revision == good.running_revision
    assert (running.workdir / "model.bin").read_bytes() == WEIGHTS, "the previous revision's real weights"
    assert os.path.getsize(running.workdir / "model.bin") == len(WEIGHTS)


def test_without_git_lfs_nothing_is_started_from_a_pointer(world: dict[str, Any],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    only_git = world["tmp"] / "bin"
    only_git.mkdir()
    (only_git / "git").symlink_to(shutil.which("git") or "git")
    world["repo"].commit({"service.yaml": manifest({"name": "bert", "path": "svc"}), "svc/app.py": "print(1)\n",
                          "svc/model.bin": WEIGHTS}, "weights")
    monkeypatch.setenv("PATH", str(only_git))
    assert run(world) == {"bert": "failed"}
    attempt = world["store"].history.attempts("bert", 1)[0]
    assert attempt.reason == Reason.ARTIFACT_FETCH_FAILED.value
    assert "git-lfs is not installed on this host" in attempt.message and "svc/model.bin" in attempt.message
    assert "bert" not in world["runtime"].deployments, "never applied"


# -- over HTTP with credentials, as from Gitea --------------------------------------------------


class _GiteaLike(BaseHTTPRequestHandler):
    """Git's dumb HTTP protocol and the LFS batch API over one folder of bare repositories, behind basic auth
    (any user, the token as password: what Gitea accepts)."""

    root: Path
    token: str
    seen: list[str]
    slow: threading.Event  # while set, object downloads wait (a large model on a slow link)

    def do_GET(self) -> None:
        if self._authorised():
            path = self.path.split("?", 1)[0]
            oid = path.rsplit("/", 1)[-1]
            name = path.split("/info/lfs/objects/", 1)[0].lstrip("/")
            target = (self.root / name / "lfs" / "objects" / oid[:2] / oid[2:4] / oid if "/info/lfs/objects/" in path
                      else self.root / path.lstrip("/"))
            while "/info/lfs/objects/" in path and self.slow.is_set():
                time.sleep(0.05)
            self._send(200, target.read_bytes()) if target.is_file() else self._send(404, b"")

    def do_POST(self) -> None:
        if not self._authorised():
            return
        name = self.path.split("/info/lfs/", 1)[0]
        asked = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        base = f"http://127.0.0.1:{self.server.server_address[1]}{name}/info/lfs/objects"
        objects = [{"oid": item["oid"], "size": item["size"], "authenticated": False,
                    "actions": {"download": {"href": f"{base}/{item['oid']}"}}} for item in asked["objects"]]
        self._send(200, json.dumps({"transfer": "basic", "objects": objects}).encode(),
                   "application/vnd.git-lfs+json")

    def _authorised(self) -> bool:
        header = self.headers.get("Authorization", "")
        self.seen.append(f"{self.command} {self.path} {'auth' if header else 'anonymous'}")
        password = base64.b64decode(header.removeprefix("Basic ")).decode().split(":", 1)[-1] if header else ""
        if password == self.token:
            return True
        self.send_response(401)
        self.send_header("WWW-Authenticate", 'Basic realm="gitea"')
        self.send_header("Content-Length", "0")
        self.end_headers()
        return False

    def _send(self, status: int, body: bytes, kind: str = "application/octet-stream") -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def gitea_like(tmp_path: Path) -> Iterator[tuple[str, GitRepo, list[str], threading.Event]]:
    """A repository with LFS weights served over HTTP behind ``TOKEN``: (base URL, the repository, requests seen)."""
    repo = lfs_repo(tmp_path / "gitea" / "acme")
    repo.commit({"svc/model.bin": WEIGHTS}, "weights")
    git(repo.bare, "update-server-info")
    seen: list[str] = []
    slow = threading.Event()
    handler = type("Handler", (_GiteaLike,), {"root": tmp_path / "gitea", "token": TOKEN, "seen": seen, "slow": slow})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/", repo, seen, slow
    finally:
        slow.clear()
        server.shutdown()
        server.server_close()


TOKEN = "gitea-token-0123456789abcdef"


def test_the_gitea_token_reaches_the_lfs_endpoint_and_nowhere_else(
        tmp_path: Path, gitea_like: tuple[str, GitRepo, list[str], threading.Event]) -> None:
    base, repo, seen, _slow = gitea_like
    source = GitSource("acme/upstream", f"{base}acme/upstream.git", "main", tmp_path / "state",
                       token=HttpToken(base, TOKEN))
    folder, fetched = materialised(source, repo.shas[-1])
    assert (folder / "model.bin").read_bytes() == WEIGHTS and fetched.fetched_bytes == len(WEIGHTS)
    assert any(line.startswith("POST /acme/upstream.git/info/lfs/objects/batch auth") for line in seen), seen
    assert TOKEN not in (source.mirror_dir / "config").read_text(), "the token is never written to the mirror"


def test_credentials_in_the_source_url_serve_lfs_too_and_a_wrong_token_is_never_shown(
        tmp_path: Path, gitea_like: tuple[str, GitRepo, list[str], threading.Event]) -> None:
    base, repo, _seen, _slow = gitea_like
    url = f"{base}acme/upstream.git".replace("http://", f"http://deployer:{TOKEN}@")
    _folder, fetched = materialised(GitSource("acme/upstream", url, "main", tmp_path / "a"), repo.shas[-1])
    assert fetched.fetched_bytes == len(WEIGHTS)

    wrong = GitSource("acme/upstream", f"{base}acme/upstream.git", "main", tmp_path / "b",
                      token=HttpToken(base, "wrong-token-ffffffffffff"))
    with pytest.raises(SourceError) as raised:
        wrong.fetch()
    assert "wrong-token" not in str(raised.value)


def test_a_slow_lfs_download_does_not_hold_the_sources_other_work(
        tmp_path: Path, gitea_like: tuple[str, GitRepo, list[str], threading.Event]) -> None:
    base, repo, seen, slow = gitea_like
    source = GitSource("acme/upstream", f"{base}acme/upstream.git", "main", tmp_path / "state",
                       token=HttpToken(base, TOKEN))
    source.fetch()
    first = repo.shas[-1]
    folder = source.checkout(first) / "svc"
    pointers = source.lfs_pointers(first, folder)
    slow.set()
    done: list[Any] = []
    download = threading.Thread(target=lambda: done.append(source.materialise_lfs(first, folder, pointers)))
    download.start()
    release = threading.Timer(5, slow.clear)  # were the mirror held, the fetch below would wait for this
    release.start()
    try:
        wait_for(lambda: any(line.startswith("GET") and "/info/lfs/objects/" in line for line in seen) or None,
                 30, "the object's download to start")
        second = repo.commit({"svc/app.py": "print(2)\n"}, "code only, while the weights download")
        git(repo.bare, "update-server-info")
        source.fetch()  # the mirror's own lock is free: the download holds only the LFS one
        assert (source.checkout(second) / "svc" / "app.py").read_text() == "print(2)\n"
        assert not done, "the download was still going on"
    finally:
        release.cancel()
        slow.clear()
        download.join(30)
    assert done and done[0].fetched_bytes == len(WEIGHTS)
    assert (folder / "model.bin").read_bytes() == WEIGHTS


@pytest.mark.parametrize(("env", "base"), [
    ({"DEPLOYER_GITEA__URL": "https://gitea.example", "DEPLOYER_GITEA_TOKEN": TOKEN}, "https://gitea.example/"),
    ({"DEPLOYER_GITEA__URL": "https://gitea.example", "DEPLOYER_GITEA__CLONE_BASE": "http://gitea:3000/",
      "DEPLOYER_GITEA_TOKEN": TOKEN}, "http://gitea:3000/"),
    ({"DEPLOYER_GITEA__URL": "https://gitea.example"}, None),  # no token
    ({"DEPLOYER_GITEA__CLONE_BASE": "file:///srv/git", "DEPLOYER_GITEA_TOKEN": TOKEN}, None),
])
def test_the_token_goes_to_the_gitea_clone_base_only(env: dict[str, str], base: str | None) -> None:
    token = git_token(load_settings(None, env))
    assert (token.base if token is not None else None) == base
    if token is not None:
        assert token.covers(f"{base}acme/models.git")
        assert not token.covers(f"{base.replace('://', '://user:pw@')}acme/models.git"), "its own credentials win"
        assert not token.covers("https://elsewhere.example/acme/models.git")


# -- Docker: the checkout is the build context --------------------------------------------------


def test_a_docker_service_gets_the_real_weights_in_its_image(
        tmp_path: Path, docker_api: Any, busybox_image: str, service_folder: ServiceFolder) -> None:
    from deployer.runtimes.docker import DockerRuntime

    repo = lfs_repo(tmp_path)
    sha = repo.commit({"svc/model.bin": WEIGHTS, "svc/www/version": "v1\n",
                       "svc/Dockerfile": f"FROM {busybox_image}\nCOPY www/version /www/version\n"
                                         "COPY model.bin /www/model.bin\n"}, "weights in a container")
    source = GitSource("models", str(repo.bare), "main", tmp_path / "state")
    folder, _fetched = materialised(source, sha)
    service = replace(service_folder, path=folder)
    runtime = DockerRuntime(templates_dir=TEMPLATES, base_image=busybox_image, keep_images=3)
    deployment = service.deployment(1)
    runtime.build(deployment)
    runtime.apply(deployment)
    try:
        wait_for(lambda: http_get(service.port).status_code == 200, 20, "the container's /health")
        assert http_get(service.port, "/model.bin").content == WEIGHTS
    finally:
        runtime.remove(service.name)
