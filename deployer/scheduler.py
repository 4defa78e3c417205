"""When reconciles run: a coalescing work queue, and the periodic jobs that feed it.

Webhooks, the CLI and APScheduler only *request* a pass for a source. Requests
for a source that is already waiting merge into one; a source never runs twice
at once; scheduled jobs never pile up (``max_instances=1``, coalesced, jittered).
Each request answers a ``Future`` of the pass that serves it (merged requests share
one), so an operator's action can report that pass without a thread waiting for it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from apscheduler.schedulers.background import BackgroundScheduler

from deployer.model.status import Trigger

log = logging.getLogger(__name__)
R = TypeVar("R")  # what a pass answers

# When requests merge, the stronger trigger names the pass.
_STRENGTH = {Trigger.SCHEDULE: 0, Trigger.DRIFT: 0, Trigger.POLL: 1, Trigger.STARTUP: 2, Trigger.WEBHOOK: 3,
             Trigger.CLI: 4, Trigger.ROLLBACK: 5}


@dataclass
class Request:
    source: str
    trigger: Trigger
    fetch: bool
    retry: frozenset[str] = frozenset()  # services whose held failed spec an operator asked to try again

    def merge(self, other: Request) -> None:
        self.fetch = self.fetch or other.fetch
        self.retry = self.retry | other.retry
        if _STRENGTH[other.trigger] > _STRENGTH[self.trigger]:
            self.trigger = other.trigger


class WorkQueue(Generic[R]):
    """Per-source coalescing queue served by a few worker threads; ``handler`` runs one pass."""

    def __init__(self, handler: Callable[[Request], R], *, workers: int = 2) -> None:
        self._handler = handler
        self._workers = workers
        self._pending: OrderedDict[str, Request] = OrderedDict()
        self._answers: dict[str, Future[R]] = {}  # a pending source -> what its pass will answer
        self._running: set[str] = set()
        self._cond = threading.Condition()
        self._threads: list[threading.Thread] = []
        self._stopping = False
        self.completed = 0

    def request(self, source: str, trigger: Trigger, *, fetch: bool = True,
                retry: frozenset[str] = frozenset()) -> Future[R]:
        """Ask for a pass; the answer completes with that pass's result (cancelled if the queue stops first,
        failed if the pass crashed). A request merging into one already waiting shares its pass and answer."""
        with self._cond:
            incoming = Request(source, trigger, fetch, retry)
            if source in self._pending:
                self._pending[source].merge(incoming)
            elif self._stopping:
                refused: Future[R] = Future()
                refused.cancel()
                return refused
            else:
                self._pending[source] = incoming
                self._answers[source] = Future()
            self._cond.notify()
            return self._answers[source]

    def depth(self) -> int:
        with self._cond:
            return len(self._pending) + len(self._running)

    def start(self) -> None:
        for index in range(self._workers):
            thread = threading.Thread(target=self._work, name=f"reconcile-{index}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self, timeout: float = 30.0) -> None:
        """Stop taking work; let the passes already running finish (up to ``timeout``)."""
        with self._cond:
            self._stopping = True
            self._pending.clear()
            dropped, self._answers = list(self._answers.values()), {}
            self._cond.notify_all()
        for answer in dropped:  # outside the lock: their callbacks run now, in this thread
            answer.cancel()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def alive(self) -> bool:
        return bool(self._threads) and all(thread.is_alive() for thread in self._threads)

    def wait_idle(self, timeout: float) -> bool:
        """Block until nothing is pending or running (tests and the CLI use this)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._pending or self._running:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def _next(self) -> tuple[Request, Future[R]] | None:
        with self._cond:
            while not self._stopping:
                ready = next((name for name in self._pending if name not in self._running), None)
                if ready is not None:
                    self._running.add(ready)
                    return self._pending.pop(ready), self._answers.pop(ready)
                self._cond.wait()
            return None

    def _work(self) -> None:
        while (next_up := self._next()) is not None:
            item, answer = next_up
            followed = answer.set_running_or_notify_cancel()  # False: its caller gave up; the pass runs all the same
            try:
                result = self._handler(item)
                if followed:
                    answer.set_result(result)  # the callbacks (an operation's item ending) run here
            except Exception as exc:
                log.exception("pass for source %s failed", item.source)
                if followed:
                    answer.set_exception(exc)
            finally:
                with self._cond:
                    self._running.discard(item.source)
                    self.completed += 1
                    self._cond.notify_all()


class Scheduler:
    """Periodic reconcile (no fetch, heals drift), poll (fetch, catches lost webhooks) and health probes.

    Probes have their own job: a pass lists runtimes and acts, it does not probe
    every steady service (``probe`` runs each second and probes only those due).
    """

    def __init__(self, sources: Callable[[], list[str]], queue: WorkQueue[Any], *, interval: float,
                 poll_interval: float, probe: Callable[[], object] | None = None, probe_every: float = 1.0) -> None:
        self._sources = sources
        self._queue = queue
        self._scheduler = BackgroundScheduler(timezone="UTC")
        self._interval = interval
        self._poll_interval = poll_interval
        self._probe = probe
        self._probe_every = probe_every

    def start(self) -> None:
        self._add_job(self.reconcile_all, self._interval, "reconcile")
        self._add_job(self.poll_all, self._poll_interval, "poll")
        if self._probe is not None:
            self._scheduler.add_job(self._probe, "interval", seconds=self._probe_every, id="probe", max_instances=1,
                                    coalesce=True, misfire_grace_time=max(1, int(self._probe_every)))
        self._scheduler.start()

    def _add_job(self, func: Callable[[], None], seconds: float, job_id: str) -> None:
        self._scheduler.add_job(
            func, "interval", seconds=seconds, id=job_id, max_instances=1, coalesce=True,
            jitter=max(0.0, min(seconds * 0.1, 5.0)), misfire_grace_time=max(1, int(seconds)),
        )

    def stop(self) -> None:
        if self._scheduler.running:
            self._scheduler.shutdown(wait=False)

    def alive(self) -> bool:
        return bool(self._scheduler.running)

    def reconcile_all(self) -> None:
        for name in self._sources():
            self._queue.request(name, Trigger.SCHEDULE, fetch=False)

    def poll_all(self, trigger: Trigger = Trigger.POLL) -> None:
        for name in self._sources():
            self._queue.request(name, trigger, fetch=True)
