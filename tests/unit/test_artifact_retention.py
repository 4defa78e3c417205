"""Pruning the artifact cache against a real store: what a running, last good or recent revision names stays."""

from __future__ import annotations

import os
from pathlib import Path

from deployer.artifacts import Artifacts, ContentCache, Fetchers, FetchOptions
from deployer.model.desired import DesiredService
from deployer.model.status import Outcome, Trigger
from deployer.reconcile.retention import KEEP_RECENT, Retention
from deployer.store import Store

SIZE = 1000


def digest(label: str) -> str:
    return (label * 64)[:64]


def revision(store: Store, name: str, label: str, outcome: Outcome) -> int:
    desired = DesiredService(name=name, source="s", sha="0" * 40, tree=label, runtime="supervisor", port=8800,
                             artifacts=({"url": f"s3://m/{label}", "sha256": digest(label), "path": "w.bin"},))  # type: ignore[arg-type]
    found = store.history.add_revision(desired, author="t", message=label, manifest_text="")
    attempt = store.history.start_attempt(name, found.id, Trigger.WEBHOOK)
    store.history.finish_attempt(attempt, outcome, "r", "m")
    return found.id


def cached(cache: ContentCache, tmp_path: Path, label: str, used: int) -> None:
    (tmp_path / label).write_bytes(os.urandom(SIZE))
    cache.add(digest(label), tmp_path / label)
    os.utime(cache.object(digest(label)), (used, used))


def test_prune_spares_running_last_good_and_recent_revisions(store: Store, tmp_path: Path) -> None:
    for name in ("a", "b"):
        store.services.upsert(name, "s", "supervisor")
    good = revision(store, "a", "1", Outcome.SUCCEEDED)
    store.services.set_running("a", good)
    for label in "23456":  # newer revisions of a, all failed: only the newest KEEP_RECENT stay needed
        revision(store, "a", label, Outcome.FAILED)
    store.services.set_running("b", revision(store, "b", "b", Outcome.SUCCEEDED))
    cache = ContentCache(tmp_path / "cache", budget=5 * SIZE)
    for used, label in enumerate("1234567b"):  # 7: named by no revision at all
        cached(cache, tmp_path, label, 1000 + used)
    retention = Retention(store, Artifacts(cache, Fetchers(FetchOptions())))
    assert KEEP_RECENT == 3
    assert retention.needed() == {digest(label) for label in "1456b"}
    assert retention.prune() == [digest("2"), digest("3"), digest("7")]  # least recently used first
    assert cache.use().bytes == 5 * SIZE <= cache.budget
    assert retention.prune() == []  # within the budget: nothing more to do
