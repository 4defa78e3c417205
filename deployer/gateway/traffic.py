"""Traffic per service and revision, read from the gateway's JSON access log.

Read incrementally from the last offset, like ``tail -F``: a renamed log is read to its end
through the open handle, then the new file from its start; a file that shrank (truncated in
place) is read again from the start. Memory stays bounded whatever the log holds: per
(service, revision) a request count, counts by status class and a fixed-bucket latency
histogram; at most ``max_revisions`` revisions per service and ``max_services`` services
(the least recently seen dropped); over-long and malformed lines skipped and counted.
"""

from __future__ import annotations

import bisect
import json
import math
import os
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

# Upper bounds (seconds) of the latency buckets; the last one catches everything slower.
LATENCY_BOUNDS: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                                     math.inf)
CODE_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")
_NAME = re.compile(r"[a-z][a-z0-9-]{0,39}")
_REVISION = re.compile(r"[0-9]{1,18}")
_CHUNK = 64 * 1024


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


@dataclass
class _Counts:
    requests: int = 0
    codes: dict[str, int] = field(default_factory=dict)
    buckets: list[int] = field(default_factory=lambda: [0] * len(LATENCY_BOUNDS))
    latency_sum: float = 0.0

    def add(self, status: int, seconds: float) -> None:
        self.requests += 1
        code = f"{status // 100}xx"
        if code in CODE_CLASSES:
            self.codes[code] = self.codes.get(code, 0) + 1
        self.buckets[bisect.bisect_left(LATENCY_BOUNDS, seconds)] += 1
        self.latency_sum += seconds


class TrafficReader:
    """Follows one access log; ``read()`` consumes what is new and returns the counts so far."""

    def __init__(self, path: Path, *, max_revisions: int = 5, max_services: int = 1000,
                 max_line_bytes: int = 16 * 1024, max_read_bytes: int = 16 * 1024 * 1024,
                 start_at_end: bool = False) -> None:
        self.path = path
        self.malformed = 0
        self._max_revisions = max_revisions
        self._max_services = max_services
        self._max_line = max_line_bytes
        self._max_read = max_read_bytes
        # A restarted daemon need not count the old log again: start where the file ends now.
        self._skip_to = _position(path) if start_at_end else None
        self._stats: OrderedDict[str, OrderedDict[int | None, _Counts]] = OrderedDict()
        self._handle: IO[bytes] | None = None
        self._inode: tuple[int, int] | None = None
        self._partial = b""
        self._skipping = False  # inside a line longer than max_line_bytes
        self._lock = threading.Lock()

    def read(self) -> tuple[RevisionTraffic, ...]:
        """Consume new lines (at most ``max_read_bytes`` per call), then a copy of the counts."""
        self.poll()
        return self.snapshot()

    def poll(self) -> int:
        """Consume what was appended since the last call; the number of lines counted."""
        with self._lock:
            return self._poll()

    def snapshot(self) -> tuple[RevisionTraffic, ...]:
        with self._lock:
            return tuple(
                RevisionTraffic(service, revision, counts.requests, dict(counts.codes), tuple(counts.buckets),
                                counts.latency_sum)
                for service, revisions in sorted(self._stats.items())
                for revision, counts in revisions.items())

    def forget(self, service: str) -> None:
        """A removed service's counts go (its series leave /metrics)."""
        with self._lock:
            self._stats.pop(service, None)

    def close(self) -> None:
        with self._lock:
            self._close()

    # ------------------------------------------------------------ reading

    def _poll(self) -> int:
        counted = 0
        if self._handle is None and not self._open():
            return 0
        assert self._handle is not None
        if self._shrunk():
            self._handle.seek(0)
            self._partial, self._skipping = b"", False
        counted += self._drain()
        if self._rotated():  # the old file is read to its end above; now the new one from its start
            self._close()
            if self._open():
                counted += self._drain()
        return counted

    def _open(self) -> bool:
        try:
            handle = self.path.open("rb")
        except OSError:
            return False
        stat = os.fstat(handle.fileno())
        self._handle, self._inode = handle, (stat.st_dev, stat.st_ino)
        self._partial, self._skipping = b"", False
        if self._skip_to is not None and self._skip_to[0] == self._inode:
            handle.seek(min(self._skip_to[1], stat.st_size))
        self._skip_to = None
        return True

    def _close(self) -> None:
        if self._handle is not None:
            self._handle.close()
        self._handle = None

    def _shrunk(self) -> bool:
        assert self._handle is not None
        return os.fstat(self._handle.fileno()).st_size < self._handle.tell()

    def _rotated(self) -> bool:
        try:
            stat = self.path.stat()
        except OSError:
            return False  # renamed and not yet recreated: keep the old handle
        return (stat.st_dev, stat.st_ino) != self._inode

    def _drain(self) -> int:
        assert self._handle is not None
        counted = budget = 0
        while budget < self._max_read:
            chunk = self._handle.read(_CHUNK)
            if not chunk:
                break
            budget += len(chunk)
            counted += self._feed(chunk)
        return counted

    def _feed(self, chunk: bytes) -> int:
        if self._skipping:
            newline = chunk.find(b"\n")
            if newline < 0:
                return 0
            chunk, self._skipping = chunk[newline + 1:], False
        *lines, rest = (self._partial + chunk).split(b"\n")
        if len(rest) > self._max_line:
            self._partial, self._skipping = b"", True
            self.malformed += 1
        else:
            self._partial = rest
        return sum(self._line(line) for line in lines)

    # ------------------------------------------------------------ counting

    def _line(self, line: bytes) -> int:
        parsed = _parse(line) if len(line) <= self._max_line else None
        if parsed is None:
            self.malformed += bool(line.strip())
            return 0
        service, revision, status, seconds = parsed
        if not service:
            return 0  # a request no route took (404 on the listener)
        self._counts(service, revision).add(status, seconds)
        return 1

    def _counts(self, service: str, revision: int | None) -> _Counts:
        revisions = self._stats.get(service)
        if revisions is None:
            if len(self._stats) >= self._max_services:
                self._stats.popitem(last=False)
            revisions = self._stats[service] = OrderedDict()
        self._stats.move_to_end(service)
        counts = revisions.get(revision)
        if counts is None:
            if len(revisions) >= self._max_revisions:
                revisions.popitem(last=False)  # the revision seen least recently
            counts = revisions[revision] = _Counts()
        revisions.move_to_end(revision)
        return counts


def _parse(line: bytes) -> tuple[str, int | None, int, float] | None:
    """(service, revision, status, seconds) of one log line; None when it is not one of ours."""
    try:
        entry: Any = json.loads(line)
        service, revision = entry["service"], entry["revision"]
        status, seconds = int(entry["status"]), float(entry["request_time"])
    except (ValueError, TypeError, KeyError):
        return None
    if not isinstance(service, str) or not isinstance(revision, str) or not math.isfinite(seconds):
        return None
    if service and not _NAME.fullmatch(service):
        return None
    if revision and not _REVISION.fullmatch(revision):
        return None
    if seconds < 0 or not 100 <= status <= 999:
        return None
    return service, int(revision) if revision else None, status, seconds


def _position(path: Path) -> tuple[tuple[int, int], int] | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return (stat.st_dev, stat.st_ino), stat.st_size
