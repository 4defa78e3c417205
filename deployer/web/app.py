"""The Starlette application: the routes table, the error handlers, the lifespan; nothing else.

Everything the routes need is handed in as ``WebDeps`` by the composition root
(``deployer.app``). The routes live by kind: ``pages`` (HTML and demo files), ``api``
(JSON), ``monitoring`` (``/healthz``, ``/metrics``) and ``webhook`` (``POST /hooks/gitea``).
An error's type picks its status (``errors``): ``NotFound`` is 404 wherever it is raised.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import Route

from deployer.metrics import Metrics
from deployer.model.actual import ServiceState
from deployer.model.status import CacheUse
from deployer.model.traffic import RevisionTraffic
from deployer.operations import Operations
from deployer.reconcile import PassResult, Reconciler
from deployer.scheduler import WorkQueue
from deployer.store import Store
from deployer.web.api import Api
from deployer.web.errors import handlers
from deployer.web.headers import SecurityHeaders
from deployer.web.monitoring import Monitoring
from deployer.web.openapi import openapi
from deployer.web.pages import Pages
from deployer.web.showcase import Showcase
from deployer.web.webhook import WebhookReceiver


@dataclass
class WebDeps:
    store: Store
    webhook: WebhookReceiver
    reconciler: Reconciler
    queue: WorkQueue[PassResult]
    metrics: Metrics
    api_token: str | None = None
    checks: Mapping[str, Callable[[], None]] = field(default_factory=dict)
    refresh_seconds: int = 10
    gitea_url: str = ""  # commits of sources that are Gitea repositories link to it
    gateway_url: str = ""  # the gateway's base URL when it is on: /api/services gives each path's URL
    traffic: Callable[[], Iterable[RevisionTraffic]] | None = None  # what the gateway counted, when it is on
    operations: Operations | None = None  # long operator actions (stop, start, restart) run here
    artifacts: Callable[[], CacheUse] | None = None  # the artifact cache's use, for the status page


def build_app(deps: WebDeps, lifespan: Callable[[Starlette], AbstractAsyncContextManager[None]] | None = None
              ) -> Starlette:
    demos = deps.reconciler.rooms.demos
    showcase = Showcase(deps.store, demos.state_dir, demos.limits)
    pages = Pages(deps.store, deps.reconciler, showcase, refresh_seconds=deps.refresh_seconds,
                  gitea_url=deps.gitea_url, traffic=deps.traffic, artifacts=deps.artifacts)
    api = Api(deps.store, deps.reconciler, deps.queue, api_token=deps.api_token, gateway_url=deps.gateway_url,
              operations=deps.operations)
    monitoring = Monitoring(deps.checks, deps.metrics, degraded=lambda: degraded_services(deps.store))
    return Starlette(routes=[
        Route("/hooks/gitea", deps.webhook.handle, methods=["POST"]),
        Route("/", pages.index),
        Route("/services/{name}", pages.service),
        Route("/services/{name}/showcase", pages.showcase_page),
        Route("/services/{name}/demo-input/{revision}/{demo}", pages.demo_input),
        Route("/services/{name}/demo-output/{result}", pages.demo_output),
        Route("/groups/{group}", pages.group),
        Route("/deliveries", pages.deliveries),
        Route("/api/openapi.json", openapi),
        Route("/api/services", api.services),
        Route("/api/services/{name}", api.service),
        Route("/api/services/{name}/diff", api.diff),
        Route("/api/services/{name}/demos", api.demos),
        Route("/api/services/{name}/demo", api.demo, methods=["POST"]),
        Route("/api/groups", api.groups),
        Route("/api/services/{name}/logs", api.logs),
        Route("/api/plan", api.plan),
        Route("/api/reconcile", api.reconcile, methods=["POST"]),
        Route("/api/actions/{action}", api.batch, methods=["POST"]),
        Route("/api/operations/{id}", api.operation),
        Route("/api/services/{name}/{action}", api.act, methods=["POST"]),
        Route("/healthz", monitoring.healthz),
        Route("/metrics", monitoring.metrics),
    ], lifespan=lifespan, exception_handlers=handlers(pages.store_down), middleware=[Middleware(SecurityHeaders)])


def degraded_services(store: Store) -> dict[str, str]:
    """Services observed running fewer tasks than asked, and why (read from the store, like the page)."""
    return {view.name: view.detail for view in store.views.services() if view.state == ServiceState.DEGRADED.value}
