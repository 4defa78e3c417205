"""``POST /hooks/gitea``: verify, dedupe, enqueue, answer — in milliseconds.

Order matters: size cap → secret configured → payload → signature on the exact
bytes → event → source → branch/test filter → dedupe on (repository, ref,
after) → record and request a pass. It never clones, renders or touches a
runtime, and the database stays off the request path: dedupe keys live in
memory (loaded from the audit at start), audit rows and "pending" commit
statuses are written by a background thread, which keeps them in memory while the
database is down and writes them when it is back. Audit rows never hold headers or secrets.
"""

from __future__ import annotations

import logging
import queue
import re
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse

from deployer.errors import ConfigError
from deployer.gitea import (
    PushEvent,
    WebhookError,
    classify,
    clone_url,
    extract_payload,
    parse_push,
    verify_signature,
)
from deployer.metrics import Metrics
from deployer.model.status import DeliveryResult, Trigger
from deployer.reconcile import PassResult, SourceSpec
from deployer.reconcile.sources import SourceRegistry
from deployer.scheduler import WorkQueue
from deployer.store import Delivery, Store, StoreError

log = logging.getLogger(__name__)

MAX_BODY = 1024 * 1024
DEDUPE_MEMORY = 10_000  # accepted pushes remembered; an older replay just causes a no-op pass
AUDIT_BATCH = 200
AUDIT_GATHER = 0.1  # seconds the audit writer waits to fill a batch
AUDIT_KEPT = 10_000  # audit rows kept in memory while the database is down
AUDIT_RETRY_FIRST, AUDIT_RETRY_MAX = 0.5, 10.0  # seconds between writes of kept rows (doubling)
_DELIVERY_ID = re.compile(r"[^A-Za-z0-9-]")


@dataclass(frozen=True)
class GiteaRouting:
    """Which pushes become sources: configured ones, and repos of allowed owners."""

    allowed_owners: tuple[str, ...] = ()
    repo_prefix: str = ""
    branch: str = "main"
    base_url: str = ""


@dataclass(frozen=True)
class _Delivery:
    delivery_id: str
    event: str
    repository: str = ""
    ref: str = ""
    after: str = ""


