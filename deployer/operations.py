"""Long operator actions run apart from the request that asked: a request gets an operation id at once (202).

An ``Operation`` is one action over one or more services; each service is an ``Item`` run on a
bounded pool (``workers`` at a time), and one service's failure never stops the others. The
caller follows ``GET /api/operations/{id}`` until it is ``done``. Operations live in memory (the
newest ``keep``): what they did is also recorded as attempts in the store, which outlives them.
Any long action can use it: the work is a callable per service returning an ``ActionDone``-like result.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Protocol

from deployer.errors import DeployerError

log = logging.getLogger(__name__)


class Result(Protocol):
    @property
    def ok(self) -> bool: ...
    @property
    def outcome(self) -> str: ...
    @property
    def message(self) -> str: ...
    @property
    def attempt(self) -> int | None: ...


@dataclass(frozen=True)
class Item:
    service: str
    state: str = "queued"  # queued, running, done
    ok: bool | None = None
    outcome: str = ""
    message: str = ""
    attempt: int | None = None


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
        return [item.service for item in self.items if item.ok is False]


class Operations:
    def __init__(self, *, workers: int = 4, keep: int = 200) -> None:
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="operation")
        self._guard = threading.Lock()
        self._ids = itertools.count(1)
        self._keep = keep
        self._operations: OrderedDict[int, Operation] = OrderedDict()

    def submit(self, action: str, work: Mapping[str, Callable[[], Result]]) -> Operation:
        """Queue ``work`` (service -> what to do); answers the operation at once, every item queued."""
        with self._guard:
            operation = Operation(next(self._ids), action, datetime.now(UTC),
                                  tuple(Item(service) for service in work))
            self._operations[operation.id] = operation
            while len(self._operations) > self._keep:
                self._operations.popitem(last=False)
        for service, run in work.items():
            self._pool.submit(self._run, operation.id, service, run)
        return operation

    def get(self, operation_id: int) -> Operation | None:
        with self._guard:
            return self._operations.get(operation_id)

    def shutdown(self) -> None:
        """Queued items are dropped; running ones finish (their attempts end recorded either way)."""
        self._pool.shutdown(wait=True, cancel_futures=True)

    def _run(self, operation_id: int, service: str, run: Callable[[], Result]) -> None:
        self._update(operation_id, Item(service, "running"))
        try:
            result = run()
            done = Item(service, "done", result.ok, result.outcome, result.message, result.attempt)
        except DeployerError as exc:
            done = Item(service, "done", False, "failed", str(exc))
        except Exception as exc:  # one service's bug must not stop the others
            log.exception("%s: operation %s crashed", service, operation_id)
            done = Item(service, "done", False, "failed", f"internal error: {type(exc).__name__}")
        self._update(operation_id, done)

    def _update(self, operation_id: int, item: Item) -> None:
        with self._guard:
            operation = self._operations.get(operation_id)
            if operation is not None:
                items = tuple(item if old.service == item.service else old for old in operation.items)
                self._operations[operation_id] = replace(operation, items=items)
