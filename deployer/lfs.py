"""Git LFS in checkouts: pointer files found, their objects fetched into the mirror's store, real files linked in.

A checkout is ``git archive`` with every filter unset, so an LFS-tracked file arrives as its
pointer. Its object lives in the mirror's own store (``<mirror>/lfs/objects/ab/cd/<oid>``),
content-addressed and shared by every revision of the source; the checkout's file becomes a
read-only hard link to it (a copy where the filesystem refuses links). Only ``git lfs fetch``
talks to the LFS server, with the remote's URL and credentials, as git does for the clone.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import git
from git.exc import GitCommandError

from deployer.errors import ArtifactFetchError
from deployer.safety import scrub

POINTER_MAX_BYTES = 1024  # git-lfs's own bound: a larger file is never a pointer
_SPEC_LINE = b"version https://git-lfs.github.com/spec/v1\n"
_OID = re.compile(r"sha256:([0-9a-f]{64})")
_GLOB_SPECIAL = re.compile(r"([*?\[\]\\])")
_NAMED_AT_MOST = 5  # files named in a failure message; the rest are counted


@dataclass(frozen=True)
class Pointer:
    """One LFS pointer file in a checkout: where it is (relative to the checkout) and what it stands for."""

    path: str
    oid: str  # sha256 of the content, 64 hex
    size: int


@dataclass(frozen=True)
class Fetched:
    """What materialising a folder's LFS files took: for the attempt's step and the figures."""

    files: int
    objects: int  # distinct objects the files need
    fetched_objects: int
    fetched_bytes: int
    total_bytes: int

    def summary(self) -> str:
        kept = self.objects - self.fetched_objects
        return (f"{self.files} LFS file(s), {self.total_bytes} bytes: fetched {self.fetched_objects} object(s), "
                f"{self.fetched_bytes} bytes; {kept} already in the source's store; linked in read-only")


def read_pointer(file: Path, name: str) -> Pointer | None:
    """The pointer ``file`` holds (named ``name`` in the checkout), or None when it is an ordinary file."""
    with file.open("rb") as handle:
        data = handle.read(POINTER_MAX_BYTES + 1)
    if len(data) > POINTER_MAX_BYTES or not data.startswith(_SPEC_LINE):
        return None
    fields = dict(line.split(" ", 1) for line in data.decode("ascii", "replace").splitlines()[1:] if " " in line)
    oid = _OID.fullmatch(fields.get("oid", ""))
    size = fields.get("size", "")
    if oid is None or not size.isdigit():
        return None
    return Pointer(name, oid.group(1), int(size))


def find_pointers(checkout: Path, folder: Path) -> list[Pointer]:
    """Every pointer file under ``folder`` (symlinks are not followed: a link is not a tracked file)."""
    root = Path(os.path.realpath(checkout))
    found: list[Pointer] = []
    for directory, _dirs, names in os.walk(folder):
        for name in sorted(names):
            file = Path(directory, name)
            info = file.lstat()
            if file.is_symlink() or not file.is_file() or info.st_size > POINTER_MAX_BYTES:
                continue
            pointer = read_pointer(file, file.relative_to(root).as_posix())
            if pointer is not None:
                found.append(pointer)
    return sorted(found, key=lambda pointer: pointer.path)


class LfsStore:
    """The mirror's LFS object store, in git-lfs's own layout (so ``git lfs fetch`` fills it)."""

    def __init__(self, mirror_dir: Path) -> None:
        self.root = mirror_dir / "lfs"

    def object(self, oid: str) -> Path:
        return self.root / "objects" / oid[:2] / oid[2:4] / oid

    def has(self, pointer: Pointer) -> bool:
        path = self.object(pointer.oid)
        return path.is_file() and path.stat().st_size == pointer.size

    def missing(self, pointers: Iterable[Pointer]) -> dict[str, Pointer]:
        """The objects not (or not wholly) in the store, by oid."""
        return {pointer.oid: pointer for pointer in pointers if not self.has(pointer)}


def fetch(repo: git.Repo, store: LfsStore, sha: str, include: str, needed: list[Pointer], *,
          env: Mapping[str, str], timeout: float) -> None:
    """``git lfs fetch`` of ``sha`` limited to ``include``; ``ArtifactFetchError`` naming what is still missing.

    The store is git-lfs's default for a bare repository, ``<mirror>/lfs``: no ``-c lfs.storage``,
    which git passes on to the ``file://`` transfer agent, where it would name the remote's store too.
    """
    command = ["git", "-c", "lfs.fetchrecentalways=false", "lfs", "fetch", "origin", sha]
    if include:
        command.append(f"--include={include}")
    try:
        repo.git.execute(command, env=dict(env), kill_after_timeout=timeout)
        problem = "git lfs fetch did not bring them"
    except GitCommandError as exc:
        problem = _lfs_stderr(exc)
    still = store.missing(needed)
    if still:
        raise ArtifactFetchError(f"cannot fetch the Git LFS objects of {_named(still.values())}: {problem}")


def require_git_lfs(repo: git.Repo, needed: list[Pointer], env: Mapping[str, str]) -> None:
    """``ArtifactFetchError`` saying git-lfs is missing, before a pointer file could be taken for a model."""
    try:
        repo.git.execute(["git", "lfs", "version"], env=dict(env))
    except GitCommandError:
        raise ArtifactFetchError(f"git-lfs is not installed on this host (install the git-lfs package), and "
                                 f"{_named(needed)} are Git LFS pointers: not deployed as they are") from None


def include_pattern(checkout: Path, folder: Path) -> str:
    """The ``--include`` for ``folder`` (its whole subtree); "" for the repository root or a name it cannot express."""
    relative = Path(os.path.realpath(folder)).relative_to(os.path.realpath(checkout)).as_posix()
    if relative in ("", ".") or "," in relative:  # git-lfs splits --include at commas: fetch the whole commit
        return ""
    return _GLOB_SPECIAL.sub(r"[\1]", relative) + "/**"


def link_in(checkout: Path, pointers: Iterable[Pointer], store: LfsStore) -> None:
    """Replace each pointer file by its object: a read-only hard link, or a copy; each replacement atomic."""
    root = Path(os.path.realpath(checkout))
    for pointer in pointers:
        source = store.object(pointer.oid)
        source.chmod(0o444)
        target = root / pointer.path
        temporary = target.with_name(f".lfs-{target.name}.tmp")
        temporary.unlink(missing_ok=True)
        try:
            os.link(source, temporary)
        except OSError:  # another filesystem, or one without hard links
            shutil.copyfile(source, temporary)
            temporary.chmod(0o444)
        os.replace(temporary, target)


def _named(pointers: Iterable[Pointer]) -> str:
    listed = list(pointers)
    named = ", ".join(f"{pointer.path} (oid {pointer.oid}, {pointer.size} bytes)"
                      for pointer in listed[:_NAMED_AT_MOST])
    more = len(listed) - _NAMED_AT_MOST
    return named + (f" and {more} more file(s)" if more > 0 else "")


def _lfs_stderr(exc: GitCommandError) -> str:
    """git-lfs's own complaint, without credentials: its error lines (or its last line)."""
    raw = str(exc.stderr or "").strip().removeprefix("stderr:").strip().strip("'").strip()
    lines = [line.strip() for line in raw.splitlines() if line.strip() and not line.startswith("fetch: Fetching")]
    errors = [line for line in lines if "error" in line.lower() or "missing" in line.lower()]
    chosen = errors or lines[-2:] or [f"git lfs fetch failed (exit {exc.status})"]
    return scrub("; ".join(chosen))[:600]
