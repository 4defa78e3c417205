"""Gitea REST adapter: server version and commit statuses over httpx.

``GiteaClient`` turns transport and HTTP failures into ``GiteaError`` (transient)
or ``GiteaRejected`` (stalled); no message carries the token or URL credentials. ``StatusReporter``
hands statuses to one background thread, so a slow or absent Gitea never blocks
or fails a deploy. Gitea's behaviour: shared gitea/WEBHOOKS.md §3.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any
from urllib.parse import quote, urlsplit

import httpx

from deployer.errors import Reason, StalledError, TransientError
from deployer.model.status import Outcome
from deployer.safety import is_sha_prefix, scrub, strip_credentials

log = logging.getLogger("deployer.gitea")

# Gitea stores the description as TEXT (models/git/commit_status.go), so it sets no
# limit; 140 is GitHub's limit and about what Gitea's status tooltip shows in one line.
DESCRIPTION_LIMIT = 140
_HINTS = {
    401: "the token is missing, wrong or expired; check [gitea] token_file",
    403: "the token lacks the write:repository scope or write access to the repository",
    404: "no such repository, or the token cannot see it",
    422: "gitea refused the request's fields",
}
# Reasons where the deployer, not the commit, is at fault: Gitea shows "error", not "failure".
_DEPLOYER_FAULTS = frozenset({
    Reason.RUNTIME_UNAVAILABLE.value, Reason.INTERNAL_ERROR.value,
    Reason.SOURCE_FETCH_FAILED.value, Reason.INTERRUPTED.value,
})


class CommitState(StrEnum):
    """States Gitea understands; it does not validate them itself (``skipped`` needs 1.25+)."""

    PENDING = "pending"
    SUCCESS = "success"
    ERROR = "error"
    FAILURE = "failure"
    WARNING = "warning"


class GiteaError(TransientError):
    """Gitea unreachable, timed out, or answered 5xx/429: retry with backoff."""

    def __init__(self, message: str, *, status_code: int | None = None, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.retry_after = retry_after


class GiteaRejected(StalledError):
    """Gitea refused the request (401/403/404/422, a redirect, not an API): retrying cannot help."""

    def __init__(self, message: str, *, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code


def state_for(outcome: Outcome, reason: str) -> CommitState:
    """The commit state for an attempt's outcome: ``failure`` blames the commit, ``error`` the deployer."""
    if outcome is Outcome.SUCCEEDED:
        return CommitState.SUCCESS
    if outcome is Outcome.RUNNING:
        return CommitState.PENDING
    if outcome is Outcome.INTERRUPTED or reason in _DEPLOYER_FAULTS:
        return CommitState.ERROR
    return CommitState.FAILURE


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

    def _repo_path(self, repo: str, *rest: str) -> str:
        owner, name = split_repo(repo)
        return "/".join(["/repos", quote(owner, safe=""), quote(name, safe=""), *rest])

    def _request(self, method: str, path: str, *, auth: bool, json: object = None,
                 params: dict[str, Any] | None = None) -> httpx.Response:
        headers = {"Authorization": f"token {self._token}"} if auth and self._token else {}
        try:
            response = self._http.request(method, path, json=json, params=params, headers=headers)
        except httpx.TransportError as exc:
            raise GiteaError(self._scrub(f"gitea unreachable at {self.url}: {type(exc).__name__} {exc}")) from exc
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


@dataclass
class _Job:
    repo: str
    sha: str
    context: str
    state: CommitState
    description: str
    target_url: str
    tries: int = 0

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.repo, self.sha, self.context)

    def __str__(self) -> str:
        return f"{self.context}={self.state.value} on {self.repo}@{self.sha[:7]}"


@dataclass
class _Backoff:
    first: float
    maximum: float
    jitter: float
    random: Callable[[], float] = field(default=random.random)

    def delay(self, tries: int, retry_after: float | None = None) -> float:
        """Exponential, capped, shortened by up to ``jitter`` so reporters do not retry in step."""
        base = min(self.maximum, self.first * 2.0 ** max(0, tries - 1))
        delay = base * (1 - self.jitter * self.random())
        return max(delay, min(retry_after or 0.0, self.maximum))  # honour Gitea's Retry-After


