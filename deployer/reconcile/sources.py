"""The registry of followed sources: one ``GitSource`` each, their current errors, checkout pruning.

Webhook threads add sources while worker threads run passes and the web thread
reads errors, so everything here is behind one lock and readers get copies.
Checkouts are pruned after each pass: the running and last good revisions of
every service of the source stay, and the newest few commits.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

from deployer.errors import SourceError
from deployer.source import GitSource, HttpToken
from deployer.store import Store

log = logging.getLogger(__name__)

KEEP_NEWEST = 3  # checkouts of the newest commits kept besides the running and last good ones


@dataclass(frozen=True)
class SourceSpec:
    name: str
    url: str
    branch: str = "main"


class SourceRegistry:
    def __init__(self, store: Store, state_dir: Path, *, token: HttpToken | None = None) -> None:
        self._store = store
        self._state_dir = state_dir
        self._token = token  # Gitea's, for the sources it hosts (clones and LFS)
        self._sources: dict[str, GitSource] = {}
        self._errors: dict[str, str] = {}
        self._recent: dict[str, list[str]] = {}  # source -> shas passed over, newest last
        self._guard = threading.Lock()

    def add(self, spec: SourceSpec, *, origin: str = "config") -> None:
        """Follow a source. Its name and branch are checked (``ConfigError``) before anything is written."""
        git = GitSource(spec.name, spec.url, spec.branch, self._state_dir, token=self._token)
        self._store.sources.upsert(spec.name, spec.url, spec.branch, origin)
        with self._guard:
            self._sources.setdefault(spec.name, git)

    def get(self, name: str) -> GitSource:
        with self._guard:
            return self._sources[name]

    def has(self, name: str) -> bool:
        with self._guard:
            return name in self._sources

    def names(self) -> list[str]:
        with self._guard:
            return sorted(self._sources)

    def specs(self) -> list[SourceSpec]:
        with self._guard:
            return [SourceSpec(name, git.url, git.branch) for name, git in sorted(self._sources.items())]

    # -- errors shown on the page ------------------------------------------

    def set_error(self, name: str, message: str) -> None:
        with self._guard:
            self._errors[name] = message

    def clear_error(self, name: str) -> None:
        with self._guard:
            self._errors.pop(name, None)

    def errors(self) -> dict[str, str]:
        """A copy: the page iterates it while worker threads change the original."""
        with self._guard:
            return dict(self._errors)

    # -- checkouts ---------------------------------------------------------

    def prune_checkouts(self, name: str, head: str, keep: set[str]) -> list[str]:
        """Remove checkouts of ``name`` except ``keep`` and the newest few heads seen; returns what went."""
        with self._guard:
            recent = self._recent.setdefault(name, [])
            if head in recent:
                recent.remove(head)
            recent.append(head)
            del recent[:-KEEP_NEWEST]
            kept = keep | set(recent)
            git = self._sources.get(name)
        if git is None:
            return []
        try:
            return git.prune_checkouts(kept)
        except SourceError as exc:
            log.warning("source %s: %s", name, exc)
            return []
