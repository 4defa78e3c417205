"""``GET /api/openapi.json``: the OpenAPI description of the JSON API, from ``openapi.yaml`` beside this module.

Hand-written (the routes are plain Starlette functions) and read once; a test compares it
with the routes table, so a route without an entry, or an entry without a route, fails.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

SPEC = Path(__file__).with_name("openapi.yaml")


@cache
def description() -> dict[str, Any]:
    """The document as plain JSON values (ruamel's safe loader gives plain dicts and lists)."""
    loaded: dict[str, Any] = YAML(typ="safe").load(SPEC.read_text(encoding="utf-8"))
    return loaded


async def openapi(request: Request) -> Response:
    return JSONResponse(description())
