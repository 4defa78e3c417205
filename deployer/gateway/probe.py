"""Asking nginx which config it serves: the generation marker over loopback HTTP.

Every rendered config answers ``GET /.deployer/generation`` with its own generation, on the
gateway's listener and on every sticky port (the edge), and on the inner nginx's control
socket. A reload is not proof (nginx keeps the old config when a bind fails and still exits
0); the marker answering the new generation is.
"""

from __future__ import annotations

import http.client
import os
import re
import socket
import time
from collections.abc import Callable

from deployer.gateway.routes import MARKER_PATH

_GENERATION = re.compile(r"[0-9a-f]{8,64}")
_POLL_SECONDS = 0.05
_SHORT_PATH = 100


class _UnixConnection(http.client.HTTPConnection):
    """HTTP over a unix socket (the inner nginx listens on those only)."""

    def __init__(self, path: str, *, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        folder, _, name = self._path.rpartition("/")
        # A socket address holds at most 107 bytes; a longer path is reached through its open folder.
        handle = os.open(folder or ".", os.O_RDONLY | os.O_DIRECTORY) if len(self._path) > _SHORT_PATH else None
        try:
            sock.connect(self._path if handle is None else f"/proc/self/fd/{handle}/{name}")
        except OSError:
            sock.close()
            raise
        finally:
            if handle is not None:
                os.close(handle)
        self.sock = sock


def generation_at(host: str, port: int, *, timeout: float = 1.0) -> str | None:
    """The generation answered on ``host:port``, or None (refused, not nginx, not ours)."""
    return _generation(http.client.HTTPConnection(host, port, timeout=timeout))


def generation_on_socket(path: str, *, timeout: float = 1.0) -> str | None:
    """The generation answered on the unix socket ``path``, or None."""
    return _generation(_UnixConnection(path, timeout=timeout))


def _generation(connection: http.client.HTTPConnection) -> str | None:
    try:
        connection.request("GET", MARKER_PATH, headers={"Connection": "close"})
        response = connection.getresponse()
        body = response.read(128).decode("ascii", errors="replace").strip()
    except (OSError, http.client.HTTPException):
        return None
    finally:
        connection.close()
    return body if response.status == 200 and _GENERATION.fullmatch(body) else None


def accepts(host: str, port: int, *, timeout: float = 0.5) -> bool:
    """Whether anything accepts a connection on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_until(ready: Callable[[], bool], *, timeout: float, given_up: Callable[[], bool]) -> bool:
    """Poll ``ready`` until it holds; False at ``timeout`` or as soon as ``given_up()``."""
    deadline = time.monotonic() + timeout
    while True:
        if ready():
            return True
        if given_up() or time.monotonic() >= deadline:
            return ready()  # one last look: the answer may have changed meanwhile
        time.sleep(_POLL_SECONDS)
