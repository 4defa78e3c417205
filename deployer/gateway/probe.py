"""Asking nginx which config it serves: the generation marker over loopback HTTP.

Every rendered config answers ``GET /.deployer/generation`` with its own generation, on the
gateway's listener and on every sticky port. A reload is not proof (nginx keeps the old
config when a bind fails and still exits 0); the marker answering the new generation is.
"""

from __future__ import annotations

import http.client
import re
import socket
import time
from collections.abc import Callable

from deployer.gateway.routes import MARKER_PATH

_GENERATION = re.compile(r"[0-9a-f]{8,64}")
_POLL_SECONDS = 0.05


def generation_at(host: str, port: int, *, timeout: float = 1.0) -> str | None:
    """The generation answered on ``host:port``, or None (refused, not nginx, not ours)."""
    connection = http.client.HTTPConnection(host, port, timeout=timeout)
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
