"""The Docker engine connection: a lazily connected client and the translation of its errors.

Nothing from ``docker.errors`` (or the HTTP library under it) leaves this package: an
unreachable engine is ``RuntimeUnavailable``, any other refusal ``ApplyError`` (a failed
build is ``BuildError``, in ``images``). Log output read back from the engine is decoded here.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import docker
import docker.errors
import requests.exceptions

from deployer.errors import ApplyError, DeployerError, RuntimeUnavailable

DEFAULT_BASE_URL = "unix:///var/run/docker.sock"
# A quick client for check(): /healthz must not hang for the long operations' timeout.
_CHECK_TIMEOUT = 5.0
_CREDENTIALS = re.compile(r"//[^/@]*@")


def safe_url(url: str) -> str:
    """``url`` without credentials, for messages."""
    return _CREDENTIALS.sub("//", url)


def explanation(exc: Exception) -> str:
    """The engine's own sentence for an API error, else the exception text."""
    text = getattr(exc, "explanation", None) or str(exc)
    return str(text).strip()


class Engine:
    """A lazily connected ``docker.APIClient`` (API version negotiated: Debian's engine speaks 1.41).

    Connecting is deferred to the first call so a daemon whose engine is down still
    starts; a failed connection is retried on the next call.
    """

    def __init__(self, base_url: str = "", *, timeout: float = 120.0) -> None:
        self.base_url = base_url or DEFAULT_BASE_URL
        self.timeout = timeout
        self._clients: dict[float, Any] = {}
        self._lock = threading.Lock()

    def api(self) -> Any:
        return self._client(self.timeout)

    def ping(self) -> None:
        """Raise ``RuntimeUnavailable`` unless the engine answers within a few seconds."""
        with self.errors("docker engine"):
            self._client(_CHECK_TIMEOUT).ping()

    def _client(self, timeout: float) -> Any:
        with self._lock:
            client = self._clients.get(timeout)
            if client is None:
                client = docker.APIClient(base_url=self.base_url, version="auto", timeout=timeout)
                self._clients[timeout] = client
            return client

    @contextmanager
    def errors(self, where: str) -> Iterator[None]:
        """Translate docker and connection errors raised inside into ``deployer.errors``."""
        try:
            yield
        except DeployerError:
            raise
        except docker.errors.APIError as exc:
            raise ApplyError(f"{where}: the docker engine refused: {explanation(exc)}") from exc
        except (docker.errors.DockerException, requests.exceptions.RequestException, ConnectionError) as exc:
            # The SDK talks HTTP through requests (connection errors, timeouts); DockerException
            # covers a failed API version negotiation when the socket is missing.
            raise RuntimeUnavailable(
                f"docker engine at {safe_url(self.base_url)} is unreachable ({type(exc).__name__}); "
                "docker and swarm services wait until it is back"
            ) from exc


def decode_tail(data: bytes, max_bytes: int) -> str:
    """The last ``max_bytes`` of ``data``, starting on a UTF-8 character boundary."""
    tail = data[-max_bytes:] if max_bytes > 0 else b""
    start = 0
    while start < min(3, len(tail)) and tail[start] & 0xC0 == 0x80:
        start += 1  # skip continuation bytes of a character cut by the window
    return tail[start:].decode("utf-8", errors="replace")


def log_lines(max_bytes: int) -> int:
    """How many lines to ask the engine for (it tails by lines, not bytes)."""
    return max(50, max_bytes // 16)
