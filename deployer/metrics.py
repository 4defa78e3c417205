"""Prometheus metrics: one registry per daemon, handed to whoever counts something.

Counters for webhooks, attempts, drift corrections and rollbacks; histograms
for attempt and pass durations; gauges for service up/healthy and queue depth.
Label values are service and source names (bounded by the inventory).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from deployer.model.events import AttemptFinished, Event, PassFinished, ServiceObserved, ServiceRemoved
from deployer.model.status import Outcome, Trigger

_DURATIONS = (0.5, 1, 2, 5, 10, 30, 60, 120, 300, 900)
_PASSES = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.webhooks = Counter("deployer_webhooks", "Webhook deliveries by result",
                                ["result"], registry=self.registry)
        self.attempts = Counter("deployer_attempts", "Finished deploy attempts by service and outcome",
                                ["service", "outcome"], registry=self.registry)
        self.attempt_seconds = Histogram("deployer_attempt_duration_seconds", "Duration of deploy attempts",
                                         ["service"], buckets=_DURATIONS, registry=self.registry)
        self.pass_seconds = Histogram("deployer_reconcile_pass_duration_seconds", "Duration of reconcile passes",
                                      ["source"], buckets=_PASSES, registry=self.registry)
        self.drift = Counter("deployer_drift_corrections", "Drift healed (the world changed, git did not)",
                             ["service"], registry=self.registry)
        self.rollbacks = Counter("deployer_rollbacks", "Automatic rollbacks to the last good revision",
                                 ["service"], registry=self.registry)
        self.up = Gauge("deployer_service_up", "1 when the service's process or container runs",
                        ["service"], registry=self.registry)
        self.healthy = Gauge("deployer_service_healthy", "1 when the service's health check answers 200",
                             ["service"], registry=self.registry)
        self.queue_depth = Gauge("deployer_queue_depth", "Sources waiting for or in a reconcile pass",
                                 registry=self.registry)

    def on_event(self, event: Event) -> None:
        """Metrics listen to the reconciler's events (subscribed by the composition root)."""
        if isinstance(event, AttemptFinished):
            self.attempts.labels(event.service, event.outcome.value).inc()
            self.attempt_seconds.labels(event.service).observe(event.seconds)
            if event.outcome is Outcome.ROLLED_BACK:
                self.rollbacks.labels(event.service).inc()
            if event.trigger is Trigger.DRIFT and event.outcome is Outcome.SUCCEEDED:
                self.drift.labels(event.service).inc()
        elif isinstance(event, ServiceObserved):
            self.service_state(event.service, event.running, event.healthy)
        elif isinstance(event, ServiceRemoved):
            self.forget(event.service)
        elif isinstance(event, PassFinished):
            self.pass_seconds.labels(event.source).observe(event.seconds)

    def observe_queue(self, depth: Callable[[], int]) -> None:
        self.queue_depth.set_function(lambda: float(depth()))

    def service_state(self, service: str, running: bool, healthy: bool) -> None:
        self.up.labels(service).set(1 if running else 0)
        self.healthy.labels(service).set(1 if healthy else 0)

    def forget(self, service: str) -> None:
        """A removed service's gauges go away instead of reading 0 forever."""
        for gauge in (self.up, self.healthy):
            with contextlib.suppress(KeyError):  # never observed: nothing to remove
                gauge.remove(service)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
