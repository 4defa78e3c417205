"""The Starlette application: routes only; everything it needs is handed in.

Pages and the JSON read API use the store alone; ``GET /api/plan`` asks the
reconciler for a dry run. The showcase pages (a service's demo answers, a group's
side-by-side table, a service across revisions) and the two demo file routes read
through ``deployer.web.showcase``; files are served typed by their bytes, ``nosniff``.
POST endpoints (operator actions) need the API bearer token and are off when none
is configured. ``/healthz`` runs the given checks. An error's type picks its status:
``NotFound`` is 404 wherever it is raised (the app's exception handler).
"""

from __future__ import annotations

import hmac
import json
from collections import Counter
from collections.abc import Callable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from deployer.errors import DeployerError, NotFound, UnknownService
from deployer.metrics import Metrics
from deployer.model.diff import spec_diff
from deployer.model.status import RevisionView, Trigger
from deployer.operator import Done, Operator
from deployer.reconcile import Reconciler
from deployer.scheduler import WorkQueue
from deployer.store import Store
from deployer.web.presenters import (
    Tone,
    commit_links,
    commit_statuses,
    condition,
    delivery_tone,
    outcome_tone,
    overview_rows,
    page_environment,
    status_tone,
)
from deployer.web.serializers import (
    action_json,
    attempt_json,
    change_json,
    demo_json,
    override_json,
    revision_json,
    service_json,
)
from deployer.web.showcase import Showcase
from deployer.web.webhook import WebhookReceiver


@dataclass
class WebDeps:
    store: Store
    webhook: WebhookReceiver
    reconciler: Reconciler
    queue: WorkQueue
    metrics: Metrics
    api_token: str | None = None
    checks: Mapping[str, Callable[[], None]] = field(default_factory=dict)
    refresh_seconds: int = 10
    gitea_url: str = ""  # commits of sources that are Gitea repositories link to it


def build_app(deps: WebDeps, lifespan: Callable[[Starlette], AbstractAsyncContextManager[None]] | None = None
              ) -> Starlette:
    routes = _Routes(deps)
    return Starlette(routes=[
        Route("/hooks/gitea", deps.webhook.handle, methods=["POST"]),
        Route("/", routes.index),
        Route("/services/{name}", routes.service_page),
        Route("/services/{name}/showcase", routes.showcase_page),
        Route("/services/{name}/demo-input/{revision}/{demo}", routes.demo_input),
        Route("/services/{name}/demo-output/{result}", routes.demo_output),
        Route("/groups/{group}", routes.group_page),
        Route("/deliveries", routes.deliveries),
        Route("/api/services", routes.services),
        Route("/api/services/{name}", routes.service),
        Route("/api/services/{name}/diff", routes.diff),
        Route("/api/services/{name}/demos", routes.demos),
        Route("/api/services/{name}/demo", routes.demo, methods=["POST"]),
        Route("/api/groups", routes.groups),
        Route("/api/services/{name}/logs", routes.logs),
        Route("/api/plan", routes.plan),
        Route("/api/reconcile", routes.reconcile, methods=["POST"]),
        Route("/api/services/{name}/{action}", routes.act, methods=["POST"]),
        Route("/healthz", routes.healthz),
        Route("/metrics", routes.metrics),
    ], lifespan=lifespan, exception_handlers={NotFound: _not_found})