class StatusReporter:
    """Sends commit statuses from one background thread; ``report`` never blocks or raises for Gitea.

    Newest wins: a status for the same (repo, sha, context) replaces a queued older
    one, so after an outage Gitea shows the final state, not a replay of every step.
    A transient failure holds the whole queue (one Gitea: if it is down for one
    status it is down for all) and retries the failed status first, up to
    ``max_tries``; a rejection is logged once and dropped.
    """

    def __init__(self, client: GiteaClient | None, *, context_prefix: str = "deployer", public_url: str = "",
                 max_tries: int = 6, first_delay: float = 1.0, max_delay: float = 60.0, jitter: float = 0.2,
                 max_queue: int = 1000, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] | None = None) -> None:
        self._client = client
        self._prefix = context_prefix.strip("/")
        self._public_url = public_url.rstrip("/")
        self._max_tries = max(1, max_tries)
        self._backoff = _Backoff(first_delay, max_delay, jitter)
        self._max_queue = max_queue
        self._clock = clock
        self._sleep = sleep
        self._queue: OrderedDict[tuple[str, str, str], _Job] = OrderedDict()
        self._inflight: _Job | None = None
        self._cond = threading.Condition()
        self._wake = threading.Event()  # interrupts a backoff pause on stop()
        self._thread: threading.Thread | None = None
        self._deadline: float | None = None  # set by stop(): deliver what is queued until then

    @property
    def enabled(self) -> bool:
        return self._client is not None

    def report(self, repo: str, sha: str, service: str, state: CommitState | str, description: str) -> None:
        """Queue a status for ``service`` at ``sha``; returns at once. A no-op without a client.

        Only a state Gitea does not know raises (``ValueError``): that is a bug in the caller.
        """
        if self._client is None:
            return
        job = _Job(repo, sha, f"{self._prefix}/{service}", CommitState(state), description, self._target(service))
        with self._cond:
            self._queue.pop(job.key, None)  # the newer status supersedes a queued older one
            dropped = self._queue.popitem(last=False)[1] if len(self._queue) >= self._max_queue else None
            self._queue[job.key] = job
            self._cond.notify_all()
        if dropped is not None:
            log.warning("gitea status queue full (%d): dropped the oldest, %s", self._max_queue, dropped)

    def _target(self, service: str) -> str:
        return f"{self._public_url}/services/{quote(service, safe='')}" if self._public_url else ""

    def start(self) -> None:
        if self._client is None or (self._thread is not None and self._thread.is_alive()):
            return
        self._deadline = None
        self._wake.clear()
        self._thread = threading.Thread(target=self._run, name="gitea-status", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Deliver what is queued for up to ``timeout`` seconds without further retries, then end the worker."""
        with self._cond:
            self._deadline = self._clock() + timeout
            self._cond.notify_all()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout + 1.0)  # + one request's grace; the thread is a daemon anyway
        left = self.pending_count()
        if left:
            log.warning("gitea: %d commit status(es) not delivered before shutdown", left)

    def pending_count(self) -> int:
        with self._cond:
            return len(self._queue) + (self._inflight is not None)

    def wait_idle(self, timeout: float) -> bool:
        """True once nothing is queued or in flight (for tests and shutdown)."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._queue and self._inflight is None, timeout)

    def _stopping(self) -> bool:
        return self._deadline is not None

    def _run(self) -> None:
        while (job := self._next()) is not None:
            try:
                self._deliver(job)
            except Exception:  # a bug here must not kill the only worker and silence every status
                log.exception("gitea: unexpected error sending %s; dropped", job)
            finally:
                with self._cond:
                    self._inflight = None
                    self._cond.notify_all()

    def _next(self) -> _Job | None:
        with self._cond:
            self._cond.wait_for(lambda: bool(self._queue) or self._stopping())
            if not self._queue or (self._deadline is not None and self._clock() >= self._deadline):
                return None
            self._inflight = self._queue.popitem(last=False)[1]
            return self._inflight

    def _deliver(self, job: _Job) -> None:
        assert self._client is not None  # the worker only runs with a client
        try:
            self._client.set_status(job.repo, job.sha, job.state, context=job.context,
                                    description=job.description, target_url=job.target_url)
        except GiteaRejected as exc:
            log.warning("gitea refused commit status %s; dropped: %s", job, exc)
        except GiteaError as exc:
            self._retry(job, exc)

    def _retry(self, job: _Job, exc: GiteaError) -> None:
        job.tries += 1
        if job.tries >= self._max_tries or self._stopping():
            log.warning("gitea: gave up on commit status %s after %d tries: %s", job, job.tries, exc)
            return
        delay = self._backoff.delay(job.tries, exc.retry_after)
        with self._cond:
            self._inflight = None
            if job.key not in self._queue:  # else a newer status replaced it while it was in flight
                self._queue[job.key] = job
                self._queue.move_to_end(job.key, last=False)  # retried first: keep the order per commit
        (log.info if job.tries == 1 else log.debug)("%s; retrying %s in %.1fs", exc, job, delay)
        self._pause(delay)

    def _pause(self, delay: float) -> None:
        if self._sleep is not None:
            self._sleep(delay)
        else:
            self._wake.wait(delay)
