"""The event bus the rooms publish on; metrics and commit statuses listen.

Subscribers run synchronously on the publishing thread and must be quick (the
status reporter only queues). A subscriber's exception is logged, never raised:
a broken listener must not fail a deploy.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from deployer.model.events import Event

log = logging.getLogger(__name__)

Listener = Callable[[Event], None]


class EventBus:
    def __init__(self) -> None:
        self._listeners: list[Listener] = []
        self._guard = threading.Lock()

    def subscribe(self, listener: Listener) -> None:
        with self._guard:
            self._listeners.append(listener)

    def publish(self, event: Event) -> None:
        with self._guard:
            listeners = list(self._listeners)
        for listener in listeners:
            try:
                listener(event)
            except Exception:
                log.exception("event listener failed on %s", type(event).__name__)
