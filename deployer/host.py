"""This host's processes and files, as the embedded supervisord and nginx need them, written once.

Pid files checked against /proc (a zombie counts as gone: nobody may ever reap a daemon's
master), command lines, who holds a file open, an exclusive lock shared by threads and
processes, and files written beside their target then renamed over it (never half-written).
"""

from __future__ import annotations

import fcntl
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def write_atomic(path: Path, text: str, *, mode: int) -> None:
    """Write beside ``path`` as ``.NAME.*.tmp`` (no ``*.conf`` glob matches it), then rename over it."""
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def alive(pid: int) -> bool:
    """True while ``pid`` runs; a zombie counts as gone (its parent may never reap it)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return False
    return fields[0] != "Z"


def parent_pid(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode("utf-8", errors="replace") for part in raw.split(b"\0") if part]


def holds_file(pid: int, path: Path) -> bool:
    """Whether ``pid`` has ``path`` open (an nginx worker holds its master's error log)."""
    target = str(path)
    try:
        descriptors = list(Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return False
    for descriptor in descriptors:
        try:
            if os.readlink(descriptor) == target:
                return True
        except OSError:
            continue
    return False


def children(pid: int) -> list[int]:
    return [int(entry.name) for entry in Path("/proc").iterdir()
            if entry.name.isdigit() and parent_pid(int(entry.name)) == pid]


def processes_named(prefix: str) -> Iterator[int]:
    """Pids whose command line (as one string) starts with ``prefix``."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and " ".join(cmdline(int(entry.name))).startswith(prefix):
            yield int(entry.name)


@contextmanager
def flock(path: Path) -> Iterator[None]:
    """An exclusive lock on ``path``; each call opens its own handle, so threads exclude each other too."""
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


_TCP_LISTEN = "0A"  # the kernel's TCP_LISTEN state in /proc/net/tcp's "st" column


def listening_tcp_sockets() -> dict[int, set[int]] | None:
    """Each local TCP port in LISTEN state in this network namespace → the inodes of its listening sockets;
    None when the kernel's tables cannot be read.

    Reads /proc/net/tcp and tcp6 only: a cheap answer to "does anything listen on port N?" (and is it
    this process's socket?), where finding *who* listens means walking every process's file descriptors.
    """
    sockets: dict[int, set[int]] = {}
    for table in (Path("/proc/net/tcp"), Path("/proc/net/tcp6")):
        try:
            rows = table.read_text(encoding="ascii").splitlines()[1:]
        except FileNotFoundError:  # tcp6 is absent where IPv6 is off
            continue
        except OSError:
            return None
        for row in rows:
            fields = row.split()  # sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
            if len(fields) > 9 and fields[3] == _TCP_LISTEN:
                sockets.setdefault(int(fields[1].rpartition(":")[2], 16), set()).add(int(fields[9]))
    return sockets


def socket_inodes(pid: int) -> set[int]:
    """Inodes of the sockets process ``pid`` has open (empty when it is gone or not ours to read)."""
    inodes: set[int] = set()
    fd_dir = f"/proc/{pid}/fd"
    try:
        fds = os.listdir(fd_dir)
    except OSError:
        return inodes
    for fd in fds:
        try:
            target = os.readlink(f"{fd_dir}/{fd}")
        except OSError:  # closed meanwhile
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    return inodes
