"""The API bearer token: what guards the write endpoints and the service logs.

With no token configured those endpoints are off (403); a missing or wrong one is 401.
Tokens are compared in constant time.
"""

from __future__ import annotations

import hmac

from starlette.requests import Request

from deployer.web.errors import Forbidden, Unauthorized


def require_token(request: Request, token: str | None) -> None:
    """Return when the request carries ``Authorization: Bearer <token>``; raise otherwise."""
    if not token:
        raise Forbidden("the API's write endpoints are off: no API token is configured (DEPLOYER_API_TOKEN_FILE)")
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
        raise Unauthorized("missing or wrong bearer token")
