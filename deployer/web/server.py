"""The Starlette application: routes only; everything it needs is handed in.

Pages and the JSON API read the store; ``/healthz`` asks the components the
composition root passes as checks. Nothing here builds a dependency.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from deployer.store import Store
from deployer.web.api import attempt_json, revision_json, service_json
from deployer.web.status import page_environment
from deployer.web.webhook import WebhookReceiver


@dataclass
class WebDeps:
    store: Store
    webhook: WebhookReceiver
    checks: Mapping[str, Callable[[], None]] = field(default_factory=dict)
    source_errors: Callable[[], Mapping[str, str]] = dict
    refresh_seconds: int = 10


def build_app(deps: WebDeps, lifespan: Callable[[Starlette], AbstractAsyncContextManager[None]] | None = None
              ) -> Starlette:
    pages = page_environment()

    async def index(request: Request) -> Response:
        views = await run_in_threadpool(deps.store.service_views)
        failing = [view.name for view in views if view.state == "failed" or
                   (view.last_attempt is not None and view.last_attempt.outcome in ("failed", "rolled_back"))]
        html = pages.get_template("index.html").render(
            services=views, failing=failing, refresh=deps.refresh_seconds,
            source_errors=sorted(deps.source_errors().items()),
        )
        return HTMLResponse(html)

    async def services(request: Request) -> Response:
        views = await run_in_threadpool(deps.store.service_views)
        return JSONResponse([service_json(view) for view in views])

    async def service(request: Request) -> Response:
        name = request.path_params["name"]
        view = await run_in_threadpool(deps.store.service_view, name)
        if view is None:
            return JSONResponse({"error": f"no service named {name!r}"}, status_code=404)
        revisions = await run_in_threadpool(deps.store.revisions, name, 50)
        attempts = await run_in_threadpool(deps.store.attempts, name, 20)
        data = service_json(view)
        data["revisions"] = [revision_json(revision) for revision in revisions]
        data["attempts"] = [attempt_json(attempt, steps=True) for attempt in attempts]
        return JSONResponse(data)

    async def healthz(request: Request) -> Response:
        report = await run_in_threadpool(_run_checks, deps.checks)
        ok = all(value == "ok" for value in report.values())
        return JSONResponse({"status": "ok" if ok else "failing", "checks": report},
                            status_code=200 if ok else 503)

    routes = [
        Route("/hooks/gitea", deps.webhook.handle, methods=["POST"]),
        Route("/", index),
        Route("/api/services", services),
        Route("/api/services/{name}", service),
        Route("/healthz", healthz),
    ]
    return Starlette(routes=routes, lifespan=lifespan)


def _run_checks(checks: Mapping[str, Callable[[], None]]) -> dict[str, str]:
    report: dict[str, str] = {}
    for name, check in checks.items():
        try:
            check()
            report[name] = "ok"
        except Exception as exc:  # a health endpoint reports, it does not crash
            report[name] = f"{type(exc).__name__}: {exc}"
    return report

