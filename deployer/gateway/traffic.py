"""Traffic per service and revision, read from the gateway's JSON access log.

Read incrementally from the last offset, like ``tail -F``: after a rename the new file is read
from its start while the old one, still open, is read too until it has been quiet for a few
seconds (nginx's workers reopen a moment late); a file that shrank (truncated in place) is
read again from its start. Memory stays bounded whatever the log holds: per
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
import time
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from deployer.model.traffic import LATENCY_BOUNDS, RevisionTraffic

CODE_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")
_NAME = re.compile(r"[a-z][a-z0-9-]{0,39}")
_REVISION = re.compile(r"[0-9]{1,18}")
_CHUNK = 64 * 1024
_RETIRED_QUIET_SECONDS = 5.0


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


class _Follower:
    """One open log file read line by line; a line is whole only once its newline is there."""

    def __init__(self, handle: IO[bytes], max_line: int) -> None:
        self.handle = handle
        stat = os.fstat(handle.fileno())
        self.inode = (stat.st_dev, stat.st_ino)
        self.idle_since: float | None = None
        self._max_line = max_line
        self._partial = b""
        self._skipping = False  # inside a line longer than max_line

    def restart_if_shrunk(self) -> None:
        if os.fstat(self.handle.fileno()).st_size < self.handle.tell():  # truncated in place (copytruncate)
            self.handle.seek(0)
            self._partial, self._skipping = b"", False

    def lines(self, budget: int) -> Iterator[bytes | None]:
        """Whole lines appended since the last call (None for each one too long to keep)."""
        read = 0
        while read < budget:
            chunk = self.handle.read(_CHUNK)
            if not chunk:
                break
            read += len(chunk)
            yield from self._split(chunk)
        self.idle_since = (self.idle_since or time.monotonic()) if read == 0 else None

    def _split(self, chunk: bytes) -> Iterator[bytes | None]:
        if self._skipping:
            newline = chunk.find(b"\n")
            if newline < 0:
                return
            chunk, self._skipping = chunk[newline + 1:], False
        *lines, rest = (self._partial + chunk).split(b"\n")
        yield from (line if len(line) <= self._max_line else None for line in lines)
        if len(rest) > self._max_line:
            self._partial, self._skipping = b"", True
            yield None
        else:
            self._partial = rest

    def close(self) -> None:
        self.handle.close()


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
        self._current: _Follower | None = None
        self._retired: _Follower | None = None  # the file before a rotation, read until it stays quiet
        self._lock = threading.Lock()

    def read(self) -> tuple[RevisionTraffic, ...]:
        """Consume new lines (at most ``max_read_bytes`` per file and call), then a copy of the counts."""
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
            for follower in (self._current, self._retired):
                if follower is not None:
                    follower.close()
            self._current = self._retired = None

    # ------------------------------------------------------------ reading

    def _poll(self) -> int:
        counted = self._drain_retired()
        if self._current is None:
            self._current = self._open()
            if self._current is None:
                return counted
        self._current.restart_if_shrunk()
        counted += self._count(self._current)
        if self._rotated(self._current):
            # nginx's workers reopen their log a moment after the rename: lines may still land in the
            # old file, so it is read alongside the new one until it has been quiet for a while.
            if self._retired is not None:
                self._retired.close()
            self._retired, self._current = self._current, self._open()
            if self._current is not None:
                counted += self._count(self._current)
        return counted

    def _drain_retired(self) -> int:
        retired = self._retired
        if retired is None:
            return 0
        counted = self._count(retired)
        if retired.idle_since is not None and time.monotonic() - retired.idle_since >= _RETIRED_QUIET_SECONDS:
            retired.close()
            self._retired = None
        return counted

    def _open(self) -> _Follower | None:
        try:
            follower = _Follower(self.path.open("rb"), self._max_line)
        except OSError:
            return None
        if self._skip_to is not None and self._skip_to[0] == follower.inode:
            follower.handle.seek(min(self._skip_to[1], os.fstat(follower.handle.fileno()).st_size))
        self._skip_to = None
        return follower

    def _rotated(self, follower: _Follower) -> bool:
        try:
            stat = self.path.stat()
        except OSError:
            return False  # renamed and not yet recreated: keep reading the old file
        return (stat.st_dev, stat.st_ino) != follower.inode

    def _count(self, follower: _Follower) -> int:
        return sum(self._line(line) for line in follower.lines(self._max_read))

    # ------------------------------------------------------------ counting

    def _line(self, line: bytes | None) -> int:
        parsed = _parse(line) if line is not None else None
        if parsed is None:
            self.malformed += line is None or bool(line.strip())
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
