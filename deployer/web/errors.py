"""HTTP answers decided by an exception's type, the way Starlette's exception handlers work.

A route raises ``NotFound`` (404, the operator's ``UnknownService`` among them) or one of
the request errors below; ``handlers()`` turns each into ``{"error": message}`` with its
status. ``refused_as`` says which status a refused ``DeployerError`` gets at one route.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from deployer.errors import DeployerError, NotFound

Handler = Callable[[Request, Exception], Awaitable[Response]]


class RequestError(Exception):
    """A request the web layer answers with an error; ``str()`` is the message sent back."""


class BadRequest(RequestError):
    """The request itself is malformed (a parameter that is not a number …): 400."""


class Unauthorized(RequestError):
    """The bearer token is missing or wrong: 401."""


class Forbidden(RequestError):
    """The endpoint is off (no API token is configured): 403."""


class Conflict(RequestError):
    """Deployer refused to act as asked (nothing running to pin, no demo inputs …): 409."""


class Unavailable(RequestError):
    """What the answer needs cannot be reached now (a runtime is down): 503."""


STATUS: dict[type[Exception], int] = {
    BadRequest: 400,
    Unauthorized: 401,
    Forbidden: 403,
    NotFound: 404,
    Conflict: 409,
    Unavailable: 503,
}


def error_response(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def handlers() -> dict[type[Exception], Handler]:
    """One handler per type; Starlette picks it by the raised exception's class (subclasses included)."""
    return {kind: _answering(status) for kind, status in STATUS.items()}


def _answering(status: int) -> Handler:
    async def answer(request: Request, exc: Exception) -> Response:
        return error_response(status, str(exc))

    return answer


@contextmanager
def refused_as(kind: type[RequestError]) -> Iterator[None]:
    """A ``DeployerError`` raised inside becomes ``kind``; ``NotFound`` stays itself (404)."""
    try:
        yield
    except NotFound:
        raise
    except DeployerError as exc:
        raise kind(str(exc)) from exc
