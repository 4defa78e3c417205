"""A small stand-in for Gitea's REST API: version, user, repositories, webhooks and commit statuses (WEBHOOKS.md §3).

Faithful where a client can tell: auth schemes and middleware order, no state
validation, trimmed fields, ``status`` (not ``state``) in answers, per-commit
``id``, 500 for an unknown commit. Webhooks (repository and organisation): a hook
never shows its secret, ``active`` defaults to false, empty ``events`` means push,
an edit replaces events and branch filter and cannot change the secret, hooks need
an admin; ``updated_at`` has Gitea's one-second resolution; ``edit_hook_by_hand``
is the web UI (which can change the secret). ``GiteaStandIn`` serves it under uvicorn on
127.0.0.1; ``down()`` closes the port so clients see refused connections.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import itertools
import json
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

VERSION = "1.26.0"
DEFAULT_TOKEN = "standin-token-5f1c9e"  # a test credential, not a secret
STATES = ("pending", "success", "error", "failure", "warning", "skipped")
_SORTS: dict[str, tuple[str, bool]] = {  # Gitea's own (odd) mapping: leastindex sorts by index descending
    "oldest": ("created", False), "recentupdate": ("created", True), "leastupdate": ("created", False),
    "leastindex": ("id", True), "highestindex": ("id", False),
}
Handler = Callable[[Request], Awaitable[Response]]


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Token:
    user: str
    scopes: frozenset[str] = frozenset({"all"})
    admin: bool = True  # of every repository and organisation here (hooks need it)

    def allows(self, scope: str) -> bool:
        category = scope.partition(":")[2]
        return bool({"all", scope, f"write:{category}"} & self.scopes)


@dataclass
class Repo:
    id: int
    owner: str
    name: str
    shas: list[str]
    branches: dict[str, str]

    @property
    def full_name(self) -> str:
        return f"{self.owner}/{self.name}"

    def resolve(self, ref: str) -> str | None:
        """Branch name, full SHA, or an unambiguous abbreviation of at least 4 hex digits (git's minimum)."""
        if ref in self.branches:
            return self.branches[ref]
        ref = ref.lower()
        matches = [sha for sha in self.shas if sha.startswith(ref)] if len(ref) >= 4 else []
        return matches[0] if len(matches) == 1 else None


@dataclass(frozen=True)
class SeenRequest:
    method: str
    path: str
    authorization: str | None
    body: bytes


@dataclass
class World:
    """Everything the stand-in remembers; it outlives server restarts (``down``/``up``)."""

    root_url: str = ""
    tokens: dict[str, Token] = field(default_factory=lambda: {DEFAULT_TOKEN: Token("deployer-bot")})
    repos: dict[str, Repo] = field(default_factory=dict)
    rows: dict[tuple[str, str], list[dict[str, Any]]] = field(default_factory=dict)
    failures: list[int] = field(default_factory=list)
    failing: int | None = None  # every request answered with this status until cleared (an outage)
    delay: float = 0.0  # seconds every request waits before it is handled (a slow Gitea)
    requests: list[SeenRequest] = field(default_factory=list)
    orgs: set[str] = field(default_factory=set)
    hooks: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # "repos/o/r" or "orgs/o" -> hooks
    hook_ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    lock: threading.Lock = field(default_factory=threading.Lock)


def _error(status: int, message: str, world: World) -> JSONResponse:
    return JSONResponse({"message": message, "url": f"{world.root_url}api/swagger"}, status_code=status)


def _user(login: str, world: World) -> dict[str, Any]:
    return {"id": abs(hash(login)) % 10_000 + 1, "login": login, "login_name": "", "source_id": 0,
            "full_name": "", "email": f"{login}@noreply.localhost", "avatar_url": "",
            "html_url": f"{world.root_url}{login}", "username": login}


def token_from_header(header: str | None) -> str | None:
    """The token an ``Authorization`` header offers, per Gitea's ParseAuthorizationHeader.

    Exactly two whitespace-separated fields; ``token``/``bearer`` case-insensitive;
    Basic offers the password, or the user name when the password is empty or
    ``x-oauth-basic``. Anything else offers nothing (the request stays anonymous).
    """
    parts = (header or "").split()
    if len(parts) != 2:
        return None
    scheme, value = parts[0].lower(), parts[1]
    if scheme in ("token", "bearer"):
        return value
    if scheme != "basic":
        return None
    try:
        user, _, password = base64.b64decode(value, validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return user if password in ("", "x-oauth-basic") else password


class GiteaApp:
    """The Starlette app; each handler runs Gitea's middleware order: auth, scope, repo, route."""

    def __init__(self, world: World) -> None:
        self.world = world

    def routes(self) -> list[Route]:
        repo = "/api/v1/repos/{owner}/{repo}"
        org = "/api/v1/orgs/{org}"
        return [
            Route("/api/v1/version", self._wrap(self.version, scope=None)),
            Route("/api/v1/user", self._wrap(self.user, scope="read:user")),
            Route("/api/v1/users/{name}", self._wrap(self.owner, scope="read:user")),
            Route(repo, self._wrap(self.repository, scope="read:repository")),
            Route(f"{repo}/hooks", self._wrap(self.list_hooks, scope="read:repository")),
            Route(f"{repo}/hooks", self._wrap(self.create_hook, scope="write:repository"), methods=["POST"]),
            Route(f"{repo}/hooks/{{id}}", self._wrap(self.edit_hook, scope="write:repository"), methods=["PATCH"]),
            Route(f"{repo}/hooks/{{id}}", self._wrap(self.delete_hook, scope="write:repository"), methods=["DELETE"]),
            Route(f"{org}/hooks", self._wrap(self.list_hooks, scope="read:organization")),
            Route(f"{org}/hooks", self._wrap(self.create_hook, scope="write:organization"), methods=["POST"]),
            Route(f"{org}/hooks/{{id}}", self._wrap(self.edit_hook, scope="write:organization"), methods=["PATCH"]),
            Route(f"{org}/hooks/{{id}}", self._wrap(self.delete_hook, scope="write:organization"),
                  methods=["DELETE"]),
            Route(f"{repo}/statuses/{{sha}}", self._wrap(self.create_status, scope="write:repository"),
                  methods=["POST"]),
            Route(f"{repo}/statuses/{{sha}}", self._wrap(self.list_statuses, scope="read:repository")),
            Route(f"{repo}/commits/{{ref}}/statuses", self._wrap(self.list_by_ref, scope="read:repository")),
            Route(f"{repo}/commits/{{ref}}/status", self._wrap(self.combined, scope="read:repository")),
        ]

    def _wrap(self, handler: Callable[[Request, Token | None], Response], *, scope: str | None) -> Handler:
        async def endpoint(request: Request) -> Response:
            if self.world.delay:
                await asyncio.sleep(self.world.delay)
            body = await request.body()
            request.state.raw_body = body
            with self.world.lock:
                self.world.requests.append(SeenRequest(request.method, request.url.path,
                                                       request.headers.get("authorization"), body))
                try:
                    self._injected_failure()
                    token = self._authenticate(request, scope)
                    return handler(request, token)
                except ApiError as exc:
                    return _error(exc.status, exc.message, self.world)
        return endpoint

    def _injected_failure(self) -> None:
        if self.world.failing is not None:
            raise ApiError(self.world.failing, "injected outage")
        if self.world.failures:
            raise ApiError(self.world.failures.pop(0), "injected failure")

    def _authenticate(self, request: Request, scope: str | None) -> Token | None:
        offered = token_from_header(request.headers.get("authorization"))
        if offered is None:
            return None
        token = self.world.tokens.get(offered)
        if token is None:  # a wrong token fails every route, even public ones
            raise ApiError(401, "user does not exist [uid: 0, name: ]")
        if scope is not None and not token.allows(scope):
            raise ApiError(403, f"token does not have at least one of required scope(s), required=[{scope}]")
        return token

    def _repo(self, request: Request) -> Repo:
        name = f"{request.path_params['owner']}/{request.path_params['repo']}"
        repo = self.world.repos.get(name.lower())
        if repo is None:
            raise ApiError(404, "The target couldn't be found.")
        return repo

    def version(self, request: Request, token: Token | None) -> Response:
        return JSONResponse({"version": VERSION})

    def user(self, request: Request, token: Token | None) -> Response:
        if token is None:
            raise ApiError(401, "Only signed in user is allowed to call APIs.")
        return JSONResponse(_user(token.user, self.world))

    def owner(self, request: Request, token: Token | None) -> Response:
        name = request.path_params["name"]
        known = {repo.owner.lower() for repo in self.world.repos.values()} | {o.lower() for o in self.world.orgs} \
            | {t.user.lower() for t in self.world.tokens.values()}
        if name.lower() not in known:
            raise ApiError(404, f"user redirect does not exist [name: {name.lower()}]")
        return JSONResponse({**_user(name, self.world), "visibility": "public"})

    def repository(self, request: Request, token: Token | None) -> Response:
        repo = self._repo(request)
        admin = token is not None and token.admin
        return JSONResponse({"id": repo.id, "name": repo.name, "full_name": repo.full_name,
                             "owner": _user(repo.owner, self.world), "private": False, "empty": not repo.shas,
                             "default_branch": next(iter(repo.branches), "main"),
                             "html_url": f"{self.world.root_url}{repo.full_name}",
                             "clone_url": f"{self.world.root_url}{repo.full_name}.git",
                             "permissions": {"admin": admin, "push": token is not None, "pull": True}})

    # -- webhooks (routers/api/v1/utils/hook.go) ---------------------------------------

    def _hook_scope(self, request: Request, token: Token | None) -> str:
        if "org" in request.path_params:
            org = request.path_params["org"].lower()
            if org not in {o.lower() for o in self.world.orgs}:
                raise ApiError(404, "GetOrgByName")
            scope = f"orgs/{org}"
        else:
            scope = f"repos/{self._repo(request).full_name.lower()}"
        if token is None:
            raise ApiError(401, "token is required")
        if not token.admin:
            raise ApiError(403, "Must be an organization owner" if scope.startswith("orgs/") else
                           "user should be the owner or admin of the repository")
        return scope

    def list_hooks(self, request: Request, token: Token | None) -> Response:
        hooks = self.world.hooks.get(self._hook_scope(request, token), [])
        page, limit = _paging(request)
        return JSONResponse([_public_hook(hook) for hook in hooks[(page - 1) * limit: page * limit]],
                            headers={"X-Total-Count": str(len(hooks))})

    def create_hook(self, request: Request, token: Token | None) -> Response:
        scope = self._hook_scope(request, token)
        form = self._object_form(request)
        config = form.get("config") if isinstance(form.get("config"), dict) else {}
        if form.get("type") not in ("gitea", "gogs", "slack", "discord", "dingtalk", "telegram", "msteams",
                                    "feishu", "matrix", "wechatwork", "packagist"):
            raise ApiError(422, "Invalid hook type")
        url = str(config.get("url") or "")
        if not url.startswith(("http://", "https://")):
            raise ApiError(422, "Invalid url")
        if config.get("content_type") not in ("json", "form"):
            raise ApiError(422, "Invalid content type")
        now = _stamp()
        hook = {"id": next(self.world.hook_ids), "type": form["type"], "url": url,
                "content_type": config["content_type"], "secret": str(config.get("secret") or ""),
                "events": list(form.get("events") or []) or ["push"], "branch_filter": str(form.get("branch_filter")
                                                                                          or ""),
                "authorization_header": str(form.get("authorization_header") or ""),
                "active": form.get("active") is True, "created_at": now, "updated_at": now}
        self.world.hooks.setdefault(scope, []).append(hook)
        return JSONResponse(_public_hook(hook), status_code=201)

    def edit_hook(self, request: Request, token: Token | None) -> Response:
        hook = self._hook(request, token)
        form = self._object_form(request)
        config = form.get("config") if isinstance(form.get("config"), dict) else {}
        if config.get("url"):
            hook["url"] = str(config["url"])
        if config.get("content_type"):
            if config["content_type"] not in ("json", "form"):
                raise ApiError(422, "Invalid content type")
            hook["content_type"] = config["content_type"]
        # editHook replaces these even when omitted; the secret is not among the keys it reads
        hook["events"] = list(form.get("events") or []) or ["push"]
        hook["branch_filter"] = str(form.get("branch_filter") or "")
        hook["authorization_header"] = str(form.get("authorization_header") or "")
        if isinstance(form.get("active"), bool):
            hook["active"] = form["active"]
        hook["updated_at"] = _stamp()
        return JSONResponse(_public_hook(hook))

    def delete_hook(self, request: Request, token: Token | None) -> Response:
        hook = self._hook(request, token)
        for hooks in self.world.hooks.values():
            if hook in hooks:
                hooks.remove(hook)
        return Response(status_code=204)

    def _hook(self, request: Request, token: Token | None) -> dict[str, Any]:
        hooks = self.world.hooks.get(self._hook_scope(request, token), [])
        wanted = request.path_params["id"]
        found = next((hook for hook in hooks if str(hook["id"]) == wanted), None)
        if found is None:
            raise ApiError(404, "The target couldn't be found.")
        return found

    def _object_form(self, request: Request) -> dict[str, Any]:
        try:
            data = json.loads(request.state.raw_body or b"{}")
        except ValueError as exc:
            raise ApiError(422, f"invalid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise ApiError(422, "expected a JSON object")
        return data

    def create_status(self, request: Request, token: Token | None) -> Response:
        repo = self._repo(request)
        if token is None:
            raise ApiError(401, "token is required")
        form = self._form(request)
        sha = repo.resolve(request.path_params["sha"])
        if sha is None:  # GetCommit fails inside CreateCommitStatus: Gitea answers 500, not 404
            raise ApiError(500, "")
        row = self._insert(repo, sha, form, token)
        return JSONResponse(row, status_code=201)

    def _form(self, request: Request) -> dict[str, str]:
        try:
            data = json.loads(request.state.raw_body or b"{}")
        except ValueError as exc:
            raise ApiError(422, f"invalid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise ApiError(422, "expected a JSON object")
        # Gitea does not validate state; it and the text fields are stored as sent, trimmed.
        return {key: str(data.get(key) or "").strip() for key in ("state", "target_url", "description", "context")}

    def _insert(self, repo: Repo, sha: str, form: dict[str, str], token: Token) -> dict[str, Any]:
        rows = self.world.rows.setdefault((repo.full_name, sha), [])
        now = datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")
        row = {"id": len(rows) + 1,  # Gitea answers the per-commit index, not the table's row id
               "status": form["state"], "target_url": form["target_url"], "description": form["description"],
               "url": f"{self.world.root_url}api/v1/repos/{repo.full_name}/statuses/{sha}",
               "context": form["context"], "creator": _user(token.user, self.world),
               "created_at": now, "updated_at": now}
        rows.append(row)
        return row

    def list_statuses(self, request: Request, token: Token | None) -> Response:
        repo = self._repo(request)
        sha = request.path_params["sha"]
        return self._listing(request, repo, repo.resolve(sha) or sha)

    def list_by_ref(self, request: Request, token: Token | None) -> Response:
        repo = self._repo(request)
        ref = request.path_params["ref"]
        return self._listing(request, repo, repo.resolve(ref) or ref)

    def _listing(self, request: Request, repo: Repo, sha: str) -> Response:
        rows = list(self.world.rows.get((repo.full_name, sha), []))
        state = request.query_params.get("state", "").strip()
        if state in STATES[:5]:
            rows = [row for row in rows if row["status"] == state]
        key, descending = _SORTS.get(request.query_params.get("sort", "").strip(), ("created", True))
        rows.sort(key=lambda row: (row["created_at"] if key == "created" else 0, row["id"]), reverse=descending)
        page, limit = _paging(request)
        headers = {"X-Total-Count": str(len(rows))}
        return JSONResponse(rows[(page - 1) * limit: page * limit], headers=headers)

    def combined(self, request: Request, token: Token | None) -> Response:
        repo = self._repo(request)
        ref = request.path_params["ref"]
        sha = repo.resolve(ref) or ref
        latest = newest_per_context(self.world.rows.get((repo.full_name, sha), []))
        if not latest:  # Gitea answers an empty CombinedStatus, zero values and all
            return JSONResponse({"state": "", "sha": "", "total_count": 0, "statuses": None,
                                 "repository": None, "commit_url": "", "url": ""})
        api = f"{self.world.root_url}api/v1/repos/{repo.full_name}"
        return JSONResponse({
            "state": combined_state(row["status"] for row in latest), "sha": sha, "total_count": len(latest),
            "statuses": latest, "repository": {"id": repo.id, "name": repo.name, "full_name": repo.full_name,
                                                "owner": _user(repo.owner, self.world)},
            "commit_url": f"{api}/commits/{sha}", "url": f"{api}/commits/{sha}/status",
        }, headers={"X-Total-Count": str(len(latest))})


def _stamp() -> str:
    """Gitea's timestamps: whole seconds (timeutil.TimeStamp)."""
    return datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def _public_hook(hook: dict[str, Any]) -> dict[str, Any]:
    """services/webhook/general.go ToHook: config holds url and content_type, never the secret."""
    return {"id": hook["id"], "type": hook["type"], "branch_filter": hook["branch_filter"],
            "config": {"url": hook["url"], "content_type": hook["content_type"]}, "events": list(hook["events"]),
            "authorization_header": hook["authorization_header"], "active": hook["active"],
            "updated_at": hook["updated_at"], "created_at": hook["created_at"]}


def _paging(request: Request) -> tuple[int, int]:
    """1-based page; limit <= 0 means 30, capped at 50 ([api] DEFAULT_PAGING_NUM, MAX_RESPONSE_ITEMS)."""
    def number(name: str) -> int:
        value = request.query_params.get(name, "")
        return int(value) if value.lstrip("-").isdigit() else 0
    limit = number("limit")
    return max(1, number("page")), 30 if limit <= 0 else min(limit, 50)


def newest_per_context(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The newest row of every context, newest first (GetLatestCommitStatus: max(id) per context)."""
    latest: dict[str, dict[str, Any]] = {}
    for row in rows:  # rows are in insertion order, so the last one per context wins
        latest[row["context"]] = row
    return sorted(latest.values(), key=lambda row: row["id"], reverse=True)


def combined_state(states: Iterable[str]) -> str:
    """§3.3: failure if any error/failure, success if all success/warning/skipped, else pending."""
    states = list(states)
    if any(state in ("error", "failure") for state in states):
        return "failure"
    if all(state in ("success", "warning", "skipped") for state in states):
        return "success"
    return "pending"


def _listening_socket(port: int) -> socket.socket:
    # proto must be IPPROTO_TCP: asyncio sets TCP_NODELAY only then, and without it every
    # keep-alive request waits ~40 ms on delayed ACKs.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # rebinding after down() must not wait
    sock.bind(("127.0.0.1", port))
    sock.listen(64)
    return sock


class GiteaStandIn:
    """Runs the stand-in on 127.0.0.1:<free port> in a background thread."""

    def __init__(self, *, token: str = DEFAULT_TOKEN) -> None:
        self.world = World()
        self.token = token
        self.world.tokens = {token: Token("deployer-bot")}
        self.app = Starlette(routes=GiteaApp(self.world).routes())
        self.port = 0
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def up(self) -> None:
        """Start serving (again) on the same port."""
        if self._server is not None:
            return
        sock = _listening_socket(self.port)
        self.port = sock.getsockname()[1]
        self.world.root_url = f"{self.url}/"
        config = uvicorn.Config(self.app, log_level="warning", access_log=False, lifespan="off")
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="gitea-standin", daemon=True)
        thread.start()
        _wait_for(lambda: server.started or not thread.is_alive(), what="gitea stand-in start")
        if not server.started:
            raise RuntimeError(f"gitea stand-in did not start on port {self.port}")
        self._server, self._thread = server, thread

    def down(self) -> None:
        """Stop serving: the port is closed, so connections are refused, like a restarting Gitea."""
        if self._server is None or self._thread is None:
            return
        self._server.should_exit = True
        self._thread.join(10)
        self._server = self._thread = None

    stop = down

    def add_repo(self, owner: str, name: str, shas: Iterable[str], *, branches: dict[str, str] | None = None) -> Repo:
        with self.world.lock:
            repo = Repo(len(self.world.repos) + 1, owner, name, [sha.lower() for sha in shas], dict(branches or {}))
            self.world.repos[repo.full_name.lower()] = repo
            return repo

    def add_token(self, token: str, user: str, scopes: Iterable[str] = ("all",), *, admin: bool = True) -> None:
        with self.world.lock:
            self.world.tokens[token] = Token(user, frozenset(scopes), admin)

    def add_org(self, name: str) -> None:
        with self.world.lock:
            self.world.orgs.add(name)

    def hooks(self, scope: str) -> list[dict[str, Any]]:
        """Every hook of ``scope`` (``repos/owner/name`` or ``orgs/org``, lower case) as stored, secret included."""
        with self.world.lock:
            return [dict(hook) for hook in self.world.hooks.get(scope, [])]

    def edit_hook_by_hand(self, scope: str, hook_id: int, **changes: Any) -> None:
        """What a person does in the web UI (the secret too); ``updated_at`` moves, as Gitea's does."""
        with self.world.lock:
            hook = next(hook for hook in self.world.hooks[scope] if hook["id"] == hook_id)
            hook.update(changes)
            hook["updated_at"] = _stamp()

    def statuses(self, repo: str, sha: str) -> list[dict[str, Any]]:
        """Every status of ``repo``@``sha``, oldest first."""
        with self.world.lock:
            return list(self.world.rows.get((repo, sha), []))

    def requests(self, method: str | None = None) -> list[SeenRequest]:
        with self.world.lock:
            return [seen for seen in self.world.requests if method is None or seen.method == method]

    def fail_next(self, n: int, status: int = 503) -> None:
        """Answer the next ``n`` requests (any route) with ``status``."""
        with self.world.lock:
            self.world.failures.extend([status] * n)

    def degrade(self, *, failing: int | None = None, delay: float = 0.0) -> None:
        """Answer every request with ``failing``, or only after ``delay`` seconds; no arguments: healthy again."""
        with self.world.lock:
            self.world.failing, self.world.delay = failing, delay

    def reset(self) -> None:
        """Forget repos, statuses, requests, extra tokens and injected failures."""
        with self.world.lock:
            self.world.repos.clear()
            self.world.rows.clear()
            self.world.requests.clear()
            self.world.failures.clear()
            self.world.failing, self.world.delay = None, 0.0
            self.world.orgs.clear()
            self.world.hooks.clear()
            self.world.tokens = {self.token: Token("deployer-bot")}


def _wait_for(condition: Callable[[], bool], *, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} took longer than {timeout}s")
        time.sleep(0.005)
