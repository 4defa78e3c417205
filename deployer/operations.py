"""Long operator actions run apart from the request that asked: a request gets an operation id at once (202).

An ``Operation`` is one action over one or more services (or sources); each is an ``Item``. Work
done here runs on a bounded pool (``workers`` at a time): one service's failure never stops the
others. Work done elsewhere (a pass of the work queue) is *tracked*: its item ends when its future
does, through a callback, holding no thread while it waits. The caller follows
``GET /api/operations/{id}`` until it is ``done``. Operations live in memory (the newest ``keep``):
what they did is also recorded as attempts in the store, which outlives them.
"""

from __future__ import annotations

import functools
import itertools
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from enum import StrEnum
from typing import Protocol, TypeVar

from deployer.errors import DeployerError

log = logging.getLogger(__name__)


T = TypeVar("T")


class ItemKind(StrEnum):
    """What an item's name names: a service, or a source (a pass over all of it)."""

    SERVICE = "service"
    SOURCE = "source"


class Result(Protocol):
    @property
    def ok(self) -> bool: ...
    @property
    def outcome(self) -> str: ...
    @property
    def message(self) -> str: ...
    @property
    def attempt(self) -> int | None: ...
    @property
    def revision(self) -> int | None: ...


@dataclass(frozen=True)
class ItemResult:
    """A result made here (a tracked future that failed), or by a caller that has no result type of its own."""

    ok: bool
    outcome: str
    message: str
    attempt: int | None = None
    revision: int | None = None


@dataclass(frozen=True)
class Item:
    name: str
    state: str = "queued"  # queued, running, done
    ok: bool | None = None
    outcome: str = ""
    message: str = ""
    attempt: int | None = None
    revision: int | None = None
    kind: ItemKind = ItemKind.SERVICE

    def ended(self, result: Result) -> Item:
        return replace(self, state="done", ok=result.ok, outcome=result.outcome, message=result.message,
                       attempt=result.attempt, revision=result.revision)


@dataclass(frozen=True)
class Operation:
    id: int
    action: str
    created_at: datetime
    items: tuple[Item, ...] = field(default_factory=tuple)

    @property
    def done(self) -> bool:
        return all(item.state == "done" for item in self.items)

    @property
    def failed(self) -> list[str]:
        return [item.name for item in self.items if item.ok is False]


class Operations:
    def __init__(self, *, workers: int = 4, keep: int = 200) -> None:
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="operation")
        self._guard = threading.Lock()
        self._ids = itertools.count(1)
        self._keep = keep
        self._operations: OrderedDict[int, Operation] = OrderedDict()

    def submit(self, action: str, work: Mapping[str, Callable[[], Result]]) -> Operation:
        """Queue ``work`` (service -> what to do); answers the operation at once, every item queued."""
        operation = self._add(action, tuple(Item(service) for service in work))
        for service, run in work.items():
            self._pool.submit(self._run, operation.id, service, run)
        return operation

    def track(self, action: str, work: Mapping[str, Future[T]], describe: Callable[[str, T], Result], *,
              kind: ItemKind = ItemKind.SERVICE) -> Operation:
        """Follow work that runs elsewhere (name -> its future): each item runs until its future is done,
        then says what ``describe(name, result)`` makes of the result. No thread waits meanwhile."""
        operation = self._add(action, tuple(Item(name, "running", kind=kind) for name in work))
        for name, future in work.items():
            future.add_done_callback(functools.partial(self._ended, operation.id, name, describe=describe))
        return self.get(operation.id) or operation  # already done when the futures were

    def _add(self, action: str, items: tuple[Item, ...]) -> Operation:
        with self._guard:
            operation = Operation(next(self._ids), action, datetime.now(UTC), items)
            self._operations[operation.id] = operation
            while len(self._operations) > self._keep:
                self._operations.popitem(last=False)
        return operation

    def get(self, operation_id: int) -> Operation | None:
        with self._guard:
            return self._operations.get(operation_id)

    def shutdown(self) -> None:
        """Queued items are dropped; running ones finish (their attempts end recorded either way)."""
        self._pool.shutdown(wait=True, cancel_futures=True)

    def _run(self, operation_id: int, service: str, run: Callable[[], Result]) -> None:
        self._set(operation_id, service, lambda item: replace(item, state="running"))
        result = _outcome(service, operation_id, run)
        self._set(operation_id, service, lambda item: item.ended(result))

    def _ended(self, operation_id: int, name: str, future: Future[T], *, describe: Callable[[str, T], Result]) -> None:
        def result() -> Result:
            try:
                return describe(name, future.result())
            except CancelledError:
                return ItemResult(False, "cancelled", "deployer stopped before the pass ran (the next start runs one)")

        ended = _outcome(name, operation_id, result)
        self._set(operation_id, name, lambda item: item.ended(ended))

    def _set(self, operation_id: int, name: str, change: Callable[[Item], Item]) -> None:
        with self._guard:
            operation = self._operations.get(operation_id)
            if operation is not None:
                items = tuple(change(old) if old.name == name else old for old in operation.items)
                self._operations[operation_id] = replace(operation, items=items)


def _outcome(name: str, operation_id: int, run: Callable[[], Result]) -> Result:
    """What ``run`` answers; an error becomes a failed result (one service's bug must not stop the others)."""
    try:
        return run()
    except DeployerError as exc:
        return ItemResult(False, "failed", str(exc))
    except Exception as exc:
        log.exception("%s: operation %s crashed", name, operation_id)
        return ItemResult(False, "failed", f"internal error: {type(exc).__name__}")
