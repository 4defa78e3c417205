"""The JSON API: services, revisions and their diffs, demo answers, groups, plan; operator actions.

Reads come from the store (``/api/plan`` asks the reconciler for a dry run); the
shapes are in ``serializers``. Service logs and every POST need the API bearer token
(``auth``). No POST waits for a deploy: overrides only record intent and request a pass,
answering 202; a reconcile, a rollback and a demo answer 202 with an ``Operation`` that
follows the pass (or the demo run) they caused; stop, start and restart (one service or a
batch) record intent, then run as an operation. The caller follows ``/api/operations/{id}``.
A refusal is raised as a typed error and answered by the app's handlers (``errors``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from deployer.errors import NotFound, UnknownService
from deployer.model.diff import spec_diff
from deployer.model.status import RevisionView, Trigger
from deployer.operations import ItemKind, ItemResult, Operations
from deployer.operator import Done, Operator
from deployer.reconcile import ActionDone, PassResult, Reconciler
from deployer.scheduler import WorkQueue
from deployer.store import Store
from deployer.web.auth import require_token
from deployer.web.errors import BadRequest, Conflict, Unavailable, refused_as
from deployer.web.outcomes import demos_ran, service_in_pass, source_pass
from deployer.web.presenters import service_detail
from deployer.web.serializers import (
    action_json,
    attempt_json,
    change_json,
    demo_json,
    operation_json,
    override_json,
    revision_json,
    service_json,
)

ACTIONS = ("rollback", "pin", "unpin", "suspend", "resume")
RUN_ACTIONS = ("stop", "start", "restart")  # run now, as an operation, on one service or a batch
MAX_BODY = 65536  # of a POST's JSON body read; the rest is ignored


class Api:
    """The ``/api`` routes."""

    def __init__(self, store: Store, reconciler: Reconciler, queue: WorkQueue[PassResult], *, api_token: str | None,
                 gateway_url: str = "", operations: Operations | None = None) -> None:
        self.store = store
        self.operations = operations or Operations()
        self.gateway_url = gateway_url
        self.reconciler = reconciler
        self.queue = queue
        self.api_token = api_token
        self.operator = Operator(store)

    async def services(self, request: Request) -> Response:
        views = await run_in_threadpool(self.store.views.services)
        return JSONResponse([service_json(view, self.gateway_url) for view in views])

    async def service(self, request: Request) -> Response:
        name = request.path_params["name"]
        detail = await run_in_threadpool(service_detail, self.store, name)
        if detail is None:
            raise UnknownService(name)
        data = service_json(detail.service, self.gateway_url)
        data["revisions"] = [revision_json(revision) for revision in detail.revisions]
        data["attempts"] = [attempt_json(attempt, steps=True) for attempt in detail.attempts]
        data["overrides"] = [override_json(override) for override in detail.overrides]
        data["tasks"] = [{"node": task.node, "state": task.state, "error": task.error}
                         for task in self.reconciler.tasks(name)]  # swarm: each task's node and state
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

    async def demos(self, request: Request) -> Response:
        name = request.path_params["name"]
        if await run_in_threadpool(self.store.views.service, name) is None:
            raise UnknownService(name)
        runs = await run_in_threadpool(self.store.demos.runs, name)
        ordered = sorted(runs.items(), key=lambda item: item[0] or 0, reverse=True)
        return JSONResponse({"service": name, "runs": [
            {"revision": revision, "results": [demo_json(view) for view in views]} for revision, views in ordered]})

    async def groups(self, request: Request) -> Response:
        return JSONResponse(await run_in_threadpool(self.store.views.groups))

    async def logs(self, request: Request) -> Response:
        """Service output is operator data: it needs the token (and is masked all the same)."""
        require_token(request, self.api_token)
        name = request.path_params["name"]
        try:
            size = max(1, min(int(request.query_params.get("bytes", "16384")), 1024 * 1024))
        except ValueError:
            raise BadRequest("bytes must be a number") from None
        with refused_as(Unavailable):
            text = await run_in_threadpool(self.reconciler.logs, name, size)
        return Response(text, media_type="text/plain; charset=utf-8")

    async def plan(self, request: Request) -> Response:
        """A dry run; ``fetch=1`` asks every source's remote first, so it needs the token like an action."""
        fetch = request.query_params.get("fetch") in ("1", "true", "yes")
        if fetch:
            require_token(request, self.api_token)
        lines = await run_in_threadpool(lambda: self.reconciler.preview(fetch=fetch))
        wanted = request.query_params.get("service")
        actions = [action_json(source, action) for source, action in lines
                   if wanted is None or action.service == wanted]
        return JSONResponse({"converged": not any(item["kind"] != "noop" for item in actions), "actions": actions})

    async def reconcile(self, request: Request) -> Response:
        require_token(request, self.api_token)
        body = await _json_body(request)
        service, retry = body.get("service"), body.get("retry", False)
        if not isinstance(retry, bool) or (retry and not service):
            raise BadRequest("retry must be true or false, and needs a service: {\"service\": NAME, \"retry\": true}")
        sources = self.reconciler.sources.names()
        if service:
            view = await run_in_threadpool(self.store.views.service, str(service))
            if view is None:
                raise UnknownService(str(service))
            sources = [view.source]
        again = frozenset({str(service)}) if retry else frozenset()  # a held failed spec is tried only when asked
        since = self.store.history.newest_started(str(service)) if service else None
        passes = {source: self.queue.request(source, Trigger.CLI, fetch=True, retry=again)
                  for source in sources}
        if service:  # the service's line of its source's pass
            operation = self.operations.track("reconcile", {str(service): passes[sources[0]]},
                                              self._service_line(since))
        else:
            operation = self.operations.track("reconcile", passes, source_pass, kind=ItemKind.SOURCE)
        return JSONResponse({**operation_json(operation), "requested": sources, "retry": sorted(again)},
                            status_code=202)

    def _service_line(self, since: int | None) -> Callable[[str, PassResult], ItemResult]:
        """A service's line of the pass that served a request made when ``since`` was its newest attempt."""
        return lambda service, result: service_in_pass(self.store, service, result, since=since)

    async def act(self, request: Request) -> Response:
        require_token(request, self.api_token)
        name, action = request.path_params["name"], request.path_params["action"]
        body = await _json_body(request)
        if action in RUN_ACTIONS:
            return await self._run_action(action, {**body, "services": [name]})
        since = self.store.history.newest_started(name)  # before the override: a running pass may act on it
        with refused_as(Conflict):
            done = await run_in_threadpool(self._act, name, action, body)
        answer = {"service": done.service, "message": done.message,
                  "override": override_json(done.override) if done.override else None}
        if action == "rollback":  # it names the revision to run: deployed even if it failed once before
            deployed = self.queue.request(done.source, Trigger.ROLLBACK, fetch=False, retry=frozenset({done.service}))
        else:  # the pass that acts on the override (an unpin deploys the branch's head, a resume what drifted)
            deployed = self.queue.request(done.source, Trigger.CLI, fetch=False)
        operation = self.operations.track(action, {done.service: deployed}, self._service_line(since))
        return JSONResponse({**answer, **operation_json(operation)}, status_code=202)

    def _act(self, name: str, action: str, body: dict[str, Any]) -> Done:
        who, why = str(body.get("who") or "api")[:200], str(body.get("why") or "")[:2000]
        revision = _revision(body.get("revision"))
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
        raise NotFound(f"unknown action {action!r} ({', '.join((*ACTIONS, *RUN_ACTIONS))})")

    async def batch(self, request: Request) -> Response:
        """``POST /api/actions/{stop,start,restart}`` with ``services``, ``group``, ``source`` or ``all``."""
        require_token(request, self.api_token)
        action = request.path_params["action"]
        if action not in RUN_ACTIONS:
            raise NotFound(f"unknown action {action!r} ({', '.join(RUN_ACTIONS)})")
        return await self._run_action(action, await _json_body(request))

    async def operation(self, request: Request) -> Response:
        try:
            found = self.operations.get(int(request.path_params["id"]))
        except ValueError:
            found = None
        if found is None:
            raise NotFound(f"no operation {request.path_params['id']!r} (operations are kept in memory; "
                           "see `deployer status` and the attempts)")
        return JSONResponse(operation_json(found))

    async def _run_action(self, action: str, body: dict[str, Any]) -> Response:
        who, why = str(body.get("who") or "api")[:200], str(body.get("why") or "")[:2000]
        names = await run_in_threadpool(self._select, body)
        with refused_as(Conflict):
            await run_in_threadpool(self._record_intent, action, names, who, why)
        note = f"{who}: {why}" if why else who
        work = {name: self._work(action, name, note) for name in names}
        operation = self.operations.submit(action, work)
        return JSONResponse(operation_json(operation), status_code=202)

    def _record_intent(self, action: str, names: list[str], who: str, why: str) -> None:
        """A stop or a start is the desired state from now on, before it is carried out (a crash keeps it)."""
        for name in names:
            if action == "stop":
                self.operator.stop(name, who=who, why=why)
            elif action == "start":
                self.operator.start(name, who=who)

    def _work(self, action: str, name: str, note: str) -> Callable[[], ActionDone]:
        run = {"stop": self.reconciler.stop, "start": self.reconciler.start,
               "restart": self.reconciler.restart}[action]
        return lambda: run(name, note=note)

    def _select(self, body: Mapping[str, Any]) -> list[str]:
        """The services a batch names: a list, a group, a source or all; an unknown one refuses the whole batch."""
        views = self.store.views.services()
        known = {view.name for view in views}
        chosen: list[str] = []
        if body.get("all") is True:
            chosen += sorted(known)
        if body.get("group"):
            members = self.store.views.groups().get(str(body["group"]))
            if not members:
                raise NotFound(f"no group named {str(body['group'])[:64]!r} (see `deployer status` or /api/groups)")
            chosen += members
        if body.get("source"):
            of_source = [view.name for view in views if view.source == str(body["source"])]
            if not of_source:
                raise NotFound(f"no services from a source named {str(body['source'])[:120]!r}")
            chosen += of_source
        services = body.get("services") or []
        if not isinstance(services, list) or not all(isinstance(name, str) for name in services):
            raise BadRequest("services must be a list of service names")
        for name in services:
            if name not in known:
                raise UnknownService(name[:64])
        chosen += services
        if not chosen:
            raise BadRequest("name the services: \"services\": [NAME…], \"group\", \"source\" or \"all\": true")
        return list(dict.fromkeys(chosen))

    async def demo(self, request: Request) -> Response:
        """Refused now when there is nothing to demo; else run as an operation, after any deploy of the
        service (its lock): the answer never waits for one. Results are recorded (``/demos``)."""
        require_token(request, self.api_token)
        name = request.path_params["name"]
        with refused_as(Conflict):
            await run_in_threadpool(self.reconciler.demo_target, name)
        operation = self.operations.submit("demo", {name: lambda: demos_ran(*self.reconciler.demo_now(name))})
        return JSONResponse(operation_json(operation), status_code=202)


async def _json_body(request: Request) -> dict[str, Any]:
    """The POST body's JSON object; anything else (empty, not JSON, not an object) counts as ``{}``."""
    raw = await request.body()
    if not raw:
        return {}
    try:
        data = json.loads(raw[:MAX_BODY])
    except ValueError:
        return {}
    except RecursionError:
        raise BadRequest("the JSON body is nested too deeply") from None
    return data if isinstance(data, dict) else {}


def _revision(value: object) -> int | None:
    """A revision id from a body: a whole number (or its digits as text), nothing else."""
    if value is None:
        return None
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 18:
        return int(value)
    if isinstance(value, int) and not isinstance(value, bool) and 0 < value < 2**63:
        return value
    raise BadRequest(f"revision must be a revision number (got {str(value)[:40]!r}); see `deployer history NAME`")
