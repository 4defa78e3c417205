"""Truthful state and held failures, driven through the in-memory runtime (tests/unit/test_reconcile.py's world):
the gate notices a dead process at once, a crash after the gate is shown and recorded, the probe after a
rollback asks the service's own health path, failure reasons say the root cause once, and ``plan`` says
exactly what the next pass does — the retry rule included."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from deployer.errors import RuntimeUnavailable
from deployer.health import HealthCheckFailed, Probe, wait_healthy
from deployer.model.actual import ActualService, ServiceState
from deployer.model.cause import readable_paths, root_cause
from deployer.model.status import Trigger
from deployer.reconcile import crashes
from deployer.reconcile.gate import _Watch
from tests.helpers import wait_for
from tests.memory_runtime import MemoryRuntime
from tests.unit.test_reconcile import files, make_reconciler, manifest, run, two_services
from tests.unit.test_reconcile import world as world  # the fixture

SHA = "0123456789abcdef0123456789abcdef01234567"
TRACEBACK = f"""INFO:     Started server process [4242]
Traceback (most recent call last):
  File "/var/lib/deployer/checkouts/acme/text-classify/{SHA}/svc/server.py", line 3, in <module>
    import model
  File "/var/lib/deployer/checkouts/acme/text-classify/{SHA}/svc/model.py", line 1
    def load(:
             ^
SyntaxError: invalid syntax
"""


# -- the root cause, once ----------------------------------------------------------


def test_a_crash_loops_output_gives_its_root_cause_once_with_repository_paths() -> None:
    cause = root_cause(TRACEBACK * 5)
    assert cause == "SyntaxError: invalid syntax (at svc/model.py:1)"
    assert "/var/lib/deployer" not in readable_paths(TRACEBACK)


def test_an_exception_inside_a_package_names_the_package_file_not_the_environment() -> None:
    output = ('Traceback (most recent call last):\n  File "/state/envs/ab12/lib/python3.11/site-packages/'
              'sklearn/base.py", line 9, in load\n    raise ValueError("pickle from 1.2")\n'
              'ValueError: pickle from 1.2\n')
    assert root_cause(output) == "ValueError: pickle from 1.2 (at site-packages/sklearn/base.py:9)"


def test_without_a_traceback_the_last_distinct_error_lines() -> None:
    output = "starting\nERROR: [Errno 98] address already in use\n" * 4 + "shutting down\n"
    assert root_cause(output) == "ERROR: [Errno 98] address already in use"
    assert root_cause("") == ""
    assert root_cause(TRACEBACK + "serving\nstill serving\nand more\nRuntimeError: lost the model store\n") == \
        "RuntimeError: lost the model store", "an error said after the last traceback is the newer one"
    epilogue = TRACEBACK + "ERROR:    Application startup failed. Exiting.\n"
    assert root_cause(epilogue) == "SyntaxError: invalid syntax (at svc/model.py:1)"
    assert len(root_cause("error " + "x" * 1000)) <= 300


# -- the gate: a dead process ends the wait at once -----------------------------------


def test_the_gate_fails_at_once_when_the_process_is_restarted_by_its_runtime() -> None:
    runtime = MemoryRuntime()
    runtime.services["svc"] = ActualService("svc", "supervisor", ServiceState.RUNNING, pid=100)
    clock = [0.0]

    def probe(url: str, timeout: float) -> Probe:
        clock[0] += 1.0
        if clock[0] >= 3:  # the process died 3 s after its start; supervisord restarted it
            runtime.services["svc"] = replace(runtime.services["svc"], pid=int(100 + clock[0]))
        return Probe(False, "ConnectError: refused")

    with pytest.raises(HealthCheckFailed, match=r"restarted by supervisor \(pid 100, now pid 10[34]\)"):
        wait_healthy("http://127.0.0.1:1/health", timeout=60, interval=0.0,
                     failed=_Watch(runtime, "svc", clock=lambda: clock[0]), probe=probe, clock=lambda: clock[0],
                     sleep=lambda _: None)
    assert clock[0] < 10, "well before the 60 s timeout"


class ReloadingRuntime(MemoryRuntime):
    """A runtime that tells its reloads apart (supervisord's SIGHUP restarts every process)."""

    def __init__(self) -> None:
        super().__init__()
        self.generation_now: str | None = "start-1"

    def generation(self) -> str | None:
        return self.generation_now


@pytest.mark.parametrize("reloaded", [True, False])
def test_a_restart_by_a_reload_of_the_runtime_is_retried_not_held_against_the_revision(reloaded: bool) -> None:
    runtime = ReloadingRuntime()
    runtime.services["svc"] = ActualService("svc", "supervisor", ServiceState.RUNNING, pid=100)
    clock = [0.0]

    def probe(url: str, timeout: float) -> Probe:
        clock[0] += 1.0
        if clock[0] == 3:  # every process restarted: by a reload, or this one died on its own
            runtime.services["svc"] = replace(runtime.services["svc"], pid=200)
            runtime.generation_now = "start-2" if reloaded else "start-1"
        return Probe(False, "ConnectError: refused")

    expected = (RuntimeUnavailable, "restarted every process") if reloaded else (HealthCheckFailed, "pid 100")
    with pytest.raises(expected[0], match=expected[1]):
        wait_healthy("http://127.0.0.1:1/health", timeout=60, interval=0.0,
                     failed=_Watch(runtime, "svc", clock=lambda: clock[0]), probe=probe, clock=lambda: clock[0],
                     sleep=lambda _: None)


@pytest.mark.parametrize("state", [ServiceState.STOPPED, ServiceState.FAILED])
def test_the_gate_fails_at_once_when_the_process_exited(state: ServiceState) -> None:
    runtime = MemoryRuntime()
    runtime.services["svc"] = ActualService("svc", "supervisor", state, detail="Exited too quickly")
    with pytest.raises(HealthCheckFailed, match="process failed before becoming healthy"):
        wait_healthy("http://127.0.0.1:1/health", timeout=60, interval=0.0, failed=_Watch(runtime, "svc"),
                     probe=lambda url, timeout: Probe(False, "refused"), sleep=lambda _: None)


# -- observation after an attempt ---------------------------------------------------


def test_after_a_rollback_a_service_is_probed_on_its_own_health_path(world: dict[str, Any]) -> None:
    asked: list[str] = []

    def probe(url: str, timeout: float = 2.0) -> Probe:
        asked.append(url)
        return Probe(url.endswith("/ready"), "HTTP 200" if url.endswith("/ready") else "HTTP 404")

    world["gate"].probe = probe
    make_reconciler(world)
    repo, store = world["repo"], world["store"]
    repo.commit(files(two_services(alpha={"health": "/ready"}, beta={"health": "/ready"})), "good, on /ready")
    run(world)
    repo.commit(files(two_services(alpha={"health": "/broken"}, beta={"health": "/ready"})), "alpha never healthy")
    assert run(world)["alpha"] == "rolled_back"
    view = store.views.service("alpha")
    assert view is not None and view.healthy and view.state == "running", view
    assert all(url.endswith("/ready") for url in asked), asked
    assert run(world)["alpha"] == "held"
    view = store.views.service("alpha")
    assert view is not None and view.healthy, view


# -- a crash after the gate -----------------------------------------------------------


def _probe_now(world: dict[str, Any]) -> None:
    observer = world["reconciler"].rooms.observer
    for watched in observer._watched.values():
        watched.due = 0.0
    observer.probe_due()


def test_a_service_that_crash_loops_after_its_gate_is_shown_failing_and_recorded(
        world: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    answering = {"alpha": True}
    world["gate"].probe = lambda url, timeout=2.0: Probe(answering["alpha"] or ":91" not in url, "HTTP 200")
    make_reconciler(world)
    runtime: MemoryRuntime = world["runtime"]
    store = world["store"]
    world["repo"].commit(files(manifest({"name": "alpha", "path": "alpha"})), "alpha")
    assert run(world) == {"alpha": "succeeded"}
    runtime.services["alpha"] = replace(runtime.services["alpha"], pid=10)
    assert run(world) == {"alpha": "noop"}

    answering["alpha"] = False  # it dies 3 s after each start; supervisord restarts it (a new pid each time)
    runtime.services["alpha"] = replace(runtime.services["alpha"], pid=11)
    _probe_now(world)
    view = store.views.service("alpha")
    assert view is not None and view.state == "failed" and not view.healthy, view
    assert "crash loop after its gate passed" in view.detail and "pid 10, now 11" in view.detail
    attempt = store.history.attempts("alpha", 1)[0]
    assert (attempt.trigger, attempt.outcome, attempt.reason) == ("drift", "failed", "CrashLoop")

    runtime.services["alpha"] = replace(runtime.services["alpha"], pid=12)
    assert run(world) == {"alpha": "noop"}  # the pass does not take the listing's RUNNING for health
    view = store.views.service("alpha")
    assert view is not None and view.state == "failed", view
    assert store.history.attempts("alpha", 1)[0].id == attempt.id, "recorded once per crash"

    answering["alpha"] = True  # fixed outside (say, its database is back): stable, answering
    _probe_now(world)
    view = store.views.service("alpha")
    assert view is not None and view.state == "failed", "recovered only once no restart was seen for a while"
    monkeypatch.setattr(crashes, "CRASH_WINDOW", 0.2)

    def recovered() -> bool:
        _probe_now(world)
        view = store.views.service("alpha")
        return view is not None and view.state == "running" and view.healthy

    wait_for(recovered, 10, "alpha recovered")
    assert store.history.attempts("alpha", 1)[0].reason == "Recovered"
    assert run(world) == {"alpha": "noop"}, "a recovered spec is not held"


# -- held failures: the retry rule, and plan == pass --------------------------------


def _planned(world: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {action.service: (action.kind.value, action.reason) for _, action in world["reconciler"].preview()}


def _passed(world: dict[str, Any], **options: Any) -> dict[str, tuple[str, str]]:
    result = world["reconciler"].reconcile_source("repo", trigger=options.pop("trigger", Trigger.SCHEDULE),
                                                  fetch=False, **options)
    assert result.plan is not None, result.error
    return {action.service: (action.kind.value, action.reason) for action in result.plan.actions}


def test_a_held_failure_is_retried_only_when_asked_by_name(world: dict[str, Any]) -> None:
    repo, store = world["repo"], world["store"]
    repo.commit(files(two_services()), "good")
    run(world)
    repo.commit(files(two_services(alpha={"health": "/broken"})), "alpha never healthy")
    assert run(world)["alpha"] == "rolled_back"
    failed = store.history.attempts("alpha", 1)[0]
    revision = store.views.service("alpha").desired_revision  # type: ignore[union-attr]

    kind, reason = _planned(world)["alpha"]
    assert kind == "noop" and reason.startswith(f"held: revision {revision} failed (HealthCheckFailed: "), reason
    assert "`deployer reconcile alpha --retry`" in reason
    # An explicit `deployer reconcile` (no --retry) holds it like any pass: no new outage.
    assert world["reconciler"].reconcile_source("repo", trigger=Trigger.CLI, fetch=False).outcomes["alpha"] == "held"
    assert store.history.attempts("alpha", 1)[0].id == failed.id
    # --retry NAME tries it again (and only it).
    outcome = world["reconciler"].reconcile_source("repo", trigger=Trigger.CLI, fetch=False, retry={"alpha"})
    assert outcome.outcomes == {"alpha": "rolled_back", "beta": "noop"}


CASES = {
    "nothing deployed": [("commit", two_services())],
    "a new commit": [("commit", two_services()), ("pass", None), ("commit", two_services(alpha={"port": 9177}))],
    "held failure": [("commit", two_services()), ("pass", None),
                     ("commit", two_services(alpha={"health": "/broken"})), ("pass", None)],
    "revert to the good tree": [("commit", two_services()), ("pass", None),
                                ("commit", two_services(alpha={"health": "/broken"})), ("pass", None),
                                ("commit", two_services())],
    "stopped by hand": [("commit", two_services()), ("pass", None), ("stop", "beta")],
    "removed from the manifest": [("commit", two_services()), ("pass", None),
                                  ("commit", manifest({"name": "alpha", "path": "alpha"}))],
    "held, then a commit that changes it": [("commit", two_services()), ("pass", None),
                                            ("commit", two_services(alpha={"health": "/broken"})), ("pass", None),
                                            ("commit", two_services(alpha={"health": "/broken", "port": 9178}))],
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_plan_says_exactly_what_the_next_pass_does(world: dict[str, Any], case: str) -> None:
    for step, value in CASES[case]:
        if step == "commit":
            assert isinstance(value, str)
            world["repo"].commit(files(value), case)
        elif step == "pass":
            run(world)
        else:
            world["runtime"].stop(value)
    world["reconciler"].sources.get("repo").fetch()
    planned = _planned(world)
    assert planned == _passed(world)
    assert _passed(world) == _planned(world), "and again once that pass is done"


def test_a_health_failure_takes_only_error_lines_as_its_cause() -> None:
    """A process that runs but answers its health path wrongly logs ordinary lines: they are no cause."""
    ordinary = 'text-classify listening on 127.0.0.1:8800\n127.0.0.1 "GET /nope HTTP/1.1" 404 -\n'
    assert root_cause(ordinary, errors_only=True) == ""
    assert root_cause(ordinary)  # elsewhere (a start that failed) the last lines are all there is
    broken = ordinary + "OSError: model.bin: No such file or directory\n"
    assert root_cause(broken, errors_only=True) == "OSError: model.bin: No such file or directory"


def test_a_swarm_service_short_of_tasks_is_degraded_recorded_as_drift_and_not_held(world: dict[str, Any]) -> None:
    from deployer.web.app import degraded_services
    from deployer.web.presenters import condition

    make_reconciler(world)
    runtime: MemoryRuntime = world["runtime"]
    store = world["store"]
    world["repo"].commit(files(manifest({"name": "alpha", "path": "alpha"})), "alpha")
    assert run(world) == {"alpha": "succeeded"}
    why = "node 10.0.0.2 down; no suitable node (1 node not available for new tasks)"
    runtime.services["alpha"] = replace(runtime.services["alpha"], degraded=why, addresses=("10.0.0.1",),
                                        detail="service x img: 1/2 tasks running (10.0.0.1 running)")
    assert run(world) == {"alpha": "noop"}  # swarm reschedules by itself: deployer does not redeploy
    view = store.views.service("alpha")
    assert view is not None and view.state == "degraded" and view.detail.startswith(f"degraded: {why}; service x")
    assert (condition(view).label, condition(view).tone.value) == ("degraded", "warn")
    assert degraded_services(store) == {"alpha": view.detail}
    attempt = store.history.attempts("alpha", 1)[0]
    assert (attempt.trigger, attempt.outcome, attempt.reason) == ("drift", "failed", "Degraded")
    revision = store.history.get_revision(view.running_revision)
    assert revision is not None and store.history.last_failure("alpha", revision.spec_hash) is None  # no fault of it
    assert run(world) == {"alpha": "noop"} and store.history.attempts("alpha", 1)[0].id == attempt.id  # once

    runtime.services["alpha"] = replace(runtime.services["alpha"], degraded="", addresses=("10.0.0.1", "10.0.0.2"))
    assert run(world) == {"alpha": "noop"}
    view = store.views.service("alpha")
    assert view is not None and view.state == "running" and degraded_services(store) == {}
    recovered = store.history.attempts("alpha", 1)[0]
    assert (recovered.trigger, recovered.outcome, recovered.reason) == ("drift", "succeeded", "Recovered")
