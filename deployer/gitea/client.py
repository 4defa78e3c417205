"""Gitea REST adapter: server version, the token's user, repositories, webhooks and commit statuses over httpx.

``GiteaClient`` turns transport and HTTP failures into ``GiteaError`` (transient)
or ``GiteaRejected`` (stalled); no message carries the token or URL credentials.
Gitea's behaviour: shared gitea/WEBHOOKS.md §3.
"""

from __future__ import annotations

import socket
import ssl
from enum import StrEnum
from typing import Any
from urllib.parse import quote, urlsplit

import httpx

from deployer.errors import StalledError, TransientError
from deployer.safety import is_sha_prefix, scrub, strip_credentials

# Gitea stores the description as TEXT (models/git/commit_status.go), so it sets no
# limit; 140 is GitHub's limit and about what Gitea's status tooltip shows in one line.
DESCRIPTION_LIMIT = 140
_HINTS = {
    401: "the token is missing, wrong or expired; check [gitea] token_file",
    403: "the token lacks the write:repository scope or write access to the repository",
    404: "no such repository, or the token cannot see it",
    422: "gitea refused the request's fields",
}


class CommitState(StrEnum):
    """States Gitea understands; it does not validate them itself (``skipped`` needs 1.25+)."""

    PENDING = "pending"
    SUCCESS = "success"
    ERROR = "error"
    FAILURE = "failure"
    WARNING = "warning"


class GiteaError(TransientError):
    """Gitea unreachable, timed out, or answered 5xx/429: retry with backoff.

    ``kind`` says why it could not be reached, from the exception's type: ``dns``, ``tls``,
    ``refused``, ``timeout`` (empty when Gitea answered, or for anything else).
    """

    def __init__(self, message: str, *, status_code: int | None = None, retry_after: float | None = None,
                 kind: str = "") -> None:
        super().__init__(message)
        self.status_code = status_code
        self.retry_after = retry_after
        self.kind = kind


_UNREACHABLE_HINTS = {
    "dns": "the host name does not resolve; check [gitea] url",
    "tls": "the TLS handshake failed (certificate not trusted, or http spoken to https); check [gitea] url",
    "refused": "nothing listens there; is Gitea running, and is the port right?",
    "timeout": "no answer in time; a firewall, or the wrong host?",
}


def unreachable_kind(exc: BaseException) -> str:
    """Why a request could not be sent, read from the exception chain's types (never from its text)."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, socket.gaierror):
            return "dns"
        if isinstance(seen, ssl.SSLError):
            return "tls"
        if isinstance(seen, ConnectionRefusedError):
            return "refused"
        if isinstance(seen, httpx.TimeoutException | TimeoutError):
            return "timeout"
        seen = seen.__cause__ or seen.__context__
    return ""


class GiteaRejected(StalledError):
    """Gitea refused the request (401/403/404/422, a redirect, not an API): retrying cannot help."""

    def __init__(self, message: str, *, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code


def description_text(text: str) -> str:
    """Trimmed like Gitea does, then capped at ``DESCRIPTION_LIMIT`` characters."""
    text = " ".join(text.split())  # one line: newlines in a reason would wrap the tooltip
    if len(text) <= DESCRIPTION_LIMIT:
        return text
    return text[: DESCRIPTION_LIMIT - 1].rstrip() + "…"


def split_repo(repo: str) -> tuple[str, str]:
    owner, sep, name = repo.strip().removesuffix(".git").partition("/")
    if not sep or not owner or not name or "/" in name:
        raise ValueError(f"repository must be OWNER/NAME (got {repo!r})")
    return owner, name


def _check_sha(sha: str) -> str:
    lowered = sha.lower()  # accepted in either case, sent as git prints it
    if not is_sha_prefix(lowered, shortest=7):
        raise ValueError(f"commit must be 7 to 64 hex digits (got {sha!r})")
    return lowered


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After", "")
    return float(value) if value.strip().isdigit() else None


def _gitea_message(response: httpx.Response) -> str:
    """Gitea's own ``{"message": …}`` explanation, if it sent one."""
    try:
        body = response.json()
    except ValueError:
        return ""
    message = body.get("message") if isinstance(body, dict) else None
    return " ".join(str(message).split())[:200] if message else ""


