"""Commit statuses for Gitea: which state an attempt's outcome becomes, and the background reporter.

``StatusReporter`` hands statuses to one background thread, so a slow or absent Gitea
never blocks or fails a deploy; newest wins per (repository, commit, context), transient
failures are retried with backoff until Gitea is back (for up to ``max_age``), rejections
dropped. Gitea's behaviour: shared gitea/WEBHOOKS.md §3.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import quote

from deployer.errors import Reason
from deployer.gitea.client import CommitState, GiteaClient, GiteaError, GiteaRejected
from deployer.model.events import AttemptFinished, AttemptStarted, CommitRefused, Event
from deployer.model.status import Outcome

# The name it had when the package was one module: operators (and tests) filter on it.
log = logging.getLogger("deployer.gitea")

# Reasons where the deployer, not the commit, is at fault: Gitea shows "error", not "failure".
_DEPLOYER_FAULTS = frozenset({
    Reason.RUNTIME_UNAVAILABLE.value, Reason.INTERNAL_ERROR.value,
    Reason.SOURCE_FETCH_FAILED.value, Reason.INTERRUPTED.value, Reason.GATEWAY_FAILED.value,
})


def state_for(outcome: Outcome, reason: str) -> CommitState:
    """The commit state for an attempt's outcome: ``failure`` blames the commit, ``error`` the deployer."""
    if outcome is Outcome.SUCCEEDED:
        return CommitState.SUCCESS
    if outcome is Outcome.RUNNING:
        return CommitState.PENDING
    if outcome is Outcome.INTERRUPTED or reason in _DEPLOYER_FAULTS:
        return CommitState.ERROR
    return CommitState.FAILURE


@dataclass
class _Job:
    repo: str
    sha: str
    context: str
    state: CommitState
    description: str
    target_url: str
    queued_at: float
    tries: int = 0

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.repo, self.sha, self.context)

    def __str__(self) -> str:
        return f"{self.context}={self.state.value} on {self.repo}@{self.sha[:7]}"


@dataclass(frozen=True)
class Retry:
    """How long a status is retried: until it is ``max_age`` seconds old (or, when given, after
    ``max_tries``), waiting ``first_delay`` doubling up to ``max_delay``, shortened by up to ``jitter``."""

    max_tries: int | None = None
    max_age: float = 3600.0
    first_delay: float = 1.0
    max_delay: float = 60.0
    jitter: float = 0.2


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
    status it is down for all) and retries the failed status first, until it is
    ``max_age`` seconds old (an outage of any length short of that loses nothing:
    counting tries would drop each status ~30 s into an outage) or, when given,
    after ``max_tries``; a rejection is logged once and dropped.
    """

    def __init__(self, client: GiteaClient | None, *, context_prefix: str = "deployer", public_url: str = "",
                 retry: Retry | None = None, max_queue: int = 1000, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] | None = None) -> None:
        retry = retry or Retry()
        self._client = client
        self._prefix = context_prefix.strip("/")
        self._public_url = public_url.rstrip("/")
        self._max_tries = None if retry.max_tries is None else max(1, retry.max_tries)
        self._max_age = retry.max_age
        self._backoff = _Backoff(retry.first_delay, retry.max_delay, retry.jitter)
        self._max_queue = max_queue
        self._clock = clock
        self._sleep = sleep
        self._queue: OrderedDict[tuple[str, str, str], _Job] = OrderedDict()
        self._inflight: _Job | None = None
        self._cond = threading.Condition()
        self._wake = threading.Event()  # interrupts a backoff pause on stop()
        self._thread: threading.Thread | None = None
        self._deadline: float | None = None  # set by stop(): deliver what is queued until then
        self._failing: str | None = None  # the last transient failure, until a status gets through

    @property
    def enabled(self) -> bool:
        return self._client is not None

    def report(self, repo: str, sha: str, service: str, state: CommitState | str, description: str) -> None:
        """Queue a status for ``service`` at ``sha``; returns at once. A no-op without a client.

        Only a state Gitea does not know raises (``ValueError``): that is a bug in the caller.
        """
        if self._client is None:
            return
        job = _Job(repo, sha, f"{self._prefix}/{service}", CommitState(state), description, self._target(service),
                   self._clock())
        with self._cond:
            self._queue.pop(job.key, None)  # the newer status supersedes a queued older one
            dropped = self._queue.popitem(last=False)[1] if len(self._queue) >= self._max_queue else None
            self._queue[job.key] = job
            self._cond.notify_all()
        if dropped is not None:
            log.warning("gitea status queue full (%d): dropped the oldest, %s", self._max_queue, dropped)

    def _target(self, service: str) -> str:
        return f"{self._public_url}/services/{quote(service, safe='')}" if self._public_url else ""

    def on_event(self, event: Event) -> None:
        """Attempts become commit statuses, for sources that are Gitea repositories (named ``owner/repo``)."""
        if not isinstance(event, AttemptStarted | AttemptFinished | CommitRefused) or "/" not in event.source:
            return
        if isinstance(event, AttemptStarted):
            self.report(event.source, event.sha, event.service, CommitState.PENDING, f"deploying {event.sha[:7]}")
        elif isinstance(event, AttemptFinished):
            self.report(event.source, event.sha, event.service, state_for(event.outcome, event.reason),
                        f"{event.reason}: {event.message}")
        else:
            self.report(event.source, event.sha, event.service, CommitState.FAILURE, f"{event.reason}: {event.message}")

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

    @property
    def problem(self) -> str | None:
        """For ``/healthz``: why statuses wait (Gitea failing), or None while they get through."""
        with self._cond:
            failing, waiting = self._failing, len(self._queue) + (self._inflight is not None)
        if failing is None or not waiting:
            return None
        return f"{waiting} commit status(es) wait for Gitea ({failing}); retried with backoff, deploys go on"

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
            self._failing = None
        except GiteaRejected as exc:
            self._failing = None  # Gitea answered: it is up
            log.warning("gitea refused commit status %s; dropped: %s", job, exc)
        except GiteaError as exc:
            self._retry(job, exc)

    def _retry(self, job: _Job, exc: GiteaError) -> None:
        job.tries += 1
        self._failing = str(exc)
        too_old = self._clock() - job.queued_at >= self._max_age
        if too_old or (self._max_tries is not None and job.tries >= self._max_tries) or self._stopping():
            log.warning("gitea: gave up on commit status %s after %d tries in %.0fs: %s", job, job.tries,
                        self._clock() - job.queued_at, exc)
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
