"""Safety helpers written once: path containment, capped reads of repository files, source names.

Everything deployer reads from a checkout goes through ``contained`` or ``read_inside``:
a symlink is followed only while it stays inside the root, and no read is ever larger
than its cap, so a hostile repository can neither point deployer at a file outside its
checkout nor make it load a huge one. Errors name the path, never the content.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

# Gitea's own rule for owner and repository names (letters, digits, '_', '-', '.'), less the
# few that would be unsafe as a folder name or a command-line word: '.', '..', a leading '-'.
_NAME_PART = r"(?!\.{1,2}(?:/|$))[A-Za-z0-9_.][A-Za-z0-9_.-]{0,99}"
_SOURCE_NAME = re.compile(rf"{_NAME_PART}(?:/{_NAME_PART})?")
SOURCE_NAME_RULE = ("a source is named 'name' or 'owner/name', each part letters, digits, '_', '-' or '.' "
                    "(at most 100, not starting with '-', not '.' or '..')")


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


def is_source_name(name: str) -> bool:
    """True for names deployer can follow: they become folder names under the state dir."""
    return _SOURCE_NAME.fullmatch(name) is not None and not name.endswith(".git")
