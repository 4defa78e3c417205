"""The floor for webhook acknowledgement: the same server stack as deployer (uvicorn + Starlette),
a handler that reads the body, checks the HMAC signature, parses the JSON and answers 202 — and
nothing else (no store, no dedupe, no queue). Used as the baseline by bench/webhook_burst.py.
Usage: ``python bench/_minimal_receiver.py PORT SECRET``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import sys
from pathlib import Path

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from deployer.web.protocol import BoundedHttpToolsProtocol  # after the path is set


def app(secret: bytes) -> Starlette:
    async def hook(request: Request) -> JSONResponse:
        body = await request.body()
        expected = hmac.new(secret, body, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, request.headers.get("x-gitea-signature", "")):
            return JSONResponse({"result": "rejected"}, status_code=401)
        payload = json.loads(body)
        return JSONResponse({"result": "accepted", "after": payload["after"][:7]}, status_code=202)

    return Starlette(routes=[Route("/hooks/gitea", hook, methods=["POST"]),
                             Route("/healthz", lambda request: JSONResponse({"ok": True}))])


if __name__ == "__main__":
    uvicorn.run(app(sys.argv[2].encode()), host="127.0.0.1", port=int(sys.argv[1]), log_level="warning",
                loop="uvloop", http=BoundedHttpToolsProtocol,  # as deployer serve
                access_log=False)
