"""GitSource against real git repositories on disk (created with the git CLI)."""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
from collections.abc import Mapping
from datetime import UTC
from pathlib import Path

import pytest

from deployer.errors import ConfigError, SourceError
from deployer.source import GitSource

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")

ENV = {
    **os.environ,
    "GIT_AUTHOR_NAME": "Ada Dev", "GIT_AUTHOR_EMAIL": "ada@example.com",
    "GIT_COMMITTER_NAME": "Ada Dev", "GIT_COMMITTER_EMAIL": "ada@example.com",
    "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1",
}


def git(cwd: Path, *args: str) -> str:
    done = subprocess.run(["git", *args], cwd=cwd, env=ENV, check=True, capture_output=True, text=True)
    return done.stdout.strip()


class Upstream:
    """A bare repository (what Gitea holds) and a work clone that commits and pushes to it."""

    def __init__(self, root: Path) -> None:
        self.bare = root / "upstream.git"
        self.work = root / "work"
        git(root, "init", "--bare", "--initial-branch=main", str(self.bare))
        git(root, "clone", str(self.bare), str(self.work))
        git(self.work, "checkout", "-B", "main")

    def commit(self, files: Mapping[str, str | None], message: str, branch: str = "main") -> str:
        """Write (or, for None, delete) files, commit, push; return the new sha."""
        for name, content in files.items():
            path = self.work / name
            if content is None:
                path.unlink()
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(content)
        git(self.work, "add", "-A")
        git(self.work, "commit", "-q", "-m", message)
        git(self.work, "push", "-q", "origin", f"HEAD:refs/heads/{branch}")
        return git(self.work, "rev-parse", "HEAD")


@pytest.fixture
def upstream(tmp_path: Path) -> Upstream:
    return Upstream(tmp_path)


@pytest.fixture
def state(tmp_path: Path) -> Path:
    return tmp_path / "state"


def source_for(upstream: Upstream, state: Path, *, url: str | None = None) -> GitSource:
    return GitSource("acme/web", url or str(upstream.bare), "main", state)


# ---------------------------------------------------------------- fetch / head


def test_first_fetch_creates_a_mirror_and_later_fetches_update_it(upstream: Upstream, state: Path) -> None:
    first = upstream.commit({"service.yaml": "name: a\n"}, "first")
    source = source_for(upstream, state)
    source.fetch()
    assert (state / "mirrors" / "acme" / "web.git" / "HEAD").is_file()
    assert source.head() == first

    second = upstream.commit({"service.yaml": "name: b\n"}, "second")
    assert source.head() == first  # nothing changes until the next fetch
    source.fetch()
    assert source.head() == second
    assert source.commit_info(first).sha == first  # the older commit is still in the mirror


def test_file_url_works(upstream: Upstream, state: Path) -> None:
    sha = upstream.commit({"a.txt": "a"}, "a")
    source = source_for(upstream, state, url=upstream.bare.as_uri())
    source.fetch()
    assert source.head() == sha


def test_fetch_prunes_deleted_branches(upstream: Upstream, state: Path) -> None:
    upstream.commit({"a.txt": "a"}, "a")
    upstream.commit({"b.txt": "b"}, "b", branch="feature")
    source = source_for(upstream, state)
    source.fetch()
    mirror = state / "mirrors" / "acme" / "web.git"
    assert "feature" in git(mirror, "branch", "--list")
    git(upstream.bare, "branch", "-D", "feature")
    source.fetch()
    assert "feature" not in git(mirror, "branch", "--list")


def test_missing_branch_is_a_source_error(upstream: Upstream, state: Path) -> None:
    upstream.commit({"a.txt": "a"}, "a", branch="trunk")
    source = source_for(upstream, state)
    source.fetch()
    with pytest.raises(SourceError, match="branch 'main' not found in "):
        source.head()


def test_unknown_commit(upstream: Upstream, state: Path) -> None:
    upstream.commit({"a.txt": "a"}, "a")
    source = source_for(upstream, state)
    source.fetch()
    with pytest.raises(SourceError, match="commit ffffffffffff not found"):
        source.checkout("f" * 40)
    with pytest.raises(SourceError):
        source.checkout("--all")  # never read as a git option


def test_operations_before_the_first_fetch(upstream: Upstream, state: Path) -> None:
    source = source_for(upstream, state)
    with pytest.raises(SourceError, match="has not been fetched yet"):
        source.head()


# ---------------------------------------------------------------- checkout


def test_checkout_is_the_exact_sha_not_the_branch_head(upstream: Upstream, state: Path) -> None:
    old = upstream.commit({"service.yaml": "name: old\n", "gone.txt": "x"}, "old")
    upstream.commit({"service.yaml": "name: new\n", "gone.txt": None}, "new")
    source = source_for(upstream, state)
    source.fetch()
    path = source.checkout(old)
    assert path == state / "checkouts" / "acme" / "web" / old
    assert (path / "service.yaml").read_text() == "name: old\n"
    assert (path / "gone.txt").exists()
    assert not (path / ".git").exists()


