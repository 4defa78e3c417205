"""What an operation says about the pass it followed: each service's line names the attempt that pass
started (or why it started none: up to date, held), and a source's line sums the pass up — on the
reconciler as the daemon wires it (in-memory runtime, scripted gate, real git and store)."""

from __future__ import annotations

from typing import Any

from deployer.model.status import Trigger
from deployer.operations import ItemResult
from deployer.reconcile import PassResult
from deployer.web.outcomes import service_in_pass, source_pass
from tests.unit.test_reconcile import files, two_services, world  # noqa: F401  (world is the fixture)


def reconcile(world: dict[str, Any], retry: frozenset[str] = frozenset()) -> PassResult:  # noqa: F811
    result: PassResult = world["reconciler"].reconcile_source("repo", trigger=Trigger.CLI, retry=retry)
    return result


def line(world: dict[str, Any], service: str, retry: frozenset[str] = frozenset()) -> ItemResult:  # noqa: F811
    """``service``'s line of a pass asked for now."""
    since = world["store"].history.newest_started(service)
    return service_in_pass(world["store"], service, reconcile(world, retry), since=since)


def test_each_service_line_names_the_attempt_its_pass_started(world: dict[str, Any]) -> None:  # noqa: F811
    repo, store = world["repo"], world["store"]
    repo.commit(files(two_services()), "two services")
    first = reconcile(world)
    for name in ("alpha", "beta"):
        said = service_in_pass(store, name, first, since=None)
        newest = store.history.attempts(name, 1)[0]
        assert (said.ok, said.outcome, said.attempt, said.revision) == (True, "succeeded", newest.id, newest.revision)
        assert said.message.startswith("ReconciliationSucceeded: revision") and "is healthy" in said.message
    summary = source_pass("repo", first)
    assert summary.ok and summary.outcome == "succeeded" and "succeeded: alpha, beta" in summary.message

    quiet = line(world, "alpha")
    assert (quiet.ok, quiet.outcome, quiet.attempt) == (True, "noop", None) and quiet.message.startswith("up to date")
    again = source_pass("repo", reconcile(world))
    assert again.outcome == "noop" and "2 up to date" in again.message

    repo.commit(files(two_services(alpha={"health": "/broken"})), "alpha never healthy")
    since = store.history.newest_started("alpha")
    broken = reconcile(world)
    said = service_in_pass(store, "alpha", broken, since=since)
    assert (said.ok, said.outcome, said.attempt) == (False, "rolled_back", store.history.attempts("alpha", 1)[0].id)
    assert "HealthCheckFailed" in said.message
    summary = source_pass("repo", broken)
    assert summary.ok is False and "rolled_back: alpha" in summary.message and "1 up to date" in summary.message

    held = line(world, "alpha")
    assert held.outcome == "held" and held.attempt is None and held.message.startswith("held: revision")
    retried = line(world, "alpha", frozenset({"alpha"}))
    assert retried.outcome == "rolled_back" and retried.attempt == store.history.attempts("alpha", 1)[0].id


def test_a_pass_that_could_not_read_its_source_fails_every_line(world: dict[str, Any]) -> None:  # noqa: F811
    failed = PassResult(source="repo", error="cannot fetch repo: remote unreachable")
    said = service_in_pass(world["store"], "alpha", failed, since=None)
    assert said.ok is False and "remote unreachable" in said.message
    summary = source_pass("repo", failed)
    assert summary.ok is False and summary.message == "cannot fetch repo: remote unreachable"


def test_an_attempt_a_running_pass_made_for_the_request_is_the_one_named(world: dict[str, Any]) -> None:  # noqa: F811
    """A pass already running when an override was recorded may deploy it; the pass serving the request
    then finds nothing to do: the line names that newer attempt, not "up to date"."""
    repo, store = world["repo"], world["store"]
    repo.commit(files(two_services()), "two services")
    reconcile(world)
    since = store.history.newest_started("alpha")
    repo.commit(files(two_services(alpha={"port": 9150})), "alpha moves")
    reconcile(world)  # the pass that was running
    serving = reconcile(world)  # the pass that served the request: nothing left to do
    assert serving.outcomes["alpha"] == "noop" and "alpha" not in serving.attempts
    said = service_in_pass(store, "alpha", serving, since=since)
    newest = store.history.attempts("alpha", 1)[0]
    assert (said.ok, said.outcome, said.attempt) == (True, "succeeded", newest.id) and newest.id != since
    assert service_in_pass(store, "alpha", serving, since=newest.id).outcome == "noop"
