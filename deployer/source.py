"""Git sources: one bare mirror per source, checkouts of exact shas, diffs between commits.

GitPython drives the git CLI. Every GitPython and gitdb error is translated into
``SourceError`` here, with credentials stripped from URLs, so no layer above sees them.
A checkout is ``git archive <sha>`` unpacked into a temp folder and renamed into place.
"""

from __future__ import annotations

import base64
import re
import shutil
import tarfile
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

import git
from git.exc import GitCommandError, GitError, ODBError

from deployer.errors import ConfigError, SourceError
from deployer.lfs import Fetched, LfsStore, Pointer, find_pointers, include_pattern, link_in, require_git_lfs
from deployer.lfs import fetch as lfs_fetch
from deployer.safety import (
    SOURCE_NAME_RULE,
    is_full_sha,
    is_sha_prefix,
    is_source_name,
    scrub,
    strip_credentials,
)

_BRANCH = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._/-]{0,199}")
_TMP_PREFIX = ".tmp-"
# A daemon must never wait for a password prompt nobody will answer. The host's system-wide
# config is not read: deployer configures what it needs (LFS) itself, on the command line.
_GIT_ENV = {"GIT_TERMINAL_PROMPT": "0", "GCM_INTERACTIVE": "never", "GIT_CONFIG_NOSYSTEM": "1"}
# export-ignore / export-subst in a repo's .gitattributes would make `git archive` differ from
# the commit, and a filter (a host's `filter.lfs`) would smudge files on the fly, downloading per
# checkout; $GIT_DIR/info/attributes overrides them: LFS pointers are replaced by deployer (lfs.py).
_EXACT_ARCHIVE_ATTRIBUTES = "* -export-ignore -export-subst -filter\n"
# Weights can take a while; a stalled LFS server is caught sooner by git-lfs's own activity timeout.
LFS_TIMEOUT = 3600.0


@dataclass(frozen=True)
class HttpToken:
    """A token git and git-lfs send to every URL under ``base`` (Gitea's clones and its LFS endpoint).

    Basic auth with the token as password, as Gitea takes it, passed as an ``http.<base>.extraHeader``
    through git's environment (``GIT_CONFIG_COUNT``): never on a command line, in a URL, in the
    mirror's config or in a message. A source URL with its own user info keeps using that.
    """

    base: str  # "https://gitea.example/": http(s), ending in "/"
    token: str

    def covers(self, url: str) -> bool:
        return url.startswith(self.base) and "@" not in urlsplit(url).netloc

    def env(self) -> dict[str, str]:
        basic = base64.b64encode(f"deployer:{self.token}".encode()).decode("ascii")
        return {"GIT_CONFIG_COUNT": "1", "GIT_CONFIG_KEY_0": f"http.{self.base}.extraHeader",
                "GIT_CONFIG_VALUE_0": f"Authorization: Basic {basic}"}


@dataclass(frozen=True)
class CommitInfo:
    sha: str
    author: str  # "Name <email>"
    summary: str  # first line of the message
    message: str
    committed_at: datetime  # timezone-aware, UTC


