"""A revision's artifacts in its service folder: each fetched once (verified), then hard-linked read-only.

``Artifacts.place`` runs in the rollout before anything of the new revision starts. It takes
no lock that other services wait on: each digest has its own (a second service wanting the
same file waits for that one download, then links it), and at most ``parallel`` transfers
run at once across the daemon.
"""

from __future__ import annotations

import hashlib
import logging
import os
import queue
import shutil
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

from deployer.artifacts.cache import ContentCache
from deployer.artifacts.fetch import Fetchers, RangeRefused
from deployer.errors import ArtifactFetchError
from deployer.model.manifest import ArtifactSpec
from deployer.model.status import ArtifactTransfer, CacheUse
from deployer.safety import UnsafePath, contained

log = logging.getLogger(__name__)
TRIES = 3  # transfers of one file within an attempt; each after the first resumes where the last broke off
PROGRESS_EVERY = 5.0  # seconds between progress lines in the log


@dataclass(frozen=True)
class Placed:
    """What one ``place`` did: how many files, bytes fetched now, bytes in all, resumed downloads."""

    files: int
    fetched: int
    total: int
    resumed: int = 0

    def summary(self) -> str:
        how = "(cached)" if self.fetched == 0 else f"of {_size(self.total)}" + (
            f", {self.resumed} resumed" if self.resumed else "")
        return f"artifacts: {self.files} file{'s' if self.files != 1 else ''}, {_size(self.fetched)} fetched {how}"


class _Progress:
    """Bytes fetched so far by one ``place``, shown on the page and logged now and then (the step is
    written when it ends)."""

    def __init__(self, service: str) -> None:
        self.service = service
        self._guard = threading.Lock()
        self.fetched = 0
        self.expected = 0  # bytes to fetch, as the transfers opened so far announced them
        self.resumed = 0
        self._said = time.monotonic()

    def expect(self, count: int) -> None:
        with self._guard:
            self.expected += count

    def add(self, count: int, total: int) -> None:
        with self._guard:
            self.fetched += count
            now = time.monotonic()
            if now - self._said >= PROGRESS_EVERY:
                self._said = now
                log.info("%s: artifacts: %s fetched (this file %s)", self.service, _size(self.fetched),
                         _size(total) if total else "size unknown")


