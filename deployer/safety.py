"""Safety helpers written once: path containment, capped reads, source names, credentials, commit ids.

Everything deployer reads from a checkout goes through ``contained``, ``file_inside`` or
``read_inside``: a symlink is followed only while it stays inside the root, and no read is
larger than its cap. Every URL or git message shown, logged or stored first loses its
credentials (``strip_credentials``, ``scrub``). Commit ids are checked by the patterns here.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

# Gitea's own rule for owner and repository names (letters, digits, '_', '-', '.'), less the
# few that would be unsafe as a folder name or a command-line word: '.', '..', a leading '-'.
_NAME_PART = r"(?!\.{1,2}(?:/|$))[A-Za-z0-9_.][A-Za-z0-9_.-]{0,99}"
_SOURCE_NAME = re.compile(rf"{_NAME_PART}(?:/{_NAME_PART})?")
SOURCE_NAME_RULE = ("a source is named 'name' or 'owner/name', each part letters, digits, '_', '-' or '.' "
                    "(at most 100, not starting with '-', not '.' or '..')")

FULL_SHA = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")  # a SHA-1 or SHA-256 commit id as git prints it
ZERO_SHA = re.compile(r"0{40}|0{64}")  # git's "no commit": a branch created or deleted, Gitea's test delivery
# A full id or an abbreviation (git's shortest is 4); hex only, so a value is never read as a git option.
SHA_PREFIX = re.compile(r"[0-9a-f]{4,64}")
_URL_USERINFO = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://)[^/\s@'\"]+@")
_WEB_SCHEMES = frozenset({"http", "https"})


class UnsafePath(ValueError):
    """A path leads outside its root, is not a regular file, or is too large; ``str()`` says which."""


def contained(root: Path, relative: str | Path) -> Path:
    """``root / relative`` with every symlink resolved, refusing anything that leads outside ``root``."""
    real_root = Path(os.path.realpath(root))
    target = Path(os.path.realpath(root / relative))
    if not target.is_relative_to(real_root):
        raise UnsafePath(f"'{relative}' leads outside the repository (a symlink pointing out is not allowed)")
    return target


def is_contained(root: Path, relative: str | Path) -> bool:
    try:
        contained(root, relative)
    except UnsafePath:
        return False
    return True


def file_inside(root: Path, relative: str | Path) -> Path | None:
    """``contained(root, relative)`` when it is a regular file; None when it is missing, not a file, or outside.

    For callers that answer all three alike ("missing from the repository"), so that a
    hostile link learns nothing about what lies outside the root.
    """
    try:
        target = contained(root, relative)
    except UnsafePath:
        return None
    return target if target.is_file() else None


def read_inside(root: Path, relative: str | Path, limit: int) -> bytes:
    """At most ``limit`` + 1 bytes of a regular file inside ``root`` (one past the cap, so "too large" shows).

    Raises ``FileNotFoundError`` when there is no such file and ``UnsafePath`` when it leads
    outside ``root`` or is not a regular file (a FIFO or a device would block or never end).
    """
    target = contained(root, relative)
    # O_NONBLOCK: opening a FIFO must not wait for a writer; the fstat below then refuses it.
    fd = os.open(target, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise UnsafePath(f"'{relative}' is not a regular file")
        return handle.read(limit + 1)


def write_inside(root: Path, relative: str | Path, data: bytes, *, mode: int = 0o600) -> Path:
    """Write ``data`` to ``root / relative`` atomically with ``mode``, never outside ``root``.

    Folders on the way are made (0700) when missing; a symlink on the way, or at the file's own
    place, counts only while it stays inside ``root`` (the link itself is then replaced, never
    followed). Raises ``UnsafePath`` otherwise.
    """
    parent = contained(root, Path(relative).parent)
    name = Path(relative).name
    if name in ("", ".", ".."):
        raise UnsafePath(f"'{relative}' does not name a file")
    contained(root, relative)  # a link at the file's place that points out is refused too
    folder = Path(os.path.realpath(root))
    for part in Path(relative).parent.parts:  # one by one: mkdir(parents=True) makes the upper ones 0755
        folder = folder / part
        if not folder.exists():
            folder.mkdir(mode=0o700)
    parent = contained(root, Path(relative).parent)  # made just now: check again what it resolved to
    temporary = parent / f".{name}.deployer-tmp"
    temporary.unlink(missing_ok=True)
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(temporary, mode)  # whatever the umask took away or added
        target = parent / name
        if target.is_dir() and not target.is_symlink():
            raise UnsafePath(f"'{relative}' is a folder")
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)
    return parent / name


def is_source_name(name: str) -> bool:
    """True for names deployer can follow: they become folder names under the state dir."""
    return _SOURCE_NAME.fullmatch(name) is not None and not name.endswith(".git")


# -- credentials -----------------------------------------------------------


def strip_credentials(url: str, *, keep_user: bool = False) -> str:
    """``http://user:token@host/x.git`` → ``http://host/x.git``; URLs without user info and paths unchanged.

    With ``keep_user``, a URL other than http(s) keeps its user name (``ssh://git@host/x.git``
    names the account, not a secret) and loses only the password; http(s) URLs always lose
    all user info, since a token can sit in either part.
    """
    try:
        parts = urlsplit(url)
    except ValueError:  # a malformed URL (a broken IPv6 host) is still scrubbed, never echoed whole
        return scrub(url)
    if "@" not in parts.netloc:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    if keep_user and parts.username and parts.scheme not in _WEB_SCHEMES:
        netloc = f"{parts.username}@{netloc}"
    return urlunsplit(parts._replace(netloc=netloc))


def scrub(text: str) -> str:
    """Strip credentials from every URL inside a free text (git's and Gitea's own messages echo URLs)."""
    return _URL_USERINFO.sub(r"\1", text)


# -- commit ids --------------------------------------------------------------


def is_full_sha(text: str) -> bool:
    """A whole lower-case SHA-1 (40) or SHA-256 (64) commit id."""
    return FULL_SHA.fullmatch(text) is not None


def is_zero_sha(text: str) -> bool:
    """The all-zero id git and Gitea use for "no commit" (either length)."""
    return ZERO_SHA.fullmatch(text) is not None


def is_sha_prefix(text: str, *, shortest: int = 4) -> bool:
    """A lower-case commit id or an abbreviation of it with at least ``shortest`` hex digits."""
    return len(text) >= shortest and SHA_PREFIX.fullmatch(text) is not None
