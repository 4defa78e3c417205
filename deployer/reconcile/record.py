"""Recording what a commit meant: revisions for the services it resolved, failures for what it could not.

Resolution records nothing (``resolve.py``); this room writes its result: a revision per new spec
(which becomes the desired one), a failed attempt once per broken commit for every service of the
source (and a ``CommitRefused`` event, so Gitea shows it), once per problem for a single service;
a crash loop after the gate (the observer's ``ServiceCrashed``), a swarm service running fewer tasks
than asked (``ServiceDegraded``) and their recoveries, as drift attempts.
Checkouts nothing needs any more are pruned when a new head was recorded.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import replace

from deployer.errors import DeployerError, Reason
from deployer.model.events import AttemptFinished, CommitRefused, Event, ServiceCrashed, ServiceDegraded
from deployer.model.status import Outcome, RevisionView, Trigger
from deployer.reconcile.events import EventBus
from deployer.reconcile.resolve import Resolution
from deployer.reconcile.sources import SourceRegistry
from deployer.store import Store

log = logging.getLogger(__name__)


class Recorder:
    def __init__(self, store: Store, sources: SourceRegistry, events: EventBus) -> None:
        self._store = store
        self._sources = sources
        self._events = events
        self._refused: dict[str, str] = {}  # source or service -> the failure already recorded
        self._guard = threading.Lock()

    def revisions(self, source: str, resolution: Resolution) -> dict[str, RevisionView]:
        """A revision per resolved service (the same spec is not recorded twice), and it becomes the desired one."""
        self._forget(source)
        author = resolution.commit.author if resolution.commit is not None else ""
        message = resolution.commit.message if resolution.commit is not None else ""
        revisions = {}
        for name, desired in resolution.desired.items():
            revision = self._store.history.add_revision(desired, author=author, message=message,
                                                        manifest_text=resolution.text)
            self._store.services.set_desired(name, revision.id)
            # Kept until the head moves, and nothing in a pass reads the manifest text: without this, a
            # source of 500 services held 500 copies of its 60 KB manifest (30 MB) for as long.
            revisions[name] = replace(revision, manifest_text="")
        self._prune_checkouts(source, resolution.sha)
        return revisions

    def refused_commit(self, source: str, sha: str, exc: DeployerError, trigger: Trigger) -> None:
        """A broken manifest is recorded once per commit against every service of the source."""
        self._sources.set_error(source, str(exc))
        if not self._first(source, sha):
            return
        log.warning("source %s at %s: %s; the running revisions keep serving", source, sha[:7], exc)
        for service in sorted(self._store.services.inventory(source)):
            attempt = self._store.history.start_attempt(service, None, trigger)
            self._store.history.finish_attempt(attempt, Outcome.FAILED, exc.reason.value,
                                               f"{exc} (commit {sha[:7]}); the previous revision keeps serving")
            self._events.publish(CommitRefused(service, source, sha, exc.reason.value, str(exc)))

    def service_problem(self, service: str, error: DeployerError, trigger: Trigger) -> None:
        """One service cannot be deployed as it is (a port taken, a secret missing): recorded once per problem."""
        if not self._first(service, f"{service}:{error}"):
            return
        attempt = self._store.history.start_attempt(service, None, trigger)
        self._store.history.finish_attempt(attempt, Outcome.FAILED, error.reason.value,
                                           f"{error}; the previous revision keeps serving")

    def on_event(self, event: Event) -> None:
        """A crash after the gate (or the recovery from one) is an attempt of its own, trigger ``drift``.

        Recorded against the running revision, so that revision's spec is held like any failed one
        (the retry rule applies) and Gitea's commit status says it; a recovery clears it.
        """
        if isinstance(event, ServiceCrashed):
            self.crashed(event.service, event.detail, recovered=event.recovered)
        elif isinstance(event, ServiceDegraded):
            self.crashed(event.service, event.detail, recovered=event.recovered, reason=Reason.DEGRADED)

    def crashed(self, service: str, detail: str, *, recovered: bool = False,
                reason: Reason = Reason.CRASH_LOOP) -> None:
        """A drift attempt; ``Degraded`` is not the revision's fault (it is not held, see ``last_failure``)."""
        view = self._store.views.service(service)
        revision = self._store.history.get_revision(view.running_revision) \
            if view is not None and view.running_revision else None
        if view is None or revision is None:
            return
        outcome, reason = (Outcome.SUCCEEDED, Reason.RECOVERED) if recovered else (Outcome.FAILED, reason)
        message = f"revision {revision.id} ({revision.sha[:7]}) {detail}"
        attempt = self._store.history.start_attempt(service, revision.id, Trigger.DRIFT)
        self._store.history.finish_attempt(attempt, outcome, reason.value, message)
        log.warning("%s: %s", service, message)
        self._events.publish(AttemptFinished(service, view.source, revision.sha, revision.id, attempt, Trigger.DRIFT,
                                             outcome, reason.value, message, 0.0))

    def _first(self, key: str, what: str) -> bool:
        with self._guard:
            if self._refused.get(key) == what:
                return False
            self._refused[key] = what
            return True

    def _forget(self, key: str) -> None:
        with self._guard:
            self._refused.pop(key, None)

    def _prune_checkouts(self, source: str, head: str) -> None:
        """A new head was recorded: drop checkouts nothing needs (running, last good and recent ones stay)."""
        keep = {head} | self._store.history.kept_commits(source)
        removed = self._sources.prune_checkouts(source, head, keep)
        if removed:
            log.info("source %s: removed %d old checkout(s)", source, len(removed))