class _Routes:
    def __init__(self, deps: WebDeps) -> None:
        self.deps = deps
        self.store = deps.store
        self.pages = page_environment()
        self.operator = Operator(deps.store)
        self.showcase = Showcase(deps.store, deps.reconciler.rooms.demos.state_dir,
                                 deps.reconciler.rooms.demos.limits)

    async def index(self, request: Request) -> Response:
        context = await run_in_threadpool(self._overview)
        return self._page("index.html", request, context)

    def _overview(self) -> dict[str, Any]:
        rows = overview_rows(self.store.views.services(), self.store.overrides.active())
        return {"rows": rows, "sources": self.store.sources.all(),
                "failing": [row for row in rows if row.condition.tone is Tone.BAD],
                "drifting": [row for row in rows if row.condition.tone is Tone.WARN],
                "source_errors": sorted(self.deps.reconciler.sources.errors().items()),
                "groups": self.store.views.groups()}

    async def service_page(self, request: Request) -> Response:
        name = request.path_params["name"]
        detail = await run_in_threadpool(self._service_context, name)
        if detail is None:
            return self._page("missing.html", request, {"name": name, "sources": []}, status=404, refresh=False)
        return self._page("service.html", request, detail)

    def _service_context(self, name: str) -> dict[str, Any] | None:
        detail = self._detail(name)
        if detail is None:
            return None
        revisions = [revision for revision, _ in detail["timeline"]]
        shown, demos = self.showcase.latest(detail["service"])
        return {**detail, "condition": condition(detail["service"]), "snapshot": self.deps.reconciler.snapshot(name),
                "statuses": commit_statuses(detail["attempts"], revisions), "sources": self.store.sources.all(),
                "demo_revision": shown, "demos": demos, "group": self._group_of(name)}

    def _group_of(self, name: str) -> tuple[str, list[str]] | None:
        return next(((group, members) for group, members in self.store.views.groups().items() if name in members), None)

    async def showcase_page(self, request: Request) -> Response:
        name = request.path_params["name"]
        context = await run_in_threadpool(self._showcase_context, name)
        if context is None:
            return self._page("missing.html", request, {"name": name, "sources": []}, status=404, refresh=False)
        return self._page("showcase.html", request, context)

    def _showcase_context(self, name: str) -> dict[str, Any] | None:
        view = self.store.views.service(name)
        if view is None:
            return None
        shown, demos = self.showcase.latest(view)
        return {"service": view, "condition": condition(view), "demo_revision": shown, "demos": demos,
                "table": self.showcase.revision_table(view), "group": self._group_of(name),
                "sources": self.store.sources.all()}

    async def group_page(self, request: Request) -> Response:
        group = request.path_params["group"]
        table = await run_in_threadpool(self.showcase.group_table, group)
        sources = await run_in_threadpool(self.store.sources.all)
        if table is None:
            return self._page("missing.html", request, {"name": group, "kind": "group", "sources": sources},
                              status=404, refresh=False)
        return self._page("group.html", request, {"group": group, "table": table, "sources": sources,
                                                  "conditions": {column.title: condition(column.service)
                                                                 for column in table.columns if column.service}})

    async def demo_input(self, request: Request) -> Response:
        """A demo input file as the revision's checkout holds it (what was sent to ``POST /predict``)."""
        name, demo = request.path_params["name"], request.path_params["demo"]
        revision = _int(request.path_params["revision"])
        found = await run_in_threadpool(self.showcase.demo_input, name, revision, demo) if revision else None
        if found is None:
            return _error(404, f"{name}: no demo input {demo!r} at revision {request.path_params['revision']!r} "
                               "(or it is larger than [demo] max_input_bytes)")
        return _file(*found)

    async def demo_output(self, request: Request) -> Response:
        """A binary demo answer: only files under ``<state_dir>/demo/``, typed by their magic bytes."""
        name, result = request.path_params["name"], _int(request.path_params["result"])
        found = await run_in_threadpool(self.showcase.demo_output, name, result) if result else None
        if found is None:
            return _error(404, f"{name}: no stored demo answer {request.path_params['result']!r}")
        return _file(*found)

    def _detail(self, name: str) -> dict[str, Any] | None:
        view = self.store.views.service(name)
        if view is None:
            return None
        revisions = self.store.history.revisions(name, 50)
        timeline = [(revision, spec_diff(older.spec if older else None, revision.spec))
                    for revision, older in zip(revisions, [*revisions[1:], None], strict=True)]
        return {"service": view, "timeline": timeline, "attempts": self.store.history.attempts(name, 20),
                "overrides": self.store.overrides.history(name, 20)}

    async def deliveries(self, request: Request) -> Response:
        return self._page("deliveries.html", request, await run_in_threadpool(self._deliveries))

    def _deliveries(self) -> dict[str, Any]:
        """The webhook audit: what each delivery became and why; the store keeps no headers or secrets."""
        deliveries = self.store.deliveries.recent(100)
        return {"deliveries": deliveries, "counts": Counter(delivery.result.value for delivery in deliveries),
                "sources": self.store.sources.all()}

    def _page(self, template: str, request: Request, context: dict[str, Any], *, status: int = 200,
              refresh: bool = True) -> HTMLResponse:
        """Render with what every page shows: commit links and the auto-refresh (``?live=0`` pauses it)."""
        live = refresh and request.query_params.get("live") != "0"
        html = self.pages.get_template(template).render(
            **context, path=request.url.path, live=live, refresh=self.deps.refresh_seconds if live else 0,
            links=commit_links(self.deps.gitea_url, context["sources"]), now=datetime.now(UTC),
            tone={"outcome": outcome_tone, "status": status_tone, "delivery": delivery_tone},
        )
        return HTMLResponse(html, status_code=status, headers={"Content-Security-Policy": PAGE_POLICY})

    async def services(self, request: Request) -> Response:
        views = await run_in_threadpool(self.store.views.services)
        return JSONResponse([service_json(view) for view in views])

    async def service(self, request: Request) -> Response:
        name = request.path_params["name"]
        detail = await run_in_threadpool(self._detail, name)
        if detail is None:
            raise UnknownService(name)
        data = service_json(detail["service"])
        data["revisions"] = [revision_json(revision) for revision, _ in detail["timeline"]]
        data["attempts"] = [attempt_json(attempt, steps=True) for attempt in detail["attempts"]]
        data["overrides"] = [override_json(override) for override in detail["overrides"]]
        return JSONResponse(data)

    async def diff(self, request: Request) -> Response:
        name = request.path_params["name"]
        newer, older = await run_in_threadpool(self._pair, name, request.query_params)
        changes = spec_diff(older.spec if older else None, newer.spec)
        return JSONResponse({"service": name, "from": older.id if older else None, "to": newer.id,
                             "changes": [change_json(change) for change in changes]})

    def _pair(self, name: str, query: Mapping[str, str]) -> tuple[RevisionView, RevisionView | None]:
        """``?a=&b=`` revisions; b defaults to the newest, a to the one before b."""
        revisions = self.store.history.revisions(name, 1000)
        by_id = {revision.id: revision for revision in revisions}
        try:
            newer = by_id[int(query["b"])] if "b" in query else revisions[0]
            older = by_id[int(query["a"])] if "a" in query else next(
                (revision for revision in revisions if revision.id < newer.id), None)
        except (KeyError, ValueError, IndexError):
            raise NotFound(f"{name}: no such revision (see `deployer history {name}`)") from None
        return newer, older

    async def plan(self, request: Request) -> Response:
        fetch = request.query_params.get("fetch") in ("1", "true", "yes")
        lines = await run_in_threadpool(lambda: self.deps.reconciler.preview(fetch=fetch))
        wanted = request.query_params.get("service")
        actions = [action_json(source, action) for source, action in lines
                   if wanted is None or action.service == wanted]
        return JSONResponse({"converged": not any(item["kind"] != "noop" for item in actions), "actions": actions})

    async def reconcile(self, request: Request) -> Response:
        denied = _denied(request, self.deps.api_token)
        if denied is not None:
            return denied
        body = await _json_body(request)
        service = body.get("service")
        sources = self.deps.reconciler.sources.names()
        if service:
            view = await run_in_threadpool(self.store.views.service, str(service))
            if view is None:
                raise UnknownService(str(service))
            sources = [view.source]
        for source in sources:
            self.deps.queue.request(source, Trigger.CLI, fetch=True)
        return JSONResponse({"requested": sources}, status_code=202)

    async def act(self, request: Request) -> Response:
        denied = _denied(request, self.deps.api_token)
        if denied is not None:
            return denied
        name, action = request.path_params["name"], request.path_params["action"]
        body = await _json_body(request)
        try:
            done = await run_in_threadpool(self._act, name, action, body)
        except NotFound:
            raise  # 404, answered by the app's handler
        except DeployerError as exc:
            return _error(409, str(exc))
        if done is None:
            return _error(404, f"unknown action {action!r} (rollback, pin, unpin, suspend, resume)")
        trigger = Trigger.ROLLBACK if action == "rollback" else Trigger.CLI
        self.deps.queue.request(done.source, trigger, fetch=False)
        return JSONResponse({"service": done.service, "message": done.message,
                             "override": override_json(done.override) if done.override else None}, status_code=202)

    def _act(self, name: str, action: str, body: dict[str, Any]) -> Done | None:
        who, why = str(body.get("who") or "api")[:200], str(body.get("why") or "")[:2000]
        revision = int(body["revision"]) if body.get("revision") is not None else None
        match action:
            case "rollback":
                return self.operator.rollback(name, revision, who=who, why=why)
            case "pin":
                return self.operator.pin(name, revision, who=who, why=why)
            case "unpin":
                return self.operator.unpin(name, who=who)
            case "suspend":
                return self.operator.suspend(name, who=who, why=why)
            case "resume":
                return self.operator.resume(name, who=who)
        return None

    async def metrics(self, request: Request) -> Response:
        body = self.deps.metrics.exposition()
        return Response(body, media_type="text/plain; version=0.0.4; charset=utf-8")

    async def demos(self, request: Request) -> Response:
        name = request.path_params["name"]
        if await run_in_threadpool(self.store.views.service, name) is None:
            raise UnknownService(name)
        runs = await run_in_threadpool(self.store.demos.runs, name)
        ordered = sorted(runs.items(), key=lambda item: item[0] or 0, reverse=True)
        return JSONResponse({"service": name, "runs": [
            {"revision": revision, "results": [demo_json(view) for view in views]} for revision, views in ordered]})

    async def demo(self, request: Request) -> Response:
        denied = _denied(request, self.deps.api_token)
        if denied is not None:
            return denied
        name = request.path_params["name"]
        try:
            revision, results = await run_in_threadpool(self.deps.reconciler.demo_now, name)
        except NotFound:
            raise  # 404, answered by the app's handler
        except DeployerError as exc:
            return _error(409, str(exc))
        return JSONResponse({"service": name, "revision": revision, "results": [
            {"name": r.name, "ok": r.ok, "status": r.status, "latency_ms": r.latency_ms,
             "content_type": r.content_type, "text": r.text, "problems": "; ".join(r.problems)} for r in results]})

    async def logs(self, request: Request) -> Response:
        """Service output is operator data: it needs the token (and is masked all the same)."""
        denied = _denied(request, self.deps.api_token)
        if denied is not None:
            return denied
        name = request.path_params["name"]
        try:
            size = max(1, min(int(request.query_params.get("bytes", "16384")), 1024 * 1024))
            text = await run_in_threadpool(self.deps.reconciler.logs, name, size)
        except ValueError:
            return _error(400, "bytes must be a number")
        except NotFound:
            raise  # 404, answered by the app's handler
        except DeployerError as exc:
            return _error(503, str(exc))
        return Response(text, media_type="text/plain; charset=utf-8")

    async def groups(self, request: Request) -> Response:
        return JSONResponse(await run_in_threadpool(self.store.views.groups))

    async def healthz(self, request: Request) -> Response:
        report = await run_in_threadpool(_run_checks, self.deps.checks)
        ok = all(value == "ok" for value in report.values())
        return JSONResponse({"status": "ok" if ok else "failing", "checks": report},
                            status_code=200 if ok else 503)


