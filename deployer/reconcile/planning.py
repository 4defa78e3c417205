"""Planning a pass: the branch's desired state, bent by pins, stops, suspensions, held failures and down runtimes.

``plan_pass`` is pure: the pass gathers its inputs (one listing, the overrides,
the pinned revisions, which specs failed before) and gets back the plan, what
each service deploys, and which services wait for their runtime. ``deployer plan``
runs the same function, so it says exactly what a pass would do.
"""

from __future__ import annotations

from collections.abc import Mapping, Set
from dataclasses import dataclass, field

from deployer.model.actual import ActualService, ServiceState
from deployer.model.desired import DesiredService
from deployer.model.plan import Action, ActionKind, Plan, plan
from deployer.model.status import OverrideKind, OverrideView, RevisionView


@dataclass(frozen=True)
class PassInputs:
    desired: Mapping[str, DesiredService]  # from the branch head
    revisions: Mapping[str, RevisionView]  # the revision of each of those
    inventory: Set[str]
    actual: Mapping[str, ActualService]
    down: Mapping[str, str]  # unreachable runtime -> why
    runtime_of: Mapping[str, str]  # the runtime each known service was recorded on
    overrides: Mapping[str, Mapping[OverrideKind, OverrideView]]
    pinned: Mapping[int, RevisionView]  # revision id -> revision, for every active pin
    prune: bool = True
    relocate: Mapping[str, str] = field(default_factory=dict)  # service -> why it moves (on or off the gateway)


@dataclass(frozen=True)
class PassPlan:
    plan: Plan
    revisions: dict[str, RevisionView] = field(default_factory=dict)
    waiting: frozenset[str] = frozenset()  # their runtime is unreachable
    suspended: frozenset[str] = frozenset()  # an operator suspended them; changes are only shown
    held: frozenset[str] = frozenset()  # their wanted spec failed before: a new commit or a --retry
    stopped: frozenset[str] = frozenset()  # an operator stopped them: kept stopped, new revisions only recorded

    def changing(self) -> list[Action]:
        return [action for action in self.plan.actions if action.changes]


def plan_pass(inputs: PassInputs) -> PassPlan:
    """Decide every service of one source: deploy, remove, hold, wait or leave alone — each with its reason."""
    desired, revisions = _with_pins(inputs)
    waiting = _waiting(inputs, desired)
    planned = plan({name: want for name, want in desired.items() if name not in waiting}, inputs.actual,
                   set(inputs.inventory) - set(waiting), prune=inputs.prune)
    held = [Action(name, ActionKind.NOOP, reason, desired.get(name)) for name, reason in sorted(waiting.items())]
    moved = [_stopped(_relocated(action, inputs), inputs, revisions) for action in planned.actions]
    actions = [_suspended(action, inputs) for action in [*moved, *held]]
    suspended = frozenset(a.service for a, b in zip(actions, [*moved, *held], strict=True) if a is not b)
    stopped = frozenset(name for name in inputs.overrides if OverrideKind.STOPPED in inputs.overrides[name])
    return PassPlan(Plan(tuple(actions)), revisions, frozenset(waiting), suspended, stopped=stopped)


def hold_failed(planned: PassPlan, failed: Mapping[str, str]) -> PassPlan:
    """Changes to a spec that failed before become noops, saying why (``failed``: service -> its failure).

    The retry rule: a held spec is tried again only by ``deployer reconcile NAME --retry``, a new
    commit that changes the spec, or a commit back to a tree that runs (then nothing is to be done).
    """
    actions = []
    for action in planned.plan.actions:
        if action.service in failed and action.changes and action.kind not in _NOT_DEPLOYS:
            revision = planned.revisions.get(action.service)
            label = f"revision {revision.id}" if revision is not None else "this spec"
            action = Action(action.service, ActionKind.NOOP,
                            f"held: {label} failed ({_short(failed[action.service])}); would {action.kind.value}: "
                            f"retried by a new commit or `deployer reconcile {action.service} --retry`",
                            action.desired)
        actions.append(action)
    held = frozenset(failed) & {action.service for action in planned.changing()}
    return PassPlan(Plan(tuple(actions)), planned.revisions, planned.waiting, planned.suspended, held,
                    planned.stopped)


