"""The gateway's files and processes as the operating system shows them.

Config files are written atomically under a name no include glob matches; pids are read
from pid files and checked in /proc (a zombie counts as gone); a lock file serialises
every change of the gateway across threads and processes.
"""

from __future__ import annotations

from pathlib import Path

from deployer import host
from deployer.host import alive, children, flock, holds_file, parent_pid, processes_named, read_pid

__all__ = ["alive", "children", "cmdline", "flock", "holds_file", "parent_pid", "processes_named", "read_pid",
           "read_text", "write_atomic"]


def write_atomic(path: Path, text: str) -> None:
    """nginx's config: readable by its workers (they run as nobody)."""
    host.write_atomic(path, text, mode=0o644)


def read_text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None


def cmdline(pid: int) -> str:
    """The command line as one string (nginx rewrites its own into "nginx: master process …")."""
    return " ".join(host.cmdline(pid))
