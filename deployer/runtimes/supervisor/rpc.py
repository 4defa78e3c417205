"""XML-RPC to supervisord over its unix socket, with the timeout supervisor's transport lacks.

Supervisor's ``UnixStreamHTTPConnection`` opens a blocking socket with no timeout, so a
hung (or SIGSTOPped) supervisord would block a caller forever. Faults, HTTP errors and
socket errors become ``deployer.errors`` here and go no further.
"""

from __future__ import annotations

import http.client
import socket
import xmlrpc.client
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

from supervisor.xmlrpc import Faults, SupervisorTransport, UnixStreamHTTPConnection

from deployer.errors import ApplyError, RuntimeUnavailable
from deployer.runtimes.supervisor.program import redact


class SupervisorProtocolError(ApplyError):
    """supervisord answered with an HTTP error instead of an XML-RPC result or fault."""


class _TimedUnixConnection(UnixStreamHTTPConnection):  # type: ignore[misc]
    """supervisor's unix-socket connection, but honouring ``timeout`` for connect, send and receive."""

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.socketfile)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


class _TimedTransport(SupervisorTransport):  # type: ignore[misc]
    def __init__(self, socket_path: Path, timeout: float) -> None:
        super().__init__(None, None, f"unix://{socket_path}")

        def connection() -> _TimedUnixConnection:
            # "localhost" as the host, as supervisor does: the socket path goes in socketfile.
            conn = _TimedUnixConnection("localhost", timeout=timeout)
            conn.socketfile = str(socket_path)
            return conn

        # The one seam supervisor's transport offers: it builds connections through this attribute.
        self._get_connection = connection


class SupervisorRpc:
    """One XML-RPC call per fresh connection (safe from any thread), bounded by ``timeout``."""

    def __init__(self, socket_path: Path, *, include_dir: Path, timeout: float) -> None:
        self.socket_path = socket_path
        self.include_dir = include_dir
        self.timeout = timeout

    def call(self, method: str, *args: Any, ok: Collection[int] = (), timeout: float | None = None) -> Any:
        """``supervisor.<method>(*args)`` (or ``namespace.method``, dotted); faults in ``ok`` return
        None, others raise a deployer error."""
        limit = self.timeout if timeout is None else timeout
        transport = _TimedTransport(self.socket_path, limit)
        proxy = xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport)
        function: Callable[..., Any] = getattr(proxy, method if "." in method else f"supervisor.{method}")
        try:
            return function(*args)
        except xmlrpc.client.Fault as fault:
            if fault.faultCode in ok:
                return None
            raise self._fault_error(method, fault) from None
        except xmlrpc.client.ProtocolError as exc:
            raise SupervisorProtocolError(f"supervisord {method}: HTTP {exc.errcode} {exc.errmsg}") from None
        except TimeoutError:
            raise RuntimeUnavailable(
                f"supervisord at {self.socket_path} did not answer {method} within {limit:g}s; is it hung?"
            ) from None
        except (OSError, http.client.HTTPException) as exc:
            raise RuntimeUnavailable(f"supervisord at {self.socket_path} is not answering: {exc}") from None
        finally:
            transport.close()

    def _fault_error(self, method: str, fault: xmlrpc.client.Fault) -> ApplyError | RuntimeUnavailable:
        text = str(fault.faultString)
        if fault.faultCode == Faults.SHUTDOWN_STATE:
            return RuntimeUnavailable(f"supervisord at {self.socket_path} is shutting down")
        if fault.faultCode == Faults.CANT_REREAD:  # a parser message: it may quote an environment value
            return ApplyError(f"supervisord cannot re-read its program files in {self.include_dir}: {redact(text)}")
        # The other faults name a program or its command (from git, no secret): shown whole, as
        # "NO_FILE: can't find command 'uvicorn'" (service output is masked by the store anyway).
        return ApplyError(f"supervisord {method}: {text}")
