"""Security headers on every answer: pages, JSON, plain text, errors, the webhook's replies.

An ASGI middleware adds what a route did not set itself: ``nosniff`` (service-controlled
text such as a log tail is never sniffed into HTML), a Content-Security-Policy that
allows nothing (pages and demo files set their own, stricter or looser, and keep it),
no framing and no referrer. ``SECURITY_HEADERS`` is also used by the last-resort error
handler, whose answer is built outside the middleware.
"""

from __future__ import annotations

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}


class SecurityHeaders:
    """Adds each of ``SECURITY_HEADERS`` a response lacks; never replaces one a route chose."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS.items():
                    headers.setdefault(name, value)
            await send(message)

        await self.app(scope, receive, send_with_headers)
