"""The HTML pages: overview, a service, its showcase, a group, webhook deliveries; demo files.

Server-rendered from the store (no script runs on a page) under a strict
Content-Security-Policy; what a template shows is computed in ``presenters`` and
``showcase``. The two demo file routes serve bytes typed by their content,
``nosniff`` and sandboxed: a model's output is data, never a document.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

from deployer.errors import NotFound
from deployer.model.status import CacheUse
from deployer.model.traffic import RevisionTraffic
from deployer.reconcile import Reconciler
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
    service_detail,
    status_tone,
    traffic_of,
    webhook_delivery,
)
from deployer.web.showcase import Showcase

# Pages run no script and load nothing from elsewhere; a model's output could not run even if unescaped.
PAGE_POLICY = ("default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; media-src 'self'; "
               "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
# A file served from a service's demo is data, never a document: typed by its bytes, not sniffed, sandboxed.
FILE_HEADERS = {"X-Content-Type-Options": "nosniff", "Content-Disposition": "inline", "Cache-Control": "no-cache",
                "Content-Security-Policy": "default-src 'none'; sandbox"}


class Pages:
    """The page routes; each reads the store in a worker thread, then renders."""

    def __init__(self, store: Store, reconciler: Reconciler, showcase: Showcase, *,
                 refresh_seconds: int, gitea_url: str,
                 traffic: Callable[[], Iterable[RevisionTraffic]] | None = None,
                 artifacts: Callable[[], CacheUse] | None = None) -> None:
        self.store = store
        self.traffic = traffic
        self.artifacts = artifacts  # the artifact cache's tally (in memory: no disk walk per request)
        self.reconciler = reconciler
        self.showcase = showcase
        self.refresh_seconds = refresh_seconds
        self.gitea_url = gitea_url
        self.templates = page_environment()

    async def index(self, request: Request) -> Response:
        context = await run_in_threadpool(self._overview)
        return self._page("index.html", request, context)

    def _overview(self) -> dict[str, Any]:
        rows = overview_rows(self.store.views.services(), self.store.overrides.active())
        sources, delivered = self.store.sources.all(), self.store.deliveries.last_by_repository()
        return {"rows": rows, "sources": sources,
                "webhooks": {source.name: webhook_delivery(source, delivered) for source in sources},
                "failing": [row for row in rows if row.condition.tone is Tone.BAD],
                "drifting": [row for row in rows if row.condition.tone is Tone.WARN],
                "source_errors": sorted(self.reconciler.sources.errors().items()),
                "gateway_problem": self.reconciler.gateway_problem(),
                "groups": self.store.views.groups(),
                "artifacts": self.artifacts() if self.artifacts is not None else None}

    async def service(self, request: Request) -> Response:
        name = request.path_params["name"]
        context = await run_in_threadpool(self._service, name)
        if context is None:
            return self._missing(request, {"name": name, "sources": []})
        return self._page("service.html", request, context)

    def _service(self, name: str) -> dict[str, Any] | None:
        detail = service_detail(self.store, name)
        if detail is None:
            return None
        shown, demos = self.showcase.latest(detail.service)
        return {"service": detail.service, "timeline": detail.timeline, "attempts": detail.attempts,
                "overrides": detail.overrides, "condition": condition(detail.service),
                "snapshot": self.reconciler.snapshot(name),
                "statuses": commit_statuses(detail.attempts, detail.revisions), "sources": self.store.sources.all(),
                "demo_revision": shown, "demos": demos, "group": self._group_of(name),
                "traffic": traffic_of(name, self.traffic()) if self.traffic is not None else []}

    def _group_of(self, name: str) -> tuple[str, list[str]] | None:
        return next(((group, members) for group, members in self.store.views.groups().items() if name in members), None)

    async def showcase_page(self, request: Request) -> Response:
        name = request.path_params["name"]
        context = await run_in_threadpool(self._showcase, name)
        if context is None:
            return self._missing(request, {"name": name, "sources": []})
        return self._page("showcase.html", request, context)

    def _showcase(self, name: str) -> dict[str, Any] | None:
        view = self.store.views.service(name)
        if view is None:
            return None
        shown, demos = self.showcase.latest(view)
        return {"service": view, "condition": condition(view), "demo_revision": shown, "demos": demos,
                "table": self.showcase.revision_table(view), "group": self._group_of(name),
                "sources": self.store.sources.all()}

    async def group(self, request: Request) -> Response:
        group = request.path_params["group"]
        table = await run_in_threadpool(self.showcase.group_table, group)
        sources = await run_in_threadpool(self.store.sources.all)
        if table is None:
            return self._missing(request, {"name": group, "kind": "group", "sources": sources})
        return self._page("group.html", request, {"group": group, "table": table, "sources": sources,
                                                  "conditions": {column.title: condition(column.service)
                                                                 for column in table.columns if column.service}})

    async def deliveries(self, request: Request) -> Response:
        return self._page("deliveries.html", request, await run_in_threadpool(self._deliveries))

    def _deliveries(self) -> dict[str, Any]:
        """The webhook audit: what each delivery became and why; the store keeps no headers or secrets."""
        deliveries = self.store.deliveries.recent(100)
        return {"deliveries": deliveries, "counts": Counter(delivery.result.value for delivery in deliveries),
                "sources": self.store.sources.all()}

    async def demo_input(self, request: Request) -> Response:
        """A demo input file as the revision's checkout holds it (what was sent to ``POST /predict``)."""
        name, demo = request.path_params["name"], request.path_params["demo"]
        revision = _int(request.path_params["revision"])
        found = await run_in_threadpool(self.showcase.demo_input, name, revision, demo) if revision else None
        if found is None:
            raise NotFound(f"{name}: no demo input {demo!r} at revision {request.path_params['revision']!r} "
                           "(or it is larger than [demo] max_input_bytes)")
        return _file(*found)

    async def demo_output(self, request: Request) -> Response:
        """A binary demo answer: only files under ``<state_dir>/demo/``, typed by their magic bytes."""
        name, result = request.path_params["name"], _int(request.path_params["result"])
        found = await run_in_threadpool(self.showcase.demo_output, name, result) if result else None
        if found is None:
            raise NotFound(f"{name}: no stored demo answer {request.path_params['result']!r}")
        return _file(*found)

    def store_down(self, request: Request) -> HTMLResponse:
        """Shown instead of any page while the database cannot be reached: a 503 that reloads itself."""
        return self._page("unavailable.html", request, {"sources": []}, status=503)

    def _missing(self, request: Request, context: dict[str, Any]) -> HTMLResponse:
        """No such service or group: a page that says so, a 404, and no auto-refresh."""
        return self._page("missing.html", request, context, status=404, refresh=False)

    def _page(self, template: str, request: Request, context: dict[str, Any], *, status: int = 200,
              refresh: bool = True) -> HTMLResponse:
        """Render with what every page shows: commit links and the auto-refresh (``?live=0`` pauses it)."""
        live = refresh and request.query_params.get("live") != "0"
        html = self.templates.get_template(template).render(
            **context, path=request.url.path, live=live, refresh=self.refresh_seconds if live else 0,
            links=commit_links(self.gitea_url, context["sources"]), now=datetime.now(UTC),
            tone={"outcome": outcome_tone, "status": status_tone, "delivery": delivery_tone},
        )
        return HTMLResponse(html, status_code=status, headers={"Content-Security-Policy": PAGE_POLICY})


def _file(data: bytes, media_type: str) -> Response:
    return Response(data, media_type=media_type, headers=FILE_HEADERS)


def _int(text: str) -> int | None:
    return int(text) if text.isascii() and text.isdigit() and len(text) < 19 else None