class Artifacts:
    def __init__(self, cache: ContentCache, fetchers: Fetchers, *, parallel: int = 4) -> None:
        self.cache = cache
        self._fetchers = fetchers
        self._parallel = parallel
        self._transfers = threading.BoundedSemaphore(parallel)
        self._active: set[_Progress] = set()  # the places under way, for the page
        self._guard = threading.Lock()

    def use(self) -> CacheUse:
        """The cache's use and what is arriving now (in memory: cheap enough for every page view)."""
        with self._guard:
            fetching = tuple(ArtifactTransfer(progress.service, progress.fetched, progress.expected)
                             for progress in self._active if progress.expected)
        return replace(self.cache.use(), fetching=tuple(sorted(fetching, key=lambda transfer: transfer.service)))

    def place(self, service: str, specs: Sequence[ArtifactSpec], folder: Path) -> Placed:
        """Every artifact at its path in ``folder``; ``ArtifactFetchError`` when one cannot be had."""
        progress = _Progress(service)
        with self._guard:
            self._active.add(progress)
        try:
            with ThreadPoolExecutor(max_workers=min(len(specs), self._parallel) or 1,
                                    thread_name_prefix=f"artifacts-{service}") as pool:
                sizes = list(pool.map(lambda spec: self._ensure(spec, progress, folder), specs))
        finally:
            with self._guard:
                self._active.discard(progress)
        return Placed(len(specs), progress.fetched, sum(sizes), progress.resumed)

    def _ensure(self, spec: ArtifactSpec, progress: _Progress, folder: Path) -> int:
        """``spec``'s file placed in ``folder`` (fetched first when missing, once whoever else wants it); its size.

        Linked while the digest's lock is held, so pruning cannot remove the object in between.
        """
        with self.cache.locked(spec.sha256):
            if not self.cache.has(spec.sha256):
                with self._transfers:
                    self._fetch(spec, progress)
            self.cache.touch(spec.sha256)
            found = self.cache.object(spec.sha256)
            _link(found, folder, spec.path, progress.service)
            return found.stat().st_size

    def _fetch(self, spec: ArtifactSpec, progress: _Progress) -> None:
        partial = self.cache.partial(spec.sha256)
        digest = ""
        for tried in range(1, TRIES + 1):
            try:
                digest = self._transfer(spec, partial, progress)
                break
            except ArtifactFetchError as exc:
                if tried == TRIES or not partial.exists():
                    raise
                log.warning("%s; resuming from byte %d", exc, partial.stat().st_size)
        if digest != spec.sha256:
            partial.unlink(missing_ok=True)
            raise ArtifactFetchError(f"{spec.url}: sha256 mismatch: expected {spec.sha256}, got {digest}; "
                                      f"{spec.path} was not placed")
        self.cache.add(spec.sha256, partial)

    def _transfer(self, spec: ArtifactSpec, partial: Path, progress: _Progress) -> str:
        """Append the rest of ``spec``'s bytes to ``partial``; returns the whole file's sha256."""
        offset = partial.stat().st_size if partial.exists() else 0
        try:
            return self._stream(spec, partial, offset, progress)
        except RangeRefused:
            partial.unlink(missing_ok=True)
            return self._stream(spec, partial, 0, progress)

    def _stream(self, spec: ArtifactSpec, partial: Path, offset: int, progress: _Progress) -> str:
        with self._fetchers.for_url(spec.url).open(spec.url, offset) as stream:
            if offset and stream.resumed:
                progress.resumed += 1
            resumed = bool(offset and stream.resumed)  # else the server sent the whole file: start over
            progress.expect((stream.total or 0) - (offset if resumed else 0))
            with _Hasher(_hash_of(partial) if resumed else hashlib.sha256()) as hasher, \
                    partial.open("ab" if resumed else "wb") as handle:
                for chunk in stream.chunks:
                    handle.write(chunk)
                    hasher.update(chunk)
                    progress.add(len(chunk), stream.total or 0)
        return hasher.digest


class _Hasher:
    """sha256 on a thread of its own, so hashing overlaps receiving and writing (hashlib releases the GIL).

    ``digest`` is set when the ``with`` block ends without an error.
    """

    def __init__(self, start: hashlib._Hash) -> None:
        self._hash = start
        self._chunks: queue.Queue[bytes | None] = queue.Queue(maxsize=256)
        self._thread = threading.Thread(target=self._run, name="artifact-sha256", daemon=True)
        self.digest = ""

    def __enter__(self) -> _Hasher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._chunks.put(None)
        self._thread.join()
        self.digest = self._hash.hexdigest()

    def update(self, chunk: bytes) -> None:
        self._chunks.put(chunk)

    def _run(self) -> None:
        while (chunk := self._chunks.get()) is not None:
            self._hash.update(chunk)


def _hash_of(path: Path) -> hashlib._Hash:
    hasher = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1024 * 1024), b""):
            hasher.update(block)
    return hasher


def _link(source: Path, folder: Path, relative: str, service: str) -> None:
    """``source`` at ``folder/relative``: a hard link (read-only, shared with the cache), else a copy."""
    try:
        target = contained(folder, relative)
        _make_parents(folder, Path(relative).parent)
        target = contained(folder, relative)  # the folders made just now: check again where they lead
        if target.is_dir():
            raise UnsafePath(f"'{relative}' is a folder")
        if target.exists() and os.path.samefile(target, source):
            return
        temporary = target.parent / f".{target.name}.deployer-tmp"
        temporary.unlink(missing_ok=True)
        _link_or_copy(source, temporary)
        os.replace(temporary, target)
    except (UnsafePath, OSError) as exc:
        raise ArtifactFetchError(f"{service}: artifacts: cannot place {relative}: {exc}") from None


def _make_parents(folder: Path, relative: Path) -> None:
    here = Path(os.path.realpath(folder))
    for part in relative.parts:
        here = here / part
        if not here.exists():
            here.mkdir(mode=0o755, exist_ok=True)  # exist_ok: another artifact of the deploy may make it too


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:  # another file system, or links not allowed: a read-only copy
        shutil.copyfile(source, target)
        os.chmod(target, 0o444)


def _size(count: int) -> str:
    value = float(count)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{count} B"
