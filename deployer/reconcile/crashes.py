"""Crash loops after the gate: what the observer has seen of a service's process being restarted by its runtime.

supervisord restarts a process that dies after ``startsecs`` (docker's restart policy likewise), so
a crash-looping service reads RUNNING most of the time. What gives it away is a new process each
time it is looked at. This room only remembers (thread-safe, no I/O): restarts seen within
``CRASH_WINDOW``, and which services are held to be crash-looping and why.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

CRASH_WINDOW = 300.0  # seconds: restarted twice within it is a crash loop; none, and answering: recovered


class CrashLoops:
    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._guard = threading.Lock()
        self._restarts: dict[str, tuple[tuple[float, str], ...]] = {}  # name -> restarts seen: (when, how)
        self._crashed: dict[str, str] = {}  # name -> why it is held to be crash-looping

    def restarted(self, name: str, how: str) -> None:
        """Its runtime started a new process for it (the old one died)."""
        with self._guard:
            self._restarts[name] = (*self._recent(name), (self._clock(), how))

    def looping(self, name: str) -> bool:
        """Restarted twice within ``CRASH_WINDOW``.

        Once is not a loop: a supervisord restarted by deployer restarts every process once, and
        they may not answer yet.
        """
        with self._guard:
            return len(self._recent(name)) >= 2

    def restarting(self, name: str) -> bool:
        """Restarted at all within ``CRASH_WINDOW``: not recovered yet."""
        with self._guard:
            return bool(self._recent(name))

    def said(self, name: str) -> str:
        with self._guard:
            recent = self._recent(name)
        if not recent:
            return "its process died"
        times = "once" if len(recent) == 1 else f"{len(recent)} times"
        return f"its process died and was restarted {times} in {CRASH_WINDOW / 60:g} min ({recent[-1][1]})"

    def mark(self, name: str, why: str) -> None:
        with self._guard:
            self._crashed[name] = why

    def why(self, name: str) -> str | None:
        """Why ``name`` is held to be crash-looping, or None."""
        with self._guard:
            return self._crashed.get(name)

    def forget(self, name: str) -> bool:
        """An attempt, a stop or a recovery: what was seen before no longer counts. True if it was crashed."""
        with self._guard:
            self._restarts.pop(name, None)
            return self._crashed.pop(name, None) is not None

    def _recent(self, name: str) -> tuple[tuple[float, str], ...]:
        now = self._clock()
        return tuple((when, how) for when, how in self._restarts.get(name, ()) if now - when < CRASH_WINDOW)
