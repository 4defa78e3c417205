"""The content-addressed cache: one read-only file per sha256, one lock per digest, a budget.

Objects live at ``<root>/sha256/<hex>``; a download in progress at ``<root>/partial/<hex>``
(kept when interrupted, so the next fetch resumes it). An object's modification time is
its last use: pruning removes the least recently used objects that no kept revision needs.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Collection, Iterator
from pathlib import Path

from deployer.model.status import CacheUse

log = logging.getLogger(__name__)
PARTIAL_KEPT = 24 * 3600  # seconds an interrupted download waits to be resumed before it is removed


class ContentCache:
    def __init__(self, root: Path, *, budget: int) -> None:
        self.root = root
        self.budget = budget
        self._objects = root / "sha256"
        self._partial = root / "partial"
        for folder in (self._objects, self._partial):
            folder.mkdir(parents=True, exist_ok=True)
        self._guard = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}
        self._sizes = {entry.name: entry.stat().st_size for entry in os.scandir(self._objects) if entry.is_file()}

    def object(self, digest: str) -> Path:
        return self._objects / digest

    def partial(self, digest: str) -> Path:
        return self._partial / digest

    def has(self, digest: str) -> bool:
        return digest in self._sizes and self.object(digest).is_file()

    def use(self) -> CacheUse:
        with self._guard:
            return CacheUse(sum(self._sizes.values()), len(self._sizes), self.budget)

    @contextlib.contextmanager
    def locked(self, digest: str) -> Iterator[None]:
        """Held while one digest is fetched or removed: a second service wanting it waits, then finds it."""
        with self._guard:
            lock = self._locks.setdefault(digest, threading.Lock())
        with lock:
            yield

    def add(self, digest: str, verified: Path) -> Path:
        """Move a verified download into the cache, read-only."""
        os.chmod(verified, 0o444)
        os.replace(verified, self.object(digest))
        with self._guard:
            self._sizes[digest] = self.object(digest).stat().st_size
        return self.object(digest)

    def touch(self, digest: str) -> None:
        """Mark an object used now (pruning goes by last use)."""
        with contextlib.suppress(OSError):
            os.utime(self.object(digest))

    def prune(self, keep: Collection[str]) -> list[str]:
        """Remove least recently used objects outside ``keep`` until the cache fits its budget; returns them."""
        removed: list[str] = []
        candidates = sorted((self._last_use(digest), digest) for digest in list(self._sizes) if digest not in keep)
        for _, digest in candidates:
            if self.use().bytes <= self.budget:
                break
            if self._remove_unless_busy(digest, self.object(digest)):
                removed.append(digest)
        if self.use().bytes > self.budget:
            log.warning("artifact cache holds %d bytes, over its budget of %d: every object left is needed by a "
                        "running, last good or recent revision", self.use().bytes, self.budget)
        return removed

    def drop_stale_partials(self, *, older_than: float = PARTIAL_KEPT) -> list[str]:
        """Interrupted downloads nobody resumed for ``older_than`` seconds (their revision is gone or fixed)."""
        dropped = []
        for entry in os.scandir(self._partial):
            try:
                stale = time.time() - entry.stat().st_mtime > older_than
            except OSError:
                continue
            if stale and self._remove_unless_busy(entry.name, self.partial(entry.name)):
                dropped.append(entry.name)
        return dropped

    def _last_use(self, digest: str) -> float:
        try:
            return self.object(digest).stat().st_mtime
        except OSError:
            return 0.0

    def _remove_unless_busy(self, digest: str, path: Path) -> bool:
        with self._guard:
            lock = self._locks.setdefault(digest, threading.Lock())
        if not lock.acquire(blocking=False):  # being fetched or placed right now: needed
            return False
        try:
            path.unlink(missing_ok=True)
            if path == self.object(digest):
                with self._guard:
                    self._sizes.pop(digest, None)
            return True
        finally:
            lock.release()
