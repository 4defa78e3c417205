"""JSON shapes of the API's answers (DESIGN.md §11): plain dicts from store views and results.

No I/O: the routes in ``api`` read, these only say how it looks on the wire.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from deployer.model.diff import MASK, Change, flatten
from deployer.model.plan import Action
from deployer.model.status import AttemptView, DemoView, OverrideView, RevisionView, ServiceView
from deployer.operations import ItemKind, Operation


def iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment is not None else None


def attempt_json(attempt: AttemptView | None, *, steps: bool = False) -> dict[str, Any] | None:
    if attempt is None:
        return None
    data: dict[str, Any] = {
        "id": attempt.id,
        "revision": attempt.revision,
        "trigger": attempt.trigger,
        "outcome": attempt.outcome,
        "reason": attempt.reason,
        "message": attempt.message,
        "started_at": iso(attempt.started_at),
        "finished_at": iso(attempt.finished_at),
        "rolled_back_to": attempt.rolled_back_to,
    }
    if steps:
        data["steps"] = [
            {"name": step.name, "duration": round(step.duration, 4), "ok": step.ok, "output": step.output_tail}
            for step in attempt.steps
        ]
    return data


def service_json(view: ServiceView, gateway: str = "") -> dict[str, Any]:
    """One service for scripts; ``gateway`` is the gateway's base URL (empty when it is off)."""
    return {
        "name": view.name,
        "source": view.source,
        "runtime": view.runtime,
        "state": view.state,
        "healthy": view.healthy,
        "port": view.port,
        "desired_sha": view.desired_sha,
        "running_sha": view.running_sha,
        "desired_revision": view.desired_revision,
        "running_revision": view.running_revision,
        "last_attempt": attempt_json(view.last_attempt),
        "override": view.override,
        "observed_at": iso(view.observed_at),
        "detail": view.detail,
        "gateway_url": f"{gateway}{view.gateway_path}" if gateway and view.gateway_path else None,
        "slot": view.slot,
    }


def revision_json(revision: RevisionView) -> dict[str, Any]:
    return {
        "id": revision.id,
        "sha": revision.sha,
        "author": revision.author,
        "message": revision.message,
        "spec_hash": revision.spec_hash,
        "created_at": iso(revision.created_at),
        "spec": masked_spec(revision.spec),
    }


def masked_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """Secret values never enter a spec (only names); env values under secret-looking keys and literal
    demo header values are masked too (a ``{secret: NAME}`` header shows its name)."""
    masked = dict(spec)
    env = spec.get("env")
    if isinstance(env, dict):
        flat = flatten({"env": env})
        masked["env"] = {key: flat[f"env.{key}"] if flat.get(f"env.{key}") == MASK else value
                         for key, value in env.items()}
    demos = spec.get("demo")
    if isinstance(demos, list):
        masked["demo"] = [_masked_demo(demo) for demo in demos]
    return masked


def _masked_demo(demo: Any) -> Any:
    if not isinstance(demo, dict) or not isinstance(demo.get("headers"), dict):
        return demo
    return {**demo, "headers": {name: value if isinstance(value, dict) else MASK
                                for name, value in demo["headers"].items()}}


def override_json(override: OverrideView) -> dict[str, Any]:
    return {
        "id": override.id,
        "kind": override.kind,
        "revision": override.revision,
        "who": override.who,
        "why": override.why,
        "created_at": iso(override.created_at),
        "cleared_at": iso(override.cleared_at),
        "cleared_by": override.cleared_by,
    }


def change_json(change: Change) -> dict[str, Any]:
    return {"path": change.path, "kind": change.kind, "old": change.old, "new": change.new}


def action_json(source: str, action: Action) -> dict[str, Any]:
    return {"source": source, "service": action.service, "kind": action.kind.value, "reason": action.reason}


def demo_json(view: DemoView) -> dict[str, Any]:
    return {
        "name": view.name, "revision": view.revision, "ok": view.ok, "status": view.status,
        "latency_ms": view.latency_ms, "content_type": view.content_type, "text": view.text,
        "body_file": view.body_file, "truncated": view.truncated, "problems": view.problems,
        "created_at": iso(view.created_at),
    }


def operation_json(operation: Operation) -> dict[str, Any]:
    """An operation and each item's outcome so far (``ok`` null until it is done). An item names a
    ``service`` or, for a pass over a whole source, a ``source`` (the other is null)."""
    return {
        "id": operation.id,
        "action": operation.action,
        "created_at": iso(operation.created_at),
        "done": operation.done,
        "items": [{"service": item.name if item.kind is ItemKind.SERVICE else None,
                   "source": item.name if item.kind is ItemKind.SOURCE else None,
                   "state": item.state, "ok": item.ok, "outcome": item.outcome, "message": item.message,
                   "attempt": item.attempt, "revision": item.revision} for item in operation.items],
    }