# Pages run no script and load nothing from elsewhere; a model's output could not run even if unescaped.
PAGE_POLICY = ("default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; media-src 'self'; "
               "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
# A file served from a service's demo is data, never a document: typed by its bytes, not sniffed, sandboxed.
FILE_HEADERS = {"X-Content-Type-Options": "nosniff", "Content-Disposition": "inline", "Cache-Control": "no-cache",
                "Content-Security-Policy": "default-src 'none'; sandbox"}


def _file(data: bytes, media_type: str) -> Response:
    return Response(data, media_type=media_type, headers=FILE_HEADERS)


def _int(text: str) -> int | None:
    return int(text) if text.isascii() and text.isdigit() and len(text) < 19 else None


def _denied(request: Request, token: str | None) -> Response | None:
    """None when the bearer token matches; otherwise the answer to send."""
    if not token:
        return _error(403, "the API's write endpoints are off: no API token is configured (DEPLOYER_API_TOKEN_FILE)")
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
        return _error(401, "missing or wrong bearer token")
    return None


async def _json_body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if not raw:
        return {}
    try:
        data = json.loads(raw[:65536])
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


async def _not_found(request: Request, exc: Exception) -> Response:
    """``NotFound`` from any route (the operator's ``UnknownService`` among them) is a 404."""
    return _error(404, str(exc))


def _run_checks(checks: Mapping[str, Callable[[], None]]) -> dict[str, str]:
    report: dict[str, str] = {}
    for name, check in checks.items():
        try:
            check()
            report[name] = "ok"
        except Exception as exc:  # a health endpoint reports, it does not crash
            report[name] = f"{type(exc).__name__}: {exc}"
    return report
