"""The plan: a pure function from desired, actual and inventory to actions.

``plan`` does no I/O. Change is decided by spec hash, never by "a push
happened"; every action, ``noop`` included, carries its reason.
"""

from __future__ import annotations

from collections.abc import Mapping, Set
from dataclasses import dataclass, field
from enum import StrEnum

from deployer.model.actual import ActualService, ServiceState
from deployer.model.desired import DesiredService


class ActionKind(StrEnum):
    CREATE = "create"
    UPDATE = "update"
    START = "start"
    STOP = "stop"
    REMOVE = "remove"
    NOOP = "noop"


@dataclass(frozen=True)
class Action:
    service: str
    kind: ActionKind
    reason: str
    desired: DesiredService | None = None

    @property
    def changes(self) -> bool:
        return self.kind is not ActionKind.NOOP

    def describe(self) -> str:
        return f"{self.kind.value:<6} {self.service}: {self.reason}"


@dataclass(frozen=True)
class Plan:
    actions: tuple[Action, ...] = field(default_factory=tuple)

    @property
    def converged(self) -> bool:
        return not any(action.changes for action in self.actions)

    def for_service(self, name: str) -> Action | None:
        return next((action for action in self.actions if action.service == name), None)


_NOT_UP = {ServiceState.STOPPED, ServiceState.FAILED}


def plan(
    desired: Mapping[str, DesiredService],
    actual: Mapping[str, ActualService],
    inventory: Set[str],
    *,
    prune: bool = True,
) -> Plan:
    """Decide, per service, what to do so that actual matches desired."""
    actions = [_plan_one(want, actual.get(name)) for name, want in sorted(desired.items())]
    for name in sorted(set(actual) - set(desired)):
        actions.append(_plan_orphan(name, actual[name], inventory, prune))
    return Plan(tuple(actions))


def _plan_one(want: DesiredService, have: ActualService | None) -> Action:
    name = want.name
    if have is None or not have.present:
        return Action(name, ActionKind.CREATE, "not deployed yet", want)
    if have.spec_hash != want.spec_hash:
        before = (have.spec_hash or "unknown")[:12]
        return Action(name, ActionKind.UPDATE, f"spec changed {before} -> {want.short_hash}", want)
    if have.state in _NOT_UP:
        return Action(name, ActionKind.START, f"{have.state.value}, expected running", want)
    return Action(name, ActionKind.NOOP, f"up to date at {want.short_hash}", want)


def _plan_orphan(name: str, have: ActualService, inventory: Set[str], prune: bool) -> Action:
    if name not in inventory:
        return Action(name, ActionKind.NOOP, "not in deployer's inventory, left alone")
    if not have.present:
        return Action(name, ActionKind.NOOP, "already removed")
    if not prune:
        return Action(name, ActionKind.NOOP, "no longer desired, pruning is off")
    return Action(name, ActionKind.REMOVE, "no longer in any manifest")
