"""Safety helpers written once: path containment, capped reads of repository files.

Everything deployer reads from a checkout goes through ``contained`` or ``read_inside``:
a symlink is followed only while it stays inside the root, and no read is ever larger
than its cap, so a hostile repository can neither point deployer at a file outside its
checkout nor make it load a huge one. Errors name the path, never the content.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path


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