class GitSource:
    """One followed repository and branch; safe to share between threads.

    Create exactly one instance per source (the composition root does): the lock
    that serialises mirror operations lives on the instance.
    """

    def __init__(self, name: str, url: str, branch: str, state_dir: Path, *, timeout: float = 300.0,
                 token: HttpToken | None = None) -> None:
        if not is_source_name(name):
            raise ConfigError(f"source name {name[:120]!r}: {SOURCE_NAME_RULE}")
        if not _BRANCH.fullmatch(branch) or ".." in branch:
            raise ConfigError(f"source {name}: {branch!r} is not a valid branch name")
        self.name = name
        self.url = url
        self.branch = branch
        self.timeout = timeout
        self.mirror_dir = state_dir / "mirrors" / f"{name}.git"
        self.checkouts_dir = state_dir / "checkouts" / name
        self._lock = threading.RLock()
        self._lfs_lock = threading.Lock()  # one LFS download and linking at a time per source
        self._env = {**_GIT_ENV, **(token.env() if token is not None and token.covers(url) else {})}

    def __repr__(self) -> str:
        return f"GitSource({self.name!r}, {self.safe_url!r}, branch={self.branch!r})"

    @property
    def safe_url(self) -> str:
        return strip_credentials(self.url)

    # ------------------------------------------------------------ mirror

    def fetch(self) -> None:
        """Bring the mirror up to date: ``clone --mirror`` the first time, ``fetch --prune`` after."""
        with self._lock, self._translate(f"cannot fetch {self.safe_url}"):
            if (self.mirror_dir / "HEAD").is_file():
                self._update_mirror()
            else:
                self._clone_mirror()

    def head(self) -> str:
        """The sha the followed branch points at in the mirror (as of the last fetch)."""
        with self._session(f"cannot read branch '{self.branch}' of {self.safe_url}") as repo:
            try:
                return str(repo.git.rev_parse("--verify", "--quiet", f"refs/heads/{self.branch}^{{commit}}"))
            except GitCommandError:
                raise SourceError(f"branch '{self.branch}' not found in {self.safe_url}") from None

    def checkout(self, sha: str) -> Path:
        """The files of exactly ``sha`` at ``checkouts/<name>/<sha>/``, reused when already there."""
        with self._session(f"cannot check out {sha[:12]} of {self.safe_url}") as repo:
            full = self._resolve(repo, sha)
            target = self.checkouts_dir / full
            if not target.is_dir():
                self._export(repo, full, target)
            return target

    def commit_info(self, sha: str) -> CommitInfo:
        with self._session(f"cannot read commit {sha[:12]} of {self.safe_url}") as repo:
            commit = repo.commit(self._resolve(repo, sha))
            message = _text(commit.message)
            return CommitInfo(
                sha=commit.hexsha,
                author=f"{commit.author.name} <{commit.author.email}>",
                summary=message.split("\n", 1)[0].strip(),
                message=message,
                committed_at=commit.committed_datetime.astimezone(UTC),
            )

    def tree_id(self, sha: str, path: str = ".") -> str:
        """Git tree id of a folder at a commit ("." is the root); same content, same id."""
        with self._session(f"cannot read {path!r} at {sha[:12]} of {self.safe_url}") as repo:
            tree = repo.commit(self._resolve(repo, sha)).tree
            relative = _repo_path(path)
            if relative is None:
                return str(tree.hexsha)
            try:
                entry = tree / relative
            except KeyError:
                raise SourceError(f"folder '{relative}' does not exist at {sha[:12]}") from None
            if entry.type != "tree":
                raise SourceError(f"'{relative}' is not a folder at {sha[:12]}")
            return str(entry.hexsha)

    def lfs_pointers(self, sha: str, folder: Path) -> list[Pointer]:
        """The Git LFS pointer files still in ``folder`` of the checkout of ``sha`` (none once materialised)."""
        with self._session(f"cannot read the files of {sha[:12]}") as repo:
            return find_pointers(self.checkouts_dir / self._resolve(repo, sha), folder)

    def materialise_lfs(self, sha: str, folder: Path, pointers: list[Pointer]) -> Fetched:
        """Fetch what ``pointers`` need into the mirror's LFS store (only what it lacks), then link the real files in.

        ``ArtifactFetchError`` names each file and object still missing (a missing object, an
        unreachable LFS server, git-lfs not installed); the checkout then keeps its pointers.
        A download can take minutes: it holds its own lock, not the mirror's, so the source's
        fetches and other services' checkouts go on meanwhile (git lets readers share a repository).
        """
        store = LfsStore(self.mirror_dir)
        action = f"cannot fetch the Git LFS files of {sha[:12]} from {self.safe_url}"
        with self._lfs_lock, self._translate(action), self._repo() as repo:
            full = self._resolve(repo, sha)
            checkout = self.checkouts_dir / full
            missing = store.missing(pointers)
            if missing:
                needed = list(missing.values())
                require_git_lfs(repo, needed, self._env)
                lfs_fetch(repo, store, full, include_pattern(checkout, folder), needed, env=self._env,
                          timeout=max(self.timeout, LFS_TIMEOUT))
            link_in(checkout, pointers, store)
        objects = {pointer.oid: pointer.size for pointer in pointers}
        return Fetched(files=len(pointers), objects=len(objects), fetched_objects=len(missing),
                       fetched_bytes=sum(pointer.size for pointer in missing.values()),
                       total_bytes=sum(objects.values()))

    def prune_checkouts(self, keep: set[str]) -> list[str]:
        """Remove checkouts of every sha not in ``keep`` (and leftovers of interrupted ones)."""
        removed: list[str] = []
        with self._lock, self._translate(f"cannot prune checkouts of {self.name}"):
            if not self.checkouts_dir.is_dir():
                return removed
            for entry in sorted(self.checkouts_dir.iterdir()):
                # Only names this class creates: an unexpected folder is left alone.
                ours = is_full_sha(entry.name) or entry.name.startswith(_TMP_PREFIX)
                if ours and entry.name not in keep and entry.is_dir():
                    shutil.rmtree(entry)
                    removed.append(entry.name)
        return removed

    # ------------------------------------------------------------ internals

    @contextmanager
    def _session(self, action: str) -> Iterator[git.Repo]:
        """Lock, error translation and an open mirror: the frame of every mirror operation."""
        with self._lock, self._translate(action), self._repo() as repo:
            yield repo

    @contextmanager
    def _translate(self, action: str) -> Iterator[None]:
        """Turn GitPython, gitdb and OS errors into ``SourceError`` without credentials."""
        try:
            yield
        except GitCommandError as exc:
            raise SourceError(f"{action}: {scrub(_git_stderr(exc))}") from None
        except (GitError, ODBError, ValueError, OSError, tarfile.TarError) as exc:
            raise SourceError(f"{action}: {scrub(str(exc)) or type(exc).__name__}") from None

    @contextmanager
    def _repo(self) -> Iterator[git.Repo]:
        if not (self.mirror_dir / "HEAD").is_file():
            raise SourceError(f"{self.safe_url} has not been fetched yet")
        repo = git.Repo(self.mirror_dir)
        repo.git.update_environment(**self._env)
        try:
            yield repo
        finally:
            repo.close()  # ends GitPython's persistent cat-file processes

    def _clone_mirror(self) -> None:
        """Clone into a temp folder and rename, so a failed clone never looks like a mirror."""
        self.mirror_dir.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(self.mirror_dir, ignore_errors=True)  # a broken earlier attempt
        tmp = Path(tempfile.mkdtemp(prefix=_TMP_PREFIX, dir=self.mirror_dir.parent))
        try:
            git.Git.check_unsafe_protocols(self.url)  # refuses ext:: and friends, as Repo.clone_from does
            # Repo.clone_from ignores kill_after_timeout, so run the command itself.
            runner = git.Git(str(tmp.parent))
            runner.clone("--mirror", "--", self.url, str(tmp), env=self._env, kill_after_timeout=self.timeout)
            _exact_archives(tmp)
            tmp.rename(self.mirror_dir)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _update_mirror(self) -> None:
        with self._repo() as repo:
            origin = repo.remote("origin")
            if origin.url != self.url:  # the configured URL changed (new host, rotated token)
                repo.git.remote("set-url", "origin", self.url)
            _exact_archives(self.mirror_dir)  # a mirror cloned by an earlier version lacks "-filter"
            repo.git.fetch("--prune", "origin", env=self._env, kill_after_timeout=self.timeout)

    def _resolve(self, repo: git.Repo, sha: str) -> str:
        """The full sha of a commit given by (a prefix of) its sha."""
        if not is_sha_prefix(sha):  # hex only: a value can never be read as a git option
            raise SourceError(f"{sha[:70]!r} is not a commit sha")
        try:
            return str(repo.git.rev_parse("--verify", "--quiet", f"{sha}^{{commit}}"))
        except GitCommandError:
            raise SourceError(f"commit {sha[:12]} not found in {self.safe_url}") from None

    def _export(self, repo: git.Repo, sha: str, target: Path) -> None:
        """``git archive`` into a temp folder next to ``target``, then rename: never half a checkout."""
        self.checkouts_dir.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f"{_TMP_PREFIX}{sha[:12]}-", dir=self.checkouts_dir))
        try:
            process = repo.git.archive("--format=tar", sha, as_process=True)
            with tarfile.open(fileobj=process.stdout, mode="r|") as archive:
                # "tar" refuses absolute names and paths leaving the folder; symlinks stay as in git.
                archive.extractall(tmp, filter="tar")
            process.wait()
            tmp.rename(target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def _exact_archives(mirror: Path) -> None:
    attributes = mirror / "info" / "attributes"
    if not attributes.is_file() or attributes.read_text(encoding="utf-8") != _EXACT_ARCHIVE_ATTRIBUTES:
        attributes.parent.mkdir(exist_ok=True)
        attributes.write_text(_EXACT_ARCHIVE_ATTRIBUTES, encoding="utf-8")


def _text(message: str | bytes) -> str:
    return message if isinstance(message, str) else message.decode("utf-8", "replace")


def _repo_path(path: str) -> str | None:
    """A path inside the repository in git's form; None for the root."""
    pure = PurePosixPath(path)
    if pure.is_absolute() or ".." in pure.parts:
        raise SourceError(f"{path!r} is not a path inside the repository")
    text = pure.as_posix()
    return None if text in (".", "") else text


def _git_stderr(exc: GitCommandError) -> str:
    """git's own complaint: GitPython wraps stderr as "\\n  stderr: '...'"; keep the fatal line."""
    raw = str(exc.stderr or "").strip()
    raw = raw.removeprefix("stderr:").strip().strip("'").strip()
    lines = [line.strip() for line in raw.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith(("fatal:", "error:"))]
    chosen = errors or lines[-1:] or [f"git failed (exit {exc.status})"]
    return "; ".join(chosen)[:500]
