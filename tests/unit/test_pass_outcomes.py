"""What an operation says about the pass it followed: each service's line names the attempt that pass
started (or why it started none: up to date, held), and a source's line sums the pass up — on the
reconciler as the daemon wires it (in-memory runtime, scripted gate, real git and store)."""

from __future__ import annotations

from typing import Any

from deployer.model.status import Trigger
from deployer.reconcile import PassResult
from deployer.web.outcomes import service_in_pass, source_pass
from tests.unit.test_reconcile import files, two_services, world  # noqa: F401  (world is the fixture)


def reconcile(world: dict[str, Any], retry: frozenset[str] = frozenset()) -> PassResult:  # noqa: F811
    result: PassResult = world["reconciler"].reconcile_source("repo", trigger=Trigger.CLI, retry=retry)
    return result


def test_each_service_line_names_the_attempt_its_pass_started(world: dict[str, Any]) -> None:  # noqa: F811
    repo, store = world["repo"], world["store"]
    repo.commit(files(two_services()), "two services")
    first = reconcile(world)
    for name in ("alpha", "beta"):
        line = service_in_pass(store, name, first)
        newest = store.history.attempts(name, 1)[0]
        assert (line.ok, line.outcome, line.attempt, line.revision) == (True, "succeeded", newest.id, newest.revision)
        assert line.message.startswith("ReconciliationSucceeded: revision") and "is healthy" in line.message
    summary = source_pass("repo", first)
    assert summary.ok and summary.outcome == "succeeded" and "succeeded: alpha, beta" in summary.message

    again = reconcile(world)
    quiet = service_in_pass(store, "alpha", again)
    assert (quiet.ok, quiet.outcome, quiet.attempt) == (True, "noop", None) and quiet.message.startswith("up to date")
    assert source_pass("repo", again).outcome == "noop" and "2 up to date" in source_pass("repo", again).message

    repo.commit(files(two_services(alpha={"health": "/broken"})), "alpha never healthy")
    broken = reconcile(world)
    line = service_in_pass(store, "alpha", broken)
    assert (line.ok, line.outcome, line.attempt) == (False, "rolled_back", store.history.attempts("alpha", 1)[0].id)
    assert "HealthCheckFailed" in line.message
    summary = source_pass("repo", broken)
    assert summary.ok is False and "rolled_back: alpha" in summary.message and "1 up to date" in summary.message

    held = service_in_pass(store, "alpha", reconcile(world))
    assert held.outcome == "held" and held.attempt is None and held.message.startswith("held: revision")
    retried = service_in_pass(store, "alpha", reconcile(world, frozenset({"alpha"})))
    assert retried.outcome == "rolled_back" and retried.attempt == store.history.attempts("alpha", 1)[0].id


def test_a_pass_that_could_not_read_its_source_fails_every_line(world: dict[str, Any]) -> None:  # noqa: F811
    failed = PassResult(source="repo", error="cannot fetch repo: remote unreachable")
    line = service_in_pass(world["store"], "alpha", failed)
    assert line.ok is False and "remote unreachable" in line.message
    summary = source_pass("repo", failed)
    assert summary.ok is False and summary.message == "cannot fetch repo: remote unreachable"
