"""Operator actions: pin, unpin, suspend, resume, roll back, stop, start — kept in the store with who/why/when.

These only record intent and say which source needs a pass; the reconciler
does the work on that pass (a pin makes the pinned revision the desired one,
a suspension turns every change for the service into a noop, a stop makes
"stopped" the desired state until a start clears it).
"""

from __future__ import annotations

from dataclasses import dataclass

from deployer.errors import StalledError, UnknownService
from deployer.model.status import OverrideKind, OverrideView, RevisionView, ServiceView
from deployer.store import Store


class OperatorError(StalledError):
    """The request cannot be carried out as asked (nothing running to pin, no earlier revision …).

    An unknown service is ``UnknownService`` instead, so that callers tell "no such thing" by its type.
    """


@dataclass(frozen=True)
class Done:
    service: str
    source: str
    message: str
    override: OverrideView | None = None


class Operator:
    def __init__(self, store: Store) -> None:
        self.store = store

    def pin(self, service: str, revision: int | None, *, who: str, why: str = "") -> Done:
        """Hold ``service`` at ``revision`` (default: the one running now) until unpinned."""
        view = self._service(service)
        target = revision if revision is not None else view.running_revision
        if target is None:
            raise OperatorError(f"{service}: nothing is running to pin; name a revision")
        chosen = self._revision(service, target)
        override = self.store.overrides.set(service, OverrideKind.PINNED, who=who, why=why, revision_id=chosen.id)
        return Done(service, view.source, f"{service} pinned to revision {chosen.id} ({chosen.sha[:7]})", override)

    def rollback(self, service: str, revision: int | None, *, who: str, why: str = "") -> Done:
        """Deploy an earlier revision (default: the last good one before the running one) and pin it."""
        view = self._service(service)
        if revision is None:
            good = self.store.history.last_good_revision(service, exclude=view.running_revision)
            if good is None:
                raise OperatorError(f"{service}: no earlier revision ever passed its health gate; name one")
            revision = good.id
        done = self.pin(service, revision, who=who, why=why or "rollback")
        return Done(service, view.source, f"{service} rolling back to revision {revision}; pinned until unpinned",
                    done.override)

    def unpin(self, service: str, *, who: str) -> Done:
        return self._clear(service, OverrideKind.PINNED, who, f"{service} unpinned; it follows its branch again",
                           f"{service} was not pinned")

    def suspend(self, service: str, *, who: str, why: str = "") -> Done:
        return self._set(service, OverrideKind.SUSPENDED, who, why, f"{service} suspended: deployer leaves it as it is")

    def resume(self, service: str, *, who: str) -> Done:
        return self._clear(service, OverrideKind.SUSPENDED, who, f"{service} resumed", f"{service} was not suspended")

    def stop(self, service: str, *, who: str, why: str = "") -> Done:
        """The desired state becomes "stopped": passes, pushes and restarts of deployer keep it until started."""
        return self._set(service, OverrideKind.STOPPED, who, why,
                         f"{service} stopped: it stays stopped until `deployer start`")

    def start(self, service: str, *, who: str) -> Done:
        return self._clear(service, OverrideKind.STOPPED, who, f"{service} started", f"{service} was not stopped")

    def _set(self, service: str, kind: OverrideKind, who: str, why: str, message: str) -> Done:
        view = self._service(service)
        override = self.store.overrides.set(service, kind, who=who, why=why)
        return Done(service, view.source, message, override)

    def _clear(self, service: str, kind: OverrideKind, who: str, cleared: str, absent: str) -> Done:
        view = self._service(service)
        done = self.store.overrides.clear(service, kind, who=who)
        return Done(service, view.source, cleared if done else absent)

    def _service(self, name: str) -> ServiceView:
        view = self.store.views.service(name)
        if view is None:
            raise UnknownService(name)
        return view

    def _revision(self, service: str, revision_id: int) -> RevisionView:
        revision = self.store.history.get_revision(revision_id)
        if revision is None or revision.service != service:
            raise OperatorError(f"{service}: revision {revision_id} is not one of its revisions "
                                f"(see `deployer history {service}`)")
        return revision
