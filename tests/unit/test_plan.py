"""The planner as table-driven cases (tests/unit/data/plan_cases.yaml), each with an
idempotence check: apply the plan to a fake world, plan again, and only noops remain."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml import YAML

from deployer.model.actual import ActualService, ServiceState
from deployer.model.desired import DesiredService
from deployer.model.plan import ActionKind, Plan, plan

CASES = YAML(typ="safe").load((Path(__file__).parent / "data" / "plan_cases.yaml").read_text())


def desired(name: str, variant: str) -> DesiredService:
    return DesiredService(name=name, source="repo", sha="a" * 40, tree=f"tree-{variant}", runtime="supervisor",
                          command="python app.py", argv=("python", "app.py"), port=8800,
                          env={"VARIANT": variant})


def actual(name: str, spec: dict[str, str]) -> ActualService:
    return ActualService(name=name, runtime="supervisor", state=ServiceState(spec["state"]),
                         spec_hash=desired(name, spec["variant"]).spec_hash)


def apply(result: Plan, world: dict[str, ActualService]) -> dict[str, ActualService]:
    """What a runtime would look like after carrying out ``result``."""
    after = dict(world)
    for action in result.actions:
        if action.kind is ActionKind.REMOVE:
            after.pop(action.service)
        elif action.kind in (ActionKind.CREATE, ActionKind.UPDATE, ActionKind.START):
            assert action.desired is not None
            after[action.service] = ActualService(action.service, "supervisor", ServiceState.RUNNING,
                                                  spec_hash=action.desired.spec_hash)
    return after


@pytest.mark.parametrize("case", CASES, ids=[case["name"] for case in CASES])
def test_plan_case(case: dict[str, Any]) -> None:
    want = {name: desired(name, variant) for name, variant in case.get("desired", {}).items()}
    world = {name: actual(name, spec) for name, spec in case.get("actual", {}).items()}
    inventory = set(case.get("inventory", []))
    prune = case.get("prune", True)

    result = plan(want, world, inventory, prune=prune)
    assert {action.service: action.kind.value for action in result.actions} == case["expect"]
    assert all(action.reason for action in result.actions), "every action carries its reason"

    settled = apply(result, world)
    again = plan(want, settled, inventory, prune=prune)
    assert again.converged, [action.describe() for action in again.actions if action.changes]


def test_spec_hash_ignores_provenance_but_not_content() -> None:
    one = desired("a", "v1")
    assert one.model_copy(update={"sha": "b" * 40, "source": "other"}).spec_hash == one.spec_hash
    assert one.model_copy(update={"port": 8801}).spec_hash != one.spec_hash
    assert one.model_copy(update={"tree": "changed"}).spec_hash != one.spec_hash


def test_plan_is_deterministic() -> None:
    want = {name: desired(name, "v1") for name in ("c", "a", "b")}
    assert plan(want, {}, set()) == plan(dict(reversed(list(want.items()))), {}, set())
