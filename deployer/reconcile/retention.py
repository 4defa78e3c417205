"""Which cached artifacts the store still needs, and pruning the cache after every attempt.

An object is kept while a service's running revision, its last good one or one of its newest
``KEEP_RECENT`` revisions names it (a rollback must not fetch again); the rest go least
recently used first, and only while the cache is over its budget.
"""

from __future__ import annotations

import logging

from deployer.artifacts import Artifacts
from deployer.model.events import AttemptFinished, Event
from deployer.model.status import RevisionView
from deployer.store import Store, StoreError

log = logging.getLogger(__name__)
KEEP_RECENT = 3  # newest revisions per service whose artifacts stay cached


class Retention:
    def __init__(self, store: Store, artifacts: Artifacts) -> None:
        self._store = store
        self._artifacts = artifacts

    def on_event(self, event: Event) -> None:
        """Subscribed to the event bus: prune once an attempt ended (its files are placed or not needed)."""
        if isinstance(event, AttemptFinished):
            self._artifacts.cache.drop_stale_partials()
            self.prune()

    def prune(self) -> list[str]:
        cache = self._artifacts.cache
        if cache.use().bytes <= cache.budget:
            return []
        try:
            keep = self.needed()
        except StoreError as exc:  # not knowing what is needed, nothing is removed
            log.warning("artifact cache not pruned: %s", exc)
            return []
        removed = cache.prune(keep)
        if removed:
            log.info("artifact cache: removed %d object(s) no kept revision needs; %d bytes left",
                     len(removed), cache.use().bytes)
        return removed

    def needed(self) -> set[str]:
        """Every digest a running, last good or recent revision of some service names."""
        history, digests = self._store.history, set[str]()
        for view in self._store.views.services():
            revisions: list[RevisionView | None] = list(history.revisions(view.name, limit=KEEP_RECENT))
            revisions.append(history.last_good_revision(view.name))
            if view.running_revision is not None:
                revisions.append(history.get_revision(view.running_revision))
            for revision in revisions:
                digests.update(_digests(revision.spec) if revision is not None else ())
        return digests


def _digests(spec: dict[str, object]) -> set[str]:
    entries = spec.get("artifacts")
    return {str(entry.get("sha256")) for entry in entries if isinstance(entry, dict)} if isinstance(entries, list) \
        else set()
