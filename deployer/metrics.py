"""Prometheus metrics: one registry per daemon, handed to whoever counts something.

Counters for webhooks, attempts, drift corrections and rollbacks; histograms
for attempt and pass durations; gauges for service up/healthy and queue depth;
gateway traffic per service and revision, read from nginx's access log at scrape time.
Label values are service and source names (bounded by the inventory).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Iterator, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from deployer.model.events import AttemptFinished, Event, PassFinished, ServiceObserved, ServiceRemoved
from deployer.model.status import CacheUse, Outcome, Trigger
from deployer.model.traffic import RevisionTraffic

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

    def observe_artifacts(self, use: Callable[[], CacheUse]) -> None:
        """The artifact cache's size and object count, read at each scrape (an in-memory tally)."""
        size = Gauge("deployer_artifact_cache_bytes", "Bytes held by the artifact cache", registry=self.registry)
        count = Gauge("deployer_artifact_cache_objects", "Files held by the artifact cache", registry=self.registry)
        limit = Gauge("deployer_artifact_cache_budget_bytes", "[artifacts] cache_max", registry=self.registry)
        size.set_function(lambda: float(use().bytes))
        count.set_function(lambda: float(use().objects))
        limit.set_function(lambda: float(use().budget))

    def observe_gateway(self, read: Callable[[], Iterable[RevisionTraffic]]) -> None:
        """Gateway traffic from ``read`` (the access-log reader's ``read``), called at each scrape."""
        self.registry.register(GatewayTrafficCollector(read))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class GatewayTrafficCollector(Collector):
    """``deployer_gateway_requests_total{service,revision,code}`` and a latency histogram per service.

    A collector rather than counters fed line by line: the reader already holds bounded totals
    (capped revisions per service), so a scrape reports them as they are and a dropped revision
    leaves /metrics instead of lingering. Status codes are classes ("2xx") to bound cardinality.
    Totals restart from zero with the daemon, which Prometheus reads as a counter reset.
    """

    def __init__(self, read: Callable[[], Iterable[RevisionTraffic]]) -> None:
        self._read = read

    def describe(self) -> Iterator[Metric]:
        return iter(())  # nothing to compute at registration; collect() reads the log

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily("deployer_gateway_requests", "Requests through the gateway by service, "
                                       "revision and status class", labels=["service", "revision", "code"])
        latency = HistogramMetricFamily("deployer_gateway_request_duration_seconds",
                                        "Request duration through the gateway (nginx request_time)", labels=["service"])
        per_service: dict[str, tuple[list[float], list[int], float]] = {}
        for traffic in self._read():
            revision = "" if traffic.revision is None else str(traffic.revision)
            for code, count in sorted(traffic.codes.items()):
                requests.add_metric([traffic.service, revision, code], count)
            empty = (list(traffic.bounds), [0] * len(traffic.buckets), 0.0)
            bounds, buckets, total = per_service.get(traffic.service, empty)
            summed = [a + b for a, b in zip(buckets, traffic.buckets, strict=True)]
            per_service[traffic.service] = (bounds, summed, total + traffic.latency_sum)
        for service, (bounds, buckets, total) in sorted(per_service.items()):
            latency.add_metric([service], _cumulative(bounds, buckets), total)
        yield requests
        yield latency


def _cumulative(bounds: Sequence[float], buckets: Sequence[int]) -> list[tuple[str, float]]:
    running, result = 0, []
    for bound, count in zip(bounds, buckets, strict=True):
        running += count
        result.append(("+Inf" if math.isinf(bound) else repr(float(bound)), float(running)))
    return result
