"""Traffic through the gateway, as counted from its access log: one revision of one service.

A plain value shared by the gateway (which counts), the metrics (which export it) and the
pages (which show this revision beside the one before). Latencies are kept as fixed buckets.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# Upper bounds (seconds) of the latency buckets; the last one catches everything slower.
LATENCY_BOUNDS: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                                     math.inf)

@dataclass(frozen=True)
class RevisionTraffic:
    """What one revision of one service served, as counted from the access log."""

    service: str
    revision: int | None
    requests: int
    codes: dict[str, int]  # "2xx" -> count
    buckets: tuple[int, ...]  # requests per latency bucket (not cumulative), by LATENCY_BOUNDS
    latency_sum: float
    bounds: tuple[float, ...] = LATENCY_BOUNDS

    @property
    def errors_4xx(self) -> int:
        return self.codes.get("4xx", 0)

    @property
    def errors_5xx(self) -> int:
        return self.codes.get("5xx", 0)

    @property
    def p50(self) -> float | None:
        return quantile(self.buckets, 0.5)

    @property
    def p95(self) -> float | None:
        return quantile(self.buckets, 0.95)


def quantile(buckets: tuple[int, ...] | list[int], q: float) -> float | None:
    """The ``q`` quantile, interpolated inside its bucket (as Prometheus' histogram_quantile does)."""
    total = sum(buckets)
    if total == 0:
        return None
    rank = q * total
    cumulative = 0
    for index, count in enumerate(buckets):
        if count and cumulative + count >= rank:
            upper = LATENCY_BOUNDS[index]
            lower = LATENCY_BOUNDS[index - 1] if index else 0.0
            if math.isinf(upper):
                return lower  # slower than the last bound: that bound is all we know
            return lower + (upper - lower) * (rank - cumulative) / count
        cumulative += count
    return LATENCY_BOUNDS[-2]