def _short(why: str, limit: int = 160) -> str:
    first = why.strip().splitlines()[0] if why.strip() else "no reason recorded"
    return first if len(first) <= limit else first[: limit - 1] + "…"


def _with_pins(inputs: PassInputs) -> tuple[dict[str, DesiredService], dict[str, RevisionView]]:
    """A pinned service wants its pinned revision, whatever the branch head says."""
    desired, revisions = dict(inputs.desired), dict(inputs.revisions)
    for name in sorted(set(desired) | set(inputs.inventory)):
        pin = inputs.overrides.get(name, {}).get(OverrideKind.PINNED)
        revision = inputs.pinned.get(pin.revision) if pin is not None and pin.revision is not None else None
        if revision is not None:
            desired[name] = DesiredService.model_validate(revision.spec)
            revisions[name] = revision
    return desired, revisions


def _waiting(inputs: PassInputs, desired: Mapping[str, DesiredService]) -> dict[str, str]:
    """Services of an unreachable runtime are held, not planned as absent (that would "create" the unseen)."""
    if not inputs.down:
        return {}
    runtime_of = {**inputs.runtime_of, **{name: want.runtime for name, want in desired.items()}}
    return {name: f"runtime {runtime_of[name]} unreachable, waiting: {inputs.down[runtime_of[name]]}"
            for name in sorted(set(desired) | set(inputs.inventory)) if runtime_of.get(name) in inputs.down}


def _relocated(action: Action, inputs: PassInputs) -> Action:
    """A service that runs as wanted but on the wrong side of the gateway is deployed again, there."""
    why = inputs.relocate.get(action.service)
    if why is None or action.desired is None or action.kind not in (ActionKind.NOOP, ActionKind.START):
        return action
    return Action(action.service, ActionKind.UPDATE, why, action.desired)


_NOT_DEPLOYS = (ActionKind.REMOVE, ActionKind.STOP)
_UP = (ServiceState.RUNNING, ServiceState.STARTING)


def _stopped(action: Action, inputs: PassInputs, revisions: Mapping[str, RevisionView]) -> Action:
    """An operator's stop is the desired state: a running instance is stopped, nothing is started or updated.

    A new commit is recorded (its revision exists) but waits for ``deployer start``; a service no
    manifest wants any more is still removed.
    """
    stop = inputs.overrides.get(action.service, {}).get(OverrideKind.STOPPED)
    if stop is None or action.kind is ActionKind.REMOVE:
        return action
    why = f"stopped by {stop.who}" + (f": {stop.why}" if stop.why else "")
    seen = inputs.actual.get(action.service)
    if seen is not None and seen.present and seen.state in _UP:
        return Action(action.service, ActionKind.STOP, f"{why} (desired state: stopped)", action.desired)
    if action.kind in (ActionKind.CREATE, ActionKind.UPDATE):
        revision = revisions.get(action.service)
        label = f"revision {revision.id} ({revision.sha[:7]})" if revision is not None else "a new revision"
        return Action(action.service, ActionKind.NOOP,
                      f"{why}; {label} recorded, not started while stopped (`deployer start` starts it)",
                      action.desired)
    return Action(action.service, ActionKind.NOOP, f"{why}; `deployer start` starts it", action.desired)


def _suspended(action: Action, inputs: PassInputs) -> Action:
    suspended = inputs.overrides.get(action.service, {}).get(OverrideKind.SUSPENDED)
    if suspended is None or not action.changes:
        return action
    why = f": {suspended.why}" if suspended.why else ""
    return Action(action.service, ActionKind.NOOP,
                  f"suspended by {suspended.who}{why} (would {action.kind.value}: {action.reason})", action.desired)