class GiteaClient:
    """A thin synchronous client for the few Gitea endpoints the deployer uses."""

    def __init__(self, base_url: str, token: str | None, *, timeout: float = 5.0,
                 transport: httpx.BaseTransport | None = None) -> None:
        parts = urlsplit(base_url.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"gitea url must be http(s)://HOST[:PORT][/PATH] (got {strip_credentials(base_url)!r})")
        # A token in the URL (https://user:TOKEN@host) is used as the token, never sent as Basic auth.
        self._token = (token or parts.password or "").strip() or None
        self.url = strip_credentials(base_url.strip()).rstrip("/").removesuffix("/api/v1")
        self._http = httpx.Client(base_url=self.url + "/api/v1", timeout=timeout, transport=transport,
                                  headers={"Accept": "application/json", "User-Agent": "deployer"})

    def __repr__(self) -> str:
        return f"GiteaClient({self.url!r}, token={'***' if self._token else None})"

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> GiteaClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def version(self) -> str:
        """Gitea's version, e.g. ``1.26.0``; needs no token."""
        body = self._json(self._request("GET", "/version", auth=False), "GET /version")
        if not isinstance(body, dict) or not isinstance(body.get("version"), str):
            raise GiteaRejected(f"{self.url}/api/v1/version did not answer a Gitea version")
        return str(body["version"])

    def set_status(self, repo: str, sha: str, state: CommitState | str, *, context: str, description: str,
                   target_url: str = "") -> None:
        """Add a commit status; the newest one per ``context`` is what Gitea shows."""
        state = CommitState(state)  # Gitea stores any string, so an invalid state must stop here
        if self._token is None:
            raise GiteaRejected("no gitea token configured: set [gitea] token_file or DEPLOYER_GITEA_TOKEN")
        body = {"state": state.value, "target_url": target_url.strip(), "context": context.strip(),
                "description": description_text(description)}
        self._request("POST", self._repo_path(repo, "statuses", _check_sha(sha)), auth=True, json=body)

    def statuses(self, repo: str, sha: str, *, limit: int = 50) -> list[dict[str, Any]]:
        """The first page of statuses of ``sha``, newest first (Gitea caps ``limit`` at 50)."""
        path = self._repo_path(repo, "statuses", _check_sha(sha))
        body = self._json(self._request("GET", path, auth=True, params={"limit": limit}), f"GET {path}")
        if not isinstance(body, list):
            raise GiteaRejected(f"GET {path}: expected a list of statuses")
        return [item for item in body if isinstance(item, dict)]

    def user(self) -> dict[str, Any]:
        """The user the token authenticates (``GET /user``)."""
        if self._token is None:
            raise GiteaRejected("no gitea token configured: set [gitea] token_file or DEPLOYER_GITEA_TOKEN",
                                status_code=401)
        return self._object(self._request("GET", "/user", auth=True), "GET /user")

    def repository(self, repo: str) -> dict[str, Any]:
        """``GET /repos/{owner}/{repo}``: 404 when it does not exist or the token cannot see it."""
        path = self._repo_path(repo)
        return self._object(self._request("GET", path, auth=True), f"GET {path}")

    def owner(self, name: str) -> dict[str, Any]:
        """``GET /users/{name}``: a user or an organisation (Gitea answers both there)."""
        path = f"/users/{quote(name, safe='')}"
        return self._object(self._request("GET", path, auth=True), f"GET {path}")

    def hooks(self, scope: str) -> list[dict[str, Any]]:
        """Every webhook of ``scope`` (``repos/OWNER/NAME`` or ``orgs/ORG``), page by page until an empty one."""
        found: list[dict[str, Any]] = []
        for page in range(1, 100):
            path = self._hooks_path(scope)
            body = self._json(self._request("GET", path, auth=True, params={"page": page, "limit": 50}),
                              f"GET {path}")
            if not isinstance(body, list):
                raise GiteaRejected(f"GET {path}: expected a list of hooks")
            if not body:
                break
            found.extend(item for item in body if isinstance(item, dict))
        return found

    def create_hook(self, scope: str, hook: dict[str, Any]) -> dict[str, Any]:
        path = self._hooks_path(scope)
        return self._object(self._request("POST", path, auth=True, json=hook), f"POST {path}")

    def edit_hook(self, scope: str, hook_id: int, changes: dict[str, Any]) -> dict[str, Any]:
        path = f"{self._hooks_path(scope)}/{int(hook_id)}"
        return self._object(self._request("PATCH", path, auth=True, json=changes), f"PATCH {path}")

    def delete_hook(self, scope: str, hook_id: int) -> None:
        self._request("DELETE", f"{self._hooks_path(scope)}/{int(hook_id)}", auth=True)

    def _hooks_path(self, scope: str) -> str:
        kind, _, name = scope.partition("/")
        if kind == "repos":
            return self._repo_path(name, "hooks")
        if kind == "orgs" and name and "/" not in name:
            return f"/orgs/{quote(name, safe='')}/hooks"
        raise ValueError(f"hook scope must be repos/OWNER/NAME or orgs/ORG (got {scope!r})")

    def _object(self, response: httpx.Response, what: str) -> dict[str, Any]:
        body = self._json(response, what)
        if not isinstance(body, dict):
            raise GiteaRejected(f"gitea {what}: expected a JSON object")
        return body

    def _repo_path(self, repo: str, *rest: str) -> str:
        owner, name = split_repo(repo)
        return "/".join(["/repos", quote(owner, safe=""), quote(name, safe=""), *rest])

    def _request(self, method: str, path: str, *, auth: bool, json: object = None,
                 params: dict[str, Any] | None = None) -> httpx.Response:
        headers = {"Authorization": f"token {self._token}"} if auth and self._token else {}
        try:
            response = self._http.request(method, path, json=json, params=params, headers=headers)
        except httpx.TransportError as exc:
            kind = unreachable_kind(exc)
            hint = f"; {_UNREACHABLE_HINTS[kind]}" if kind else ""
            raise GiteaError(self._scrub(f"gitea unreachable at {self.url}: {type(exc).__name__} {exc}{hint}"),
                             kind=kind) from exc
        self._check(response, f"{method} {path}")
        return response

    def _check(self, response: httpx.Response, what: str) -> None:
        code = response.status_code
        if response.is_success:
            return
        detail = _gitea_message(response)
        detail = self._scrub(f" ({detail})" if detail else "")
        if code == 429 or code >= 500:
            raise GiteaError(f"gitea {what}: answered {code}{detail}", status_code=code,
                             retry_after=_retry_after(response))
        if response.is_redirect:
            where = strip_credentials(response.headers.get("Location", "?"))
            raise GiteaRejected(f"gitea {what}: redirected to {where}; configure gitea's final URL",
                                status_code=code)
        hint = _HINTS.get(code, "gitea refused the request")
        raise GiteaRejected(f"gitea {what}: {code}, {hint}{detail}", status_code=code)

    def _json(self, response: httpx.Response, what: str) -> Any:
        try:
            return response.json()
        except ValueError:
            raise GiteaRejected(f"gitea {what}: answer is not JSON; is {self.url} Gitea's root URL?") from None

    def _scrub(self, text: str) -> str:
        # Belt and braces: nothing we build holds the token, but an echoed error might.
        text = scrub(text)
        return text.replace(self._token, "***") if self._token else text
