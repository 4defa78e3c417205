"""``/healthz`` and ``/metrics``: how the daemon itself is watched.

``/healthz`` runs the checks it is given (store, runtimes …) and reports each one,
503 when any fails; it also names the degraded services (swarm: fewer tasks than asked)
and why, which say nothing of the daemon's own health and so leave the status code alone.
``/metrics`` is the Prometheus text exposition.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from deployer.metrics import Metrics

NOTICE = "notice: "


class Notice(Exception):
    """What a check reports without failing ``/healthz``: something an operator should see that does
    not stop deployer doing its job (commit statuses waiting for Gitea). The contract's 503 is for
    the store, the scheduler and the runtimes."""


class Monitoring:
    def __init__(self, checks: Mapping[str, Callable[[], None]], metrics: Metrics, *,
                 degraded: Callable[[], dict[str, str]] | None = None) -> None:
        self.checks = checks
        self._metrics = metrics
        self._degraded = degraded

    async def healthz(self, request: Request) -> Response:
        report = await run_in_threadpool(run_checks, self.checks)
        ok = all(value == "ok" or value.startswith(NOTICE) for value in report.values())
        body: dict[str, object] = {"status": "ok" if ok else "failing", "checks": report}
        if self._degraded is not None:
            try:
                body["degraded"] = await run_in_threadpool(self._degraded)
            except Exception as exc:  # the store is down: its own check says so
                body["degraded"] = {"": f"{type(exc).__name__}: {exc}"}
        return JSONResponse(body, status_code=200 if ok else 503)

    async def metrics(self, request: Request) -> Response:
        body = self._metrics.exposition()
        return Response(body, media_type="text/plain; version=0.0.4; charset=utf-8")


def run_checks(checks: Mapping[str, Callable[[], None]]) -> dict[str, str]:
    report: dict[str, str] = {}
    for name, check in checks.items():
        try:
            check()
            report[name] = "ok"
        except Notice as exc:
            report[name] = f"{NOTICE}{exc}"
        except Exception as exc:  # a health endpoint reports, it does not crash
            report[name] = f"{type(exc).__name__}: {exc}"
    return report
