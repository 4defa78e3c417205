"""The HTTP protocol deployer is served with: uvicorn's httptools one, with a bound on a request's head.

httptools parses in C (no GIL waits per request under a burst of passes; bench/webhook_burst.py),
but unlike h11 (16 KiB) it sets no limit on the request line and headers: uvicorn keeps whatever a
client sends before the blank line, so one connection could make the daemon hold hundreds of
megabytes. Here a head larger than ``MAX_HEAD`` is answered 431 and the connection closed.
Bodies are not concerned: each endpoint caps what it reads (the webhook at 1 MiB, answered 413).
"""

from __future__ import annotations

import logging

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

MAX_HEAD = 64 * 1024  # bytes of request line and headers (nginx's default allows 4 x 8 KiB)
_ANSWER = (b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
           b"content-type: text/plain; charset=utf-8\r\nconnection: close\r\n")
_REASON = b"request line and headers larger than %d bytes" % MAX_HEAD

log = logging.getLogger(__name__)


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """``HttpToolsProtocol`` that refuses a request whose head exceeds ``MAX_HEAD`` bytes.

    Counted per chunk read: bytes received since the chunk after the one in which the request
    began, while its headers are incomplete (so the bound holds to within one read).
    """

    _received = 0  # bytes read on this connection
    _head_from: int | None = None  # ``_received`` when the current request began; None: its head is complete

    def data_received(self, data: bytes) -> None:
        self._received += len(data)
        super().data_received(data)
        if self._head_from is not None and self._received - self._head_from > MAX_HEAD \
                and not self.transport.is_closing():
            log.warning("refused a request from %s: %s", _peer(self.client), _REASON.decode())
            self.transport.write(_ANSWER + b"content-length: %d\r\n\r\n" % len(_REASON) + _REASON)
            self.transport.close()

    def on_message_begin(self) -> None:
        self._head_from = self._received
        super().on_message_begin()

    def on_headers_complete(self) -> None:
        self._head_from = None
        super().on_headers_complete()


def _peer(client: tuple[str, int] | None) -> str:
    return f"{client[0]}:{client[1]}" if client else "an unknown peer"
