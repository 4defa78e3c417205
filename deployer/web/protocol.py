"""The HTTP protocol deployer is served with: uvicorn's httptools one, with bounds on a request's head.

httptools parses in C (no GIL waits per request under a burst of passes; bench/webhook_burst.py),
but unlike h11 (16 KiB) it sets no limit on the request line and headers: uvicorn keeps whatever a
client sends before the blank line, so one connection could make the daemon hold hundreds of
megabytes. Here a head larger than ``MAX_HEAD`` is answered 431 and the connection closed.
Neither parser bounds the time a head takes: a connection that sends nothing, or a head a byte at
a time, was held for ever (enough of them and the daemon runs out of file descriptors). Here a
head not complete ``HEAD_TIMEOUT`` seconds after the connection opened (or, on a kept-alive
connection, after the request began) is answered 408 and the connection closed (closed without
an answer when nothing at all was sent); waiting between requests is uvicorn's keep-alive
timeout (5 s). Bodies are not concerned: each endpoint caps what it reads (the webhook at 1 MiB,
answered 413).
"""

from __future__ import annotations

import asyncio
import logging

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

MAX_HEAD = 64 * 1024  # bytes of request line and headers (nginx's default allows 4 x 8 KiB)
HEAD_TIMEOUT = 20.0  # seconds for a request's head to arrive (Apache's mod_reqtimeout: 20-40 s)

log = logging.getLogger(__name__)


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """``HttpToolsProtocol`` that refuses a request whose head exceeds ``MAX_HEAD`` bytes or ``HEAD_TIMEOUT``.

    Size is counted per chunk read: bytes received since the chunk after the one in which the
    request began, while its headers are incomplete: the bound holds to within one read (uvloop
    reads at most 256 KiB), and a request is never refused for bytes that were not its head.
    """

    _received = 0  # bytes read on this connection
    _head_from: int | None = None  # ``_received`` when the current request began; None: its head is complete
    _head_timer: asyncio.TimerHandle | None = None  # armed while a head is awaited

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._head_timer = self.loop.call_later(HEAD_TIMEOUT, self._head_timed_out)

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self._received += len(data)
        super().data_received(data)
        if self._head_from is not None and self._received - self._head_from > MAX_HEAD:
            self._refuse(431, "Request Header Fields Too Large",
                         f"request line and headers larger than {MAX_HEAD} bytes")

    def on_message_begin(self) -> None:
        self._head_from = self._received
        if self._head_timer is None:  # a kept-alive connection's next request (the first one's runs since connect)
            self._head_timer = self.loop.call_later(HEAD_TIMEOUT, self._head_timed_out)
        super().on_message_begin()

    def on_headers_complete(self) -> None:
        self._head_from = None
        self._stop_head_timer()
        super().on_headers_complete()

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self._received == 0:  # nothing was ever sent (an idle or preconnected socket): just closed
            self.transport.close()
            return
        self._refuse(408, "Request Timeout", f"no complete request line and headers within {HEAD_TIMEOUT:g} s")

    def _refuse(self, status: int, phrase: str, reason: str) -> None:
        if self.transport.is_closing():
            return
        log.warning("refused a request from %s: %s", _peer(self.client), reason)
        body = reason.encode()
        self.transport.write(b"HTTP/1.1 %d %s\r\ncontent-type: text/plain; charset=utf-8\r\nconnection: close\r\n"
                             b"content-length: %d\r\n\r\n%s" % (status, phrase.encode(), len(body), body))
        self.transport.close()


def _peer(client: tuple[str, int] | None) -> str:
    return f"{client[0]}:{client[1]}" if client else "an unknown peer"