def test_checkout_is_reused_and_accepts_a_short_sha(upstream: Upstream, state: Path) -> None:
    sha = upstream.commit({"a.txt": "a"}, "a")
    source = source_for(upstream, state)
    source.fetch()
    path = source.checkout(sha)
    (path / "marker").write_text("kept")
    assert source.checkout(sha[:10]) == path
    assert (path / "marker").read_text() == "kept"
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".tmp-")]


def test_checkout_keeps_modes_symlinks_and_ignores_export_attributes(upstream: Upstream, state: Path) -> None:
    files = {"run.sh": "#!/bin/sh\n", "tests/t.py": "", ".gitattributes": "tests export-ignore\n"}
    upstream.commit(files, "a")
    (upstream.work / "run.sh").chmod(0o755)
    (upstream.work / "link").symlink_to("run.sh")
    sha = upstream.commit({}, "mode and link")
    source = source_for(upstream, state)
    source.fetch()
    path = source.checkout(sha)
    assert os.access(path / "run.sh", os.X_OK)
    assert (path / "link").is_symlink() and os.readlink(path / "link") == "run.sh"
    assert (path / "tests" / "t.py").exists()  # export-ignore must not drop files from a deploy


def test_concurrent_checkouts_of_one_sha(upstream: Upstream, state: Path) -> None:
    sha = upstream.commit({f"f{i}.txt": str(i) for i in range(50)}, "many")
    source = source_for(upstream, state)
    source.fetch()
    results: list[Path] = []
    threads = [threading.Thread(target=lambda: results.append(source.checkout(sha))) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(results)) == 1 and len(list(results[0].iterdir())) == 50


def test_prune_checkouts(upstream: Upstream, state: Path) -> None:
    shas = [upstream.commit({"a.txt": str(i)}, f"c{i}") for i in range(3)]
    source = source_for(upstream, state)
    source.fetch()
    for sha in shas:
        source.checkout(sha)
    leftover = state / "checkouts" / "acme" / "web" / ".tmp-abc-123"
    leftover.mkdir()
    unrelated = state / "checkouts" / "acme" / "web" / "notes"
    unrelated.mkdir()
    removed = source.prune_checkouts({shas[2]})
    assert sorted(removed) == sorted([shas[0], shas[1], ".tmp-abc-123"])
    remaining = sorted(p.name for p in (state / "checkouts" / "acme" / "web").iterdir())
    assert remaining == sorted([shas[2], "notes"])


# ---------------------------------------------------------------- history and content


def test_tree_id_is_stable_when_only_another_folder_changes(upstream: Upstream, state: Path) -> None:
    first = upstream.commit({"services/a/main.py": "a1", "services/b/main.py": "b1"}, "both")
    second = upstream.commit({"services/b/main.py": "b2"}, "only b")
    third = upstream.commit({"services/a/main.py": "a2"}, "only a")
    source = source_for(upstream, state)
    source.fetch()
    assert source.tree_id(first, "services/a") == source.tree_id(second, "services/a")
    assert source.tree_id(second, "services/a") != source.tree_id(third, "services/a")
    assert source.tree_id(first, "services/b") != source.tree_id(second, "services/b")
    assert source.tree_id(first, ".") != source.tree_id(second, ".")
    assert source.tree_id(first, "./services/a/") == source.tree_id(first, "services/a")
    assert source.tree_id(first, ".") == git(upstream.work, "rev-parse", f"{first}^{{tree}}")
    with pytest.raises(SourceError, match="folder 'services/c' does not exist"):
        source.tree_id(first, "services/c")
    with pytest.raises(SourceError, match="is not a folder"):
        source.tree_id(first, "services/a/main.py")


def test_commit_info(upstream: Upstream, state: Path) -> None:
    sha = upstream.commit({"a.txt": "a"}, "Fix the deploy\n\nLonger explanation.")
    source = source_for(upstream, state)
    source.fetch()
    info = source.commit_info(sha)
    assert info.sha == sha
    assert info.author == "Ada Dev <ada@example.com>"
    assert info.summary == "Fix the deploy"
    assert info.message.startswith("Fix the deploy\n\nLonger explanation.")
    assert info.committed_at.tzinfo is not None and info.committed_at.utcoffset() == UTC.utcoffset(None)


# ---------------------------------------------------------------- errors and credentials


def test_unreachable_url_error_has_no_credentials(state: Path) -> None:
    source = GitSource("x", "http://user:secret@127.0.0.1:9/x.git", "main", state, timeout=30)
    with pytest.raises(SourceError) as caught:
        source.fetch()
    message = str(caught.value)
    assert "secret" not in message and "user:" not in message
    assert message.startswith("cannot fetch http://127.0.0.1:9/x.git: ")
    assert caught.value.__suppress_context__  # GitPython's exception (with the command line) stays hidden
    assert not (state / "mirrors" / "x.git").exists()


def test_missing_local_repository(tmp_path: Path, state: Path) -> None:
    source = GitSource("x", str(tmp_path / "nope.git"), "main", state)
    with pytest.raises(SourceError, match=r"^cannot fetch .*nope\.git: "):
        source.fetch()


def test_bad_source_names_are_refused(state: Path) -> None:
    for name in ("../evil", "/abs", "a/b/c", ""):
        with pytest.raises(ConfigError):
            GitSource(name, "/x", "main", state)
    with pytest.raises(ConfigError):
        GitSource("ok", "/x", "--upload-pack=x", state)
