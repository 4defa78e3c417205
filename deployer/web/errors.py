"""HTTP answers decided by an exception's type, the way Starlette's exception handlers work.

A route raises ``NotFound`` (404, the operator's ``UnknownService`` among them) or one of
the request errors below; ``handlers()`` turns each into ``{"error": message}`` with its
status. ``refused_as`` says which status a refused ``DeployerError`` gets at one route.
A ``StoreError`` (the database is down) is a 503 that says so — a page for a page, JSON
for the API — and anything else unexpected a 500 without a traceback.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from deployer.errors import DeployerError, NotFound
from deployer.store import StoreError
from deployer.web.headers import SECURITY_HEADERS

log = logging.getLogger(__name__)

Handler = Callable[[Request, Exception], Awaitable[Response]]
STORE_DOWN = ("deployer's database cannot be reached now; services keep running and webhooks are kept "
              "until it is back (GET /healthz says why); retry shortly")
RETRY_AFTER = "10"
_JSON_PREFIXES = ("/api/", "/hooks/", "/healthz", "/metrics")


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


def handlers(store_down_page: Callable[[Request], Response]) -> dict[type[Exception] | int, Handler]:
    """One handler per type; Starlette picks it by the raised exception's class (subclasses included).

    ``store_down_page`` renders the page shown instead of a page while the database is down.
    """
    found: dict[type[Exception] | int, Handler] = {kind: _answering(status) for kind, status in STATUS.items()}
    found[StoreError] = _store_down(store_down_page)
    found[Exception] = _internal_error
    return found


def _store_down(page: Callable[[Request], Response]) -> Handler:
    async def answer(request: Request, exc: Exception) -> Response:
        log.warning("%s %s: %s", request.method, request.url.path, exc)
        if request.url.path.startswith(_JSON_PREFIXES):
            return JSONResponse({"error": STORE_DOWN}, status_code=503, headers={"Retry-After": RETRY_AFTER})
        response = page(request)
        response.headers["Retry-After"] = RETRY_AFTER
        return response

    return answer


async def _internal_error(request: Request, exc: Exception) -> Response:
    """The last resort (Starlette's outermost middleware calls it): logged whole, answered without details."""
    log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
    return JSONResponse({"error": f"internal error ({type(exc).__name__}); the daemon's log has the details"},
                        status_code=500, headers=SECURITY_HEADERS)


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