class WebhookReceiver:
    def __init__(self, *, store: Store, sources: SourceRegistry, queue: WorkQueue[PassResult], metrics: Metrics,
                 secret: str | None, routing: GiteaRouting) -> None:
        self._store = store
        self._sources = sources
        self._metrics = metrics
        self._queue = queue
        self._secret = secret
        self._routing = routing
        self._dedupe = threading.Lock()
        self._accepted: OrderedDict[tuple[str, str, str], None] = OrderedDict()
        self._audit = _AuditWriter(store)
        self.accepting = True

    def start(self) -> None:
        """Remember the pushes already accepted (dedupe survives restarts), start the audit writer."""
        for key in reversed(self._store.deliveries.recent_accepted(DEDUPE_MEMORY)):
            self._accepted[key] = None
        self._audit.start()

    def stop(self) -> None:
        self.accepting = False
        self._audit.stop()

    def flush(self, timeout: float = 5.0) -> bool:
        return self._audit.flush(timeout)

    def check(self) -> None:
        """For ``/healthz``: raises while deliveries wait in memory for the database."""
        problem = self._audit.problem
        if problem is not None:
            raise RuntimeError(problem)

    async def handle(self, request: Request) -> JSONResponse:
        delivery = _Delivery(
            delivery_id=_DELIVERY_ID.sub("", request.headers.get("x-gitea-delivery", ""))[:64],
            event=_event(request)[:40],
        )
        if not self.accepting:
            return _answer(503, "rejected", "deployer is shutting down; push again or wait for the poll")
        body = await _read_capped(request, MAX_BODY)
        if body is None:
            return await self._reject(delivery, 413, f"body larger than {MAX_BODY} bytes")
        if not self._secret:
            return await self._reject(delivery, 403, "webhooks are disabled: no webhook secret is configured "
                                                     "(set DEPLOYER_WEBHOOK_SECRET_FILE)")
        try:
            payload = extract_payload(body, request.headers.get("content-type", ""))
        except WebhookError as exc:
            return await self._reject(delivery, 400, str(exc))
        if not verify_signature(payload, request.headers, self._secret):
            return await self._reject(delivery, 401, "missing or wrong signature (X-Gitea-Signature)")
        if delivery.event != "push":
            return await self._reject(delivery, 400, f"event {delivery.event or '(none)'!r} is not handled; "
                                                     "configure the webhook for push events only")
        try:
            push = parse_push(payload)
        except WebhookError as exc:
            return await self._reject(delivery, 400, str(exc))
        if self._sources.has(push.full_name):
            return self._route(delivery, push)  # no I/O on this path: a thread hop would only add waiting
        return await run_in_threadpool(self._route, delivery, push)  # may register a new source (a write)

    def _route(self, delivery: _Delivery, push: PushEvent) -> JSONResponse:
        delivery = _Delivery(delivery.delivery_id, delivery.event, push.full_name, push.ref, push.after)
        try:
            source = self._source_for(push)
        except WebhookError as exc:  # a clone URL deployer will not follow: nothing is written
            self._record(delivery, DeliveryResult.REJECTED, f"400: {exc}")
            return _answer(400, "rejected", str(exc))
        if source is None:
            detail = (f"repository {push.full_name} is not a configured source and its owner is not in "
                      "gitea.allowed_owners")
            self._record(delivery, DeliveryResult.REJECTED, detail)
            return _answer(403, "rejected", detail)
        ignored = classify(push, source.branch)
        if ignored is not None:
            self._record(delivery, DeliveryResult.IGNORED, ignored)
            return _answer(200, "ignored", ignored)
        if not self._sources.has(source.name):
            try:
                self._sources.add(source, origin="gitea")
            except ConfigError as exc:  # checked before anything is written
                self._record(delivery, DeliveryResult.REJECTED, f"400: {exc}")
                return _answer(400, "rejected", str(exc))
            except StoreError as exc:  # refused, so Gitea shows the delivery failed; a redelivery follows it
                self._record(delivery, DeliveryResult.REJECTED, f"503: {exc}")
                return _answer(503, "rejected", f"{source.name} cannot be followed while the database is down; "
                                                "redeliver this push from Gitea once /healthz is ok")
        key = (push.full_name, push.ref, push.after)
        with self._dedupe:
            if key in self._accepted:
                self._record(delivery, DeliveryResult.DUPLICATE, f"{push.after[:7]} was already accepted")
                return _answer(200, "duplicate", f"{push.after[:7]} was already accepted")
            self._accepted[key] = None
            while len(self._accepted) > DEDUPE_MEMORY:
                self._accepted.popitem(last=False)
        self._record(delivery, DeliveryResult.ACCEPTED, f"pass requested for source {source.name}")
        self._queue.request(source.name, Trigger.WEBHOOK, fetch=True)
        return _answer(202, "accepted", f"pass requested for source {source.name} at {push.after[:7]}")

    def _source_for(self, push: PushEvent) -> SourceSpec | None:
        """The followed source this push is about, or a new one of an allowed owner; None when neither.

        Everything comes from the push's one validated identity, ``full_name``: the match with
        a followed source, the allowed-owner check (its owner part) and the clone URL
        (``clone_url``). Gitea's owner and repository names are case-insensitive, so are the
        matches: a renamed ``Acme`` never becomes a second source beside ``acme``.
        """
        identity = push.full_name.lower()
        for spec in self._sources.specs():
            if spec.name.lower() == identity or _repo_path(spec.url).endswith(f"/{identity}"):
                return spec
        owner, _, name = push.full_name.partition("/")
        if owner.lower() not in {allowed.lower() for allowed in self._routing.allowed_owners} \
                or not name.startswith(self._routing.repo_prefix):
            return None
        url = clone_url(push.full_name, push.clone_url, self._routing.base_url)
        return SourceSpec(push.full_name, url, self._routing.branch or push.default_branch)

    def _record(self, delivery: _Delivery, result: DeliveryResult, detail: str) -> None:
        self._metrics.webhooks.labels(result.value).inc()
        self._audit.put(_AuditRow(delivery, result, detail))

    async def _reject(self, delivery: _Delivery, status: int, detail: str) -> JSONResponse:
        self._record(delivery, DeliveryResult.REJECTED, f"{status}: {detail}")
        return _answer(status, "rejected", detail)


@dataclass(frozen=True)
class _AuditRow:
    delivery: _Delivery
    result: DeliveryResult
    detail: str


