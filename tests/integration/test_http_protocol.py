"""deployer's HTTP protocol under uvicorn on uvloop, on loopback: the bounds on a request's head.

The daemon's own wiring is checked in tests/security/test_hostile_webhook.py (the 431); here a
small app with a short head timeout shows what the timer closes and what it leaves alone.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from deployer.web import protocol
from tests.helpers import free_port

TIMEOUT = 0.5


def _echo(request: Request) -> PlainTextResponse:
    return PlainTextResponse("ok")


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    monkeypatch.setattr(protocol, "HEAD_TIMEOUT", TIMEOUT)
    port = free_port()
    config = uvicorn.Config(Starlette(routes=[Route("/", _echo)]), host="127.0.0.1", port=port, log_level="warning",
                            loop="uvloop", http=protocol.BoundedHttpToolsProtocol, timeout_keep_alive=5)
    running = uvicorn.Server(config)
    thread = threading.Thread(target=running.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not running.started and time.monotonic() < deadline:
        time.sleep(0.02)
    try:
        yield port
    finally:
        running.should_exit = True
        thread.join(10)


def _answer_after(port: int, sent: bytes) -> tuple[bytes, float]:
    """What the server says to a connection that sent ``sent`` and then waits; and after how long."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        started = time.monotonic()
        with contextlib.suppress(OSError):  # refused mid-send: what it answered is still there to read
            conn.sendall(sent)
        answer = b""
        with contextlib.suppress(OSError):
            while chunk := conn.recv(4096):
                answer += chunk
        return answer, time.monotonic() - started


def test_a_head_that_never_completes_is_answered_408_and_closed(server: int) -> None:
    answer, after = _answer_after(server, b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: a")
    assert answer.startswith(b"HTTP/1.1 408 Request Timeout\r\n"), answer
    assert b"within 0.5 s" in answer
    assert TIMEOUT * 0.8 < after < TIMEOUT + 3


def test_a_connection_that_sends_nothing_is_closed_without_an_answer(server: int) -> None:
    answer, after = _answer_after(server, b"")
    assert answer == b""
    assert after < TIMEOUT + 3


def test_a_kept_alive_connection_idle_between_requests_is_not_cut_by_the_head_timer(server: int) -> None:
    with httpx.Client(base_url=f"http://127.0.0.1:{server}", timeout=5) as client:
        assert client.get("/").text == "ok"
        time.sleep(TIMEOUT * 3)  # longer than the head timeout, shorter than the keep-alive timeout (5 s)
        second = client.get("/")
        assert second.text == "ok"
        assert second.extensions["network_stream"] is not None


def test_a_head_over_the_size_bound_is_answered_431(server: int) -> None:
    over = protocol.MAX_HEAD + 512 * 1024  # the bound holds to within one read (uvloop reads up to 256 KiB)
    answer, _ = _answer_after(server, b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * over)
    assert answer.startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n"), answer[:100]
