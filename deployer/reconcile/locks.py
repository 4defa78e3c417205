"""One lock per service, and when an operator last acted on it by hand.

A deploy, a removal, a demo run and an operator's stop/start/restart of one service never
overlap. A pass that listed the world before an operator's action ended acts on a stale view,
so it asks ``acted_since`` and leaves that service to the next pass.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager


class ServiceLocks:
    def __init__(self) -> None:
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()
        self._acted: dict[str, float] = {}  # service -> when an operator's stop/start/restart last ended

    @contextmanager
    def hold(self, service: str) -> Iterator[None]:
        with self._guard:
            lock = self._locks.setdefault(service, threading.Lock())
        with lock:
            yield

    @contextmanager
    def by_hand(self, service: str) -> Iterator[None]:
        """Under the service's lock; its end is noted, so a pass that listed before it defers the service."""
        with self.hold(service):
            try:
                yield
            finally:
                self._acted[service] = time.monotonic()

    def acted_since(self, service: str, moment: float) -> bool:
        """Whether an operator's action on ``service`` ended after ``moment`` (``time.monotonic()``)."""
        return self._acted.get(service, 0.0) > moment
