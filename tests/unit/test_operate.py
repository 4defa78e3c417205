"""Stop, start and restart by hand, driven through the in-memory runtime and a real store:
"stopped" is a desired state every pass keeps (new commits recorded, not started; drift
stopped again), a start deploys through the gate, a restart rolls the running revision out
again and a failed restart puts it back as it was."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from deployer.health import HealthCheckFailed
from deployer.model.plan import ActionKind
from deployer.model.status import OverrideKind, Trigger
from deployer.operator import Operator
from deployer.store import Store
from tests.helpers import GitRepo
from tests.memory_runtime import MemoryRuntime
from tests.unit.test_reconcile import Gate, files, make_reconciler, run, two_services


@pytest.fixture
def world(tmp_path: Path) -> dict[str, Any]:
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    store.migrate()
    world = {"repo": GitRepo.create(tmp_path / "bare.git", tmp_path / "work"), "store": store,
             "runtime": MemoryRuntime("supervisor"), "gate": Gate(), "tmp": tmp_path}
    make_reconciler(world)
    return world


def stop(world: dict[str, Any], name: str, why: str = "free the GPU") -> None:
    Operator(world["store"]).stop(name, who="ada@host", why=why)
    done = world["reconciler"].stop(name, note=f"ada@host: {why}")
    assert done.ok and done.outcome == "stopped", done


def state(world: dict[str, Any], name: str) -> str:
    return str(world["runtime"].services[name].state.value)


def test_stop_holds_across_passes_new_commits_and_drift_until_started(world: dict[str, Any]) -> None:
    repo, store = world["repo"], world["store"]
    repo.commit(files(two_services()), "two")
    run(world)
    first = store.views.service("alpha").running_revision
    stop(world, "alpha")
    assert state(world, "alpha") == "stopped"
    assert run(world) == {"alpha": "stopped", "beta": "noop"}, "a pass does not start a stopped service"

    repo.commit(files(two_services(), alpha="print('a2')\n"), "alpha changes while stopped")
    assert run(world) == {"alpha": "stopped", "beta": "noop"}
    view = store.views.service("alpha")
    assert view.desired_revision != first and view.running_revision == first, "recorded, not started"
    assert view.override == OverrideKind.STOPPED.value
    planned = dict((action.service, action) for _, action in world["reconciler"].preview())
    assert planned["alpha"].kind is ActionKind.NOOP
    reason = planned["alpha"].reason
    assert "not started while stopped" in reason and "ada@host: free the GPU" in reason

    world["runtime"].start("alpha")  # something started it by hand: the desired state is still "stopped"
    assert run(world)["alpha"] == "stopped"
    assert state(world, "alpha") == "stopped"
    assert store.history.attempts("alpha", 1)[0].trigger == Trigger.DRIFT.value

    Operator(store).start("alpha", who="ada@host")
    done = world["reconciler"].start("alpha", note="ada@host")
    assert done.ok and done.outcome == "started", done
    view = store.views.service("alpha")
    assert state(world, "alpha") == "running" and view.running_revision == view.desired_revision
    assert view.override is None
    assert run(world) == {"alpha": "noop", "beta": "noop"}


def test_stop_survives_a_new_reconciler_on_the_same_store(world: dict[str, Any]) -> None:
    world["repo"].commit(files(two_services()), "two")
    run(world)
    stop(world, "beta")
    make_reconciler(world)  # deployer restarted: the override is in the store
    assert run(world) == {"alpha": "noop", "beta": "stopped"}
    assert state(world, "beta") == "stopped"


def test_restart_rolls_the_running_revision_out_again_through_the_gate(world: dict[str, Any]) -> None:
    repo, store = world["repo"], world["store"]
    repo.commit(files(two_services()), "two")
    run(world)
    before = store.views.service("alpha")
    applied = world["runtime"].calls.count(("apply", "alpha"))
    done = world["reconciler"].restart("alpha", note="ada@host: reload the model")
    assert done.ok and done.outcome == "restarted", done
    attempt = store.history.attempts("alpha", 1)[0]
    assert attempt.trigger == "restart" and attempt.reason == "Restarted"
    assert attempt.revision == before.running_revision and "ada@host: reload the model" in attempt.message
    assert [step.name for step in attempt.steps][-2:] == ["apply", "health"]
    assert world["runtime"].calls.count(("apply", "alpha")) == applied + 1, "the process was started again"


def test_a_restart_that_fails_its_gate_puts_the_same_revision_back(world: dict[str, Any]) -> None:
    repo, store = world["repo"], world["store"]
    repo.commit(files(two_services()), "one good revision only")
    run(world)
    running = store.views.service("alpha").running_revision
    port = store.views.service("alpha").port
    failures = iter([True])  # the restarted process fails its gate once; started again it passes
    real_wait = world["gate"].wait

    def wait(url: str, **kwargs: Any) -> float:
        if f":{port}/" in url and next(failures, False):
            raise HealthCheckFailed("not healthy after 1s")
        return real_wait(url, **kwargs)

    world["gate"].wait = wait
    make_reconciler(world)
    done = world["reconciler"].restart("alpha", note="ada")
    assert not done.ok and done.outcome == "rolled_back", done
    attempt = store.history.attempts("alpha", 1)[0]
    assert attempt.rolled_back_to == running
    assert state(world, "alpha") == "running" and store.views.service("alpha").running_revision == running


def test_restart_of_a_stopped_service_is_skipped_not_started(world: dict[str, Any]) -> None:
    world["repo"].commit(files(two_services()), "two")
    run(world)
    stop(world, "alpha")
    done = world["reconciler"].restart("alpha", note="ada")
    assert done.ok and done.outcome == "skipped" and "deployer start alpha" in done.message
    assert state(world, "alpha") == "stopped"


def test_stopped_override_round_trips_in_the_store(world: dict[str, Any]) -> None:
    world["repo"].commit(files(two_services()), "two")
    run(world)
    store: Store = world["store"]
    Operator(store).stop("alpha", who="ada", why="maintenance")
    assert store.overrides.active()["alpha"][OverrideKind.STOPPED].why == "maintenance"
    assert Operator(store).start("alpha", who="bob").message == "alpha started"
    assert "alpha" not in store.overrides.active()
    assert store.overrides.history("alpha")[0].cleared_by == "bob"


def test_a_pass_that_listed_before_an_operator_action_leaves_that_service_to_the_next_pass(
        world: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    world["repo"].commit(files(two_services()), "two")
    run(world)
    reconciler, store = world["reconciler"], world["store"]
    world["runtime"].stop("alpha")  # what the listing sees: alpha down (a restart in its middle, say)
    listing = reconciler.rooms.observer.list

    def list_then_restart() -> Any:
        seen = listing()
        assert reconciler.restart("alpha", note="ada").ok  # the operator acts between listing and execution
        return seen

    monkeypatch.setattr(reconciler.rooms.observer, "list", list_then_restart)
    outcomes = reconciler.reconcile_source("repo", trigger=Trigger.SCHEDULE, fetch=False).outcomes
    assert outcomes == {"alpha": "deferred", "beta": "noop"}
    assert store.history.attempts("alpha", 1)[0].trigger == Trigger.RESTART.value, "no stale drift redeploy"
    monkeypatch.undo()
    assert run(world) == {"alpha": "noop", "beta": "noop"}