class _AuditWriter:
    """Writes delivery audit rows in batches, off the request path; keeps them while the database is down.

    Rows the database cannot take now stay in memory (at most ``AUDIT_KEPT``; beyond that the
    oldest go, counted and logged) and are written again with backoff; ``problem`` says so,
    and ``/healthz`` shows it. A batch the database refuses while it answers (a value it
    cannot store) is written row by row, so one bad row never costs the others.
    Commit statuses are not sent from here: a service's "pending" goes out when its deploy
    starts (a push that leaves a service unchanged must not leave it pending forever).
    """

    def __init__(self, store: Store) -> None:
        self._store = store
        self._rows: queue.Queue[_AuditRow | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._kept: deque[_AuditRow] = deque()
        self._dropped = 0
        self._retry_in = AUDIT_RETRY_FIRST
        self.problem: str | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="webhook-audit", daemon=True)
            self._thread.start()

    def put(self, row: _AuditRow) -> None:
        if self._thread is None:  # not started (a test building the app in-process): write now
            self._keep([row])
            self._write_kept()
            return
        self._rows.put(row)

    def flush(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self._rows.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.01)
        return not self._rows.unfinished_tasks

    def stop(self) -> None:
        if self._thread is not None:
            self._rows.put(None)
            self._thread.join(10)
            self._thread = None
        if self._kept:
            log.error("%d webhook deliveries could not be recorded before shutdown (%s); their pushes were "
                      "queued, and the poll catches up on any pass that did not run", len(self._kept), self.problem)

    def _run(self) -> None:
        while True:
            batch = self._gather()
            rows = [row for row in batch if row is not None]
            self._keep(rows)
            if self._kept:
                self._write_kept()
            for _ in batch:
                self._rows.task_done()
            if len(rows) < len(batch):
                return

    def _gather(self) -> list[_AuditRow | None]:
        """The next batch; empty when rows are kept and it is time to try them again."""
        try:
            batch = [self._rows.get(timeout=self._retry_in if self._kept else None)]
        except queue.Empty:
            return []
        # Gather for a moment: a burst becomes a few commits instead of one per delivery.
        deadline = time.monotonic() + AUDIT_GATHER
        while len(batch) < AUDIT_BATCH and batch[-1] is not None:
            try:
                batch.append(self._rows.get(timeout=max(0.0, deadline - time.monotonic())))
            except queue.Empty:
                break
        return batch

    def _keep(self, rows: list[_AuditRow]) -> None:
        self._kept.extend(rows)
        while len(self._kept) > AUDIT_KEPT:
            self._kept.popleft()
            self._dropped += 1
        if self._dropped and self._dropped % 100 == 1:
            log.error("webhook audit: %d deliveries dropped unrecorded (more than %d waiting for the database)",
                      self._dropped, AUDIT_KEPT)

    def _write_kept(self) -> None:
        rows = list(self._kept)
        try:
            self._write(rows)
        except Exception as exc:  # the audit must not take the receiver down; the push itself is queued
            if not self._reachable():
                self._retry_in = min(self._retry_in * 2, AUDIT_RETRY_MAX)
                self.problem = (f"{len(rows)} webhook deliveries kept in memory, not yet recorded "
                                f"(retrying in {self._retry_in:.0f}s): {exc}")
                log.warning("webhook audit: %s", self.problem)
                return
            self._write_one_by_one(rows)
        self._kept.clear()
        self._retry_in = AUDIT_RETRY_FIRST
        if self.problem is not None:
            log.info("webhook audit: the database is back; every kept delivery is recorded")
        self.problem = None

    def _reachable(self) -> bool:
        try:
            self._store.ping()
        except Exception:
            return False
        return True

    def _write_one_by_one(self, rows: list[_AuditRow]) -> None:
        for row in rows:
            try:
                self._write([row])
            except Exception:
                log.exception("webhook audit: the database refused the row of delivery %s",
                              row.delivery.delivery_id or "-")

    def _write(self, rows: list[_AuditRow]) -> None:
        self._store.deliveries.record([Delivery(row.delivery.delivery_id, row.delivery.event,
                                                row.delivery.repository, row.delivery.ref, row.delivery.after,
                                                row.result, row.detail) for row in rows])
        for row in rows:
            log.info("webhook %s %s %s: %s", row.delivery.delivery_id or "-", row.delivery.repository or "-",
                     row.result.value, row.detail)


def _event(request: Request) -> str:
    for header in ("x-gitea-event", "x-gogs-event", "x-github-event"):
        if request.headers.get(header):
            return request.headers[header]
    return ""


def _repo_path(url: str) -> str:
    """A followed source's URL as ``…/owner/name``, lower case, to match a push's identity against."""
    return url.rstrip("/").removesuffix(".git").lower()


async def _read_capped(request: Request, limit: int) -> bytes | None:
    """The body, or None as soon as it is known to exceed ``limit`` (never read whole)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        return None
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _answer(status: int, result: str, detail: str) -> JSONResponse:
    return JSONResponse({"result": result, "detail": detail}, status_code=status)
