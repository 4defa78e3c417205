"""The reconciler driven through the in-memory runtime: a real git repo and a real
(SQLite) store, a fake runtime and a scripted health gate, so every path of a
deploy — success, failure, rollback, hold, isolation, prune — is checked as data."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from deployer.errors import BuildError, Reason
from deployer.health import HealthCheckFailed, Probe
from deployer.hooks import HookRunner
from deployer.model.status import Trigger
from deployer.reconcile import HostChecks, Reconciler, ReconcilerConfig, SourceSpec, assemble
from deployer.secrets import SecretStore
from deployer.store import Store
from tests.helpers import GitRepo
from tests.memory_runtime import MemoryRuntime


@dataclass(frozen=True)
class FakeBuild:
    env_dir: Path
    key: str = "k" * 64
    reused: bool = True
    duration: float = 0.0
    output_tail: str = ""
    summary: str = ""


class FakeBuilder:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.calls: list[tuple[Path, str | None]] = []
    def ensure(self, service_dir: Path, requirements: str | None) -> FakeBuild:
        self.calls.append((service_dir, requirements))
        if "unbuildable" in (service_dir / "app.py").read_text(errors="replace"):
            raise BuildError(f"{service_dir.name}: no matching distribution for numpy==0.0.1")
        return FakeBuild(env_dir=self.root)


class Gate:
    """Health as data: the set of ports that are 'unhealthy' right now."""

    def __init__(self) -> None:
        self.unhealthy: set[int] = set()

    def wait(self, url: str, *, timeout: float, interval: float, failed: Callable[[], str | None]) -> float:
        port = int(url.split(":")[2].split("/")[0])
        if port in self.unhealthy or "broken" in url:
            raise HealthCheckFailed(f"{url} not healthy after {timeout:g}s")
        return 0.01

    def probe(self, url: str, timeout: float = 2.0) -> Probe:
        return Probe("broken" not in url, "HTTP 200")


def manifest(*services: dict[str, Any]) -> str:
    lines = ["services:"]
    for service in services:
        lines.append(f"  - name: {service['name']}")
        lines.append(f"    command: {service.get('command', 'python app.py --port ${PORT}')}")
        for key in ("path", "port"):
            if key in service:
                lines.append(f"    {key}: {service[key]}")
        if "health" in service:
            lines.append(f"    health: {{path: {service['health']}}}")
        if "secrets" in service:
            lines.append(f"    secrets: [{', '.join(service['secrets'])}]")
    return "\n".join(lines) + "\n"


@pytest.fixture
def world(tmp_path: Path) -> dict[str, Any]:
    repo = GitRepo.create(tmp_path / "bare.git", tmp_path / "work")
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    store.migrate()
    world = {"repo": repo, "store": store, "runtime": MemoryRuntime("supervisor"), "gate": Gate(), "tmp": tmp_path,
             "builder": FakeBuilder(tmp_path / "env")}
    make_reconciler(world)
    return world


def make_reconciler(world: dict[str, Any], *, hooks: HookRunner | None = None, port_grace: float = 0.0,
                    port_bounds: tuple[int, int] = (9100, 9199), port_is_free: Callable[[int], bool] = lambda _: True,
                    port_holder: Callable[[int], str | None] = lambda _: None) -> Reconciler:
    """The reconciler as the daemon wires it, on the in-memory runtime with a scripted health gate."""
    tmp, gate = world["tmp"], world["gate"]
    config = ReconcilerConfig(state_dir=tmp / "state", port_bounds=port_bounds, port_grace=port_grace)
    host = HostChecks(port_is_free=port_is_free, port_holder=port_holder, wait_healthy=gate.wait, probe=gate.probe)
    builder = world.setdefault("builder", FakeBuilder(tmp / "env"))
    reconciler = assemble(world["store"], {"supervisor": world["runtime"]}, builder,  # type: ignore[arg-type]
                          SecretStore(tmp / "secrets"), config, host, hooks=hooks)
    reconciler.add_source(SourceSpec("repo", str(world["repo"].bare), "main"))
    world["reconciler"] = reconciler
    return reconciler


def two_services(**overrides: Any) -> str:
    a = {"name": "alpha", "path": "alpha", **overrides.get("alpha", {})}
    b = {"name": "beta", "path": "beta", **overrides.get("beta", {})}
    return manifest(a, b)


def files(text: str, alpha: str = "print('a')\n", beta: str = "print('b')\n") -> dict[str, str | bytes | None]:
    return {"service.yaml": text, "alpha/app.py": alpha, "beta/app.py": beta}


def run(world: dict[str, Any]) -> dict[str, str]:
    result = world["reconciler"].reconcile_source("repo", trigger=Trigger.WEBHOOK)
    assert result.error is None, result.error
    return dict(result.outcomes)


def test_first_pass_creates_everything_and_second_pass_is_noop(world: dict[str, Any]) -> None:
    world["repo"].commit(files(two_services()), "two services")
    assert run(world) == {"alpha": "succeeded", "beta": "succeeded"}
    store: Store = world["store"]
    assert {view.name: view.running_sha for view in store.views.services()} == {
        "alpha": world["repo"].shas[-1], "beta": world["repo"].shas[-1]}
    applies = [call for call in world["runtime"].calls if call[0] == "apply"]

    assert run(world) == {"alpha": "noop", "beta": "noop"}
    assert [call for call in world["runtime"].calls if call[0] == "apply"] == applies
    ports = {view.name: view.port for view in store.views.services()}
    assert len(set(ports.values())) == 2 and all(9100 <= port <= 9199 for port in ports.values())


def test_change_in_one_folder_redeploys_only_that_service(world: dict[str, Any]) -> None:
    repo = world["repo"]
    repo.commit(files(two_services()), "two services")
    run(world)
    repo.commit({"beta/app.py": "print('b2')\n"}, "beta only")
    assert run(world) == {"alpha": "noop", "beta": "succeeded"}


def test_unhealthy_revision_rolls_back_and_is_not_reapplied(world: dict[str, Any]) -> None:
    repo, store = world["repo"], world["store"]
    repo.commit(files(two_services()), "good")
    run(world)
    good = store.views.service("alpha")
    assert good is not None
    repo.commit(files(two_services(alpha={"health": "/broken"})), "alpha never healthy")
    assert run(world) == {"alpha": "rolled_back", "beta": "noop"}

    attempt = store.history.attempts("alpha", 1)[0]
    assert attempt.reason == Reason.HEALTH_CHECK_FAILED.value
    assert attempt.rolled_back_to == good.running_revision
    assert [step.name for step in attempt.steps][-2:] == ["rollback-apply", "rollback-health"]
    view = store.views.service("alpha")
    assert view is not None and view.running_revision == good.running_revision
    assert view.desired_sha == repo.shas[-1] and view.running_sha == repo.shas[-2]

    assert run(world) == {"alpha": "held", "beta": "noop"}
    assert store.history.attempts("alpha", 1)[0].id == attempt.id, "a known-bad spec is not retried"

    repo.commit(files(two_services()), "fixed")
    assert run(world)["alpha"] in ("succeeded", "noop")


def test_a_build_failure_leaves_the_serving_revision_untouched(world: dict[str, Any]) -> None:
    """Nothing was stopped before the build: the old process is not restarted to "roll back" to itself."""
    repo, store, runtime = world["repo"], world["store"], world["runtime"]
    repo.commit(files(two_services()), "good")
    run(world)
    good = store.views.service("alpha")
    assert good is not None
    calls = len(runtime.calls)
    repo.commit({"alpha/app.py": "print('unbuildable')\n"}, "alpha needs a version that does not exist")
    assert run(world) == {"alpha": "rolled_back", "beta": "noop"}
    attempt = store.history.attempts("alpha", 1)[0]
    assert attempt.reason == Reason.BUILD_FAILED.value and attempt.rolled_back_to == good.running_revision
    assert f"revision {good.running_revision} kept serving" in attempt.message, attempt.message
    touched = [call for call in runtime.calls[calls:] if call[0] in ("apply", "start", "stop", "remove")]
    assert touched == [], touched


def test_a_build_failure_while_nothing_serves_puts_the_last_good_revision_back(world: dict[str, Any]) -> None:
    repo, store, runtime = world["repo"], world["store"], world["runtime"]
    repo.commit(files(two_services()), "good")
    run(world)
    good = store.views.service("alpha")
    assert good is not None
    runtime.stop("alpha")  # it died on its own
    repo.commit({"alpha/app.py": "print('unbuildable')\n"}, "broken build")
    assert run(world)["alpha"] == "rolled_back"
    attempt = store.history.attempts("alpha", 1)[0]
    assert f"rolled back to revision {good.running_revision}" in attempt.message, attempt.message
    assert [step.name for step in attempt.steps][-1] == "rollback-health"


def test_failure_without_a_previous_revision_is_recorded_failed(world: dict[str, Any]) -> None:
    world["repo"].commit(files(manifest({"name": "solo", "health": "/broken"})) | {"app.py": "x"}, "bad")
    assert run(world) == {"solo": "failed"}
    attempt = world["store"].history.attempts("solo", 1)[0]
    assert attempt.outcome == "failed" and attempt.rolled_back_to is None


def test_apply_error_in_one_service_does_not_block_the_other(world: dict[str, Any]) -> None:
    world["runtime"].fail_next.add("alpha")
    world["repo"].commit(files(two_services()), "two")
    outcomes = run(world)
    assert outcomes == {"alpha": "failed", "beta": "succeeded"}
    assert world["store"].history.attempts("alpha", 1)[0].reason == Reason.APPLY_FAILED.value


def test_invalid_manifest_is_recorded_once_and_changes_nothing(world: dict[str, Any]) -> None:
    repo, store, runtime = world["repo"], world["store"], world["runtime"]
    repo.commit(files(two_services()), "good")
    run(world)
    before = dict(runtime.services)
    repo.commit({"service.yaml": "services:\n  - name: Alpha\n"}, "broken")
    result = world["reconciler"].reconcile_source("repo", trigger=Trigger.WEBHOOK)
    assert result.error is not None
    assert runtime.services == before
    attempt = store.history.attempts("alpha", 1)[0]
    assert attempt.reason == Reason.MANIFEST_INVALID.value
    assert "services[0].name" in attempt.message
    world["reconciler"].reconcile_source("repo", trigger=Trigger.SCHEDULE, fetch=False)
    assert store.history.attempts("alpha", 1)[0].id == attempt.id, "recorded once per commit"


def test_service_removed_from_manifest_is_pruned(world: dict[str, Any]) -> None:
    repo, store, runtime = world["repo"], world["store"], world["runtime"]
    repo.commit(files(two_services()), "two")
    run(world)
    repo.commit({"service.yaml": manifest({"name": "alpha", "path": "alpha"}), "beta/app.py": None}, "drop beta")
    assert run(world) == {"alpha": "noop", "beta": "removed"}
    assert "beta" not in runtime.services and "beta" not in store.services.inventory("repo")
    assert store.ports.of("beta") is None


def test_missing_secret_waits_without_marking_the_revision_bad(world: dict[str, Any]) -> None:
    repo, store = world["repo"], world["store"]
    repo.commit(files(manifest({"name": "solo", "secrets": ["HF_TOKEN"]})) | {"app.py": "x"}, "needs a secret")
    assert run(world) == {"solo": "waiting"}
    attempt = store.history.attempts("solo", 1)[0]
    assert attempt.reason == Reason.SECRET_MISSING.value and "HF_TOKEN" in attempt.message

    secrets = world["tmp"] / "secrets"
    secrets.mkdir()
    (secrets / "HF_TOKEN").write_text("hf_s3cr3t-value\n")
    assert run(world) == {"solo": "succeeded"}
    deployment = world["runtime"].deployments["solo"]
    assert deployment.secret_env == {"HF_TOKEN": "hf_s3cr3t-value"}
    assert "hf_s3cr3t" not in repr(deployment)
    assert all("hf_s3cr3t" not in str(revision.spec) for revision in store.history.revisions("solo"))


def test_stopped_service_is_started_again(world: dict[str, Any]) -> None:
    world["repo"].commit(files(two_services()), "two")
    run(world)
    world["runtime"].stop("alpha")
    outcomes = world["reconciler"].reconcile_source("repo", trigger=Trigger.SCHEDULE, fetch=False).outcomes
    assert outcomes == {"alpha": "succeeded", "beta": "noop"}
    assert world["runtime"].services["alpha"].state.value == "running"


def test_fixed_port_clash_with_another_service_is_a_clear_error(world: dict[str, Any]) -> None:
    repo, store = world["repo"], world["store"]
    text = manifest({"name": "alpha", "path": "alpha", "port": 9150}, {"name": "beta", "path": "beta", "port": 9150})
    repo.commit(files(text), "same fixed port twice")
    outcomes = run(world)
    assert sorted(outcomes.values()) == ["stalled", "succeeded"]
    loser = next(name for name, outcome in outcomes.items() if outcome == "stalled")
    winner = "alpha" if loser == "beta" else "beta"
    message = store.history.attempts(loser, 1)[0].message
    assert "9150" in message and winner in message


def test_fixed_port_held_by_a_foreign_process_names_it(world: dict[str, Any]) -> None:
    import socket

    from deployer.ports import holder, is_free

    with socket.socket() as foreign:
        foreign.bind(("127.0.0.1", 0))
        foreign.listen()
        port = foreign.getsockname()[1]
        reconciler = make_reconciler(world, port_is_free=is_free, port_holder=holder, port_bounds=(1024, 65535))
        world["repo"].commit(files(manifest({"name": "alpha", "path": "alpha", "port": port},
                                            {"name": "beta", "path": "beta"})), "fixed port taken")
        outcomes = reconciler.reconcile_source("repo", trigger=Trigger.WEBHOOK).outcomes
    assert outcomes["alpha"] == "stalled" and outcomes["beta"] == "succeeded"
    message = world["store"].history.attempts("alpha", 1)[0].message
    assert f"port {port} is already in use by pid {__import__('os').getpid()} (" in message


def test_auto_port_skips_a_recently_released_one(world: dict[str, Any]) -> None:
    repo, store = world["repo"], world["store"]
    keep = {"name": "keep", "path": "beta"}
    repo.commit(files(manifest({"name": "alpha", "path": "alpha"}, keep)), "alpha and keep")
    run(world)
    freed = store.ports.of("alpha")
    repo.commit({"service.yaml": manifest(keep)}, "drop alpha")
    assert run(world) == {"alpha": "removed", "keep": "noop"}

    make_reconciler(world, port_grace=3600)
    repo.commit({"service.yaml": manifest(keep, {"name": "newcomer", "path": "alpha"})}, "newcomer")
    run(world)
    assert store.ports.of("newcomer") not in (freed, store.ports.of("keep"))


def test_a_source_removed_from_the_config_keeps_its_services_unless_allowed(world: dict[str, Any]) -> None:
    reconciler: Reconciler = world["reconciler"]
    store, runtime = world["store"], world["runtime"]
    world["repo"].commit(files(two_services()), "two")
    run(world)
    assert reconciler.retire_source("repo", allow_empty=False) == []
    assert set(runtime.services) == {"alpha", "beta"}
    assert "still owns alpha, beta" in reconciler.sources.errors()["repo"]

    assert reconciler.retire_source("repo", allow_empty=True) == ["alpha", "beta"]
    assert runtime.services == {} and store.services.inventory("repo") == set()
    assert store.history.attempts("alpha", 1)[0].reason == "Pruned"


def test_an_unreachable_runtime_holds_its_services_instead_of_recreating_them(world: dict[str, Any]) -> None:
    runtime, store = world["runtime"], world["store"]
    world["repo"].commit(files(two_services()), "two")
    run(world)
    runtime.down = True
    applies = [call for call in runtime.calls if call[0] == "apply"]
    world["repo"].commit({"alpha/app.py": "print('a2')\n"}, "change while the runtime is down")
    assert run(world) == {"alpha": "waiting", "beta": "waiting"}
    assert [call for call in runtime.calls if call[0] == "apply"] == applies
    view = store.views.service("alpha")
    assert view is not None and view.state == "unknown" and not view.healthy
    runtime.down = False
    assert run(world) == {"alpha": "succeeded", "beta": "noop"}


def test_service_hooks_run_as_steps_and_a_failing_pre_deploy_hook_fails_the_attempt(world: dict[str, Any]) -> None:
    hooks = world["tmp"] / "global-hooks"
    hooks.mkdir()
    (hooks / "on-failure").write_text("#!/bin/sh\necho \"operator told: $DEPLOYER_SERVICE $DEPLOYER_EVENT\"\n")
    (hooks / "on-failure").chmod(0o755)
    make_reconciler(world, hooks=HookRunner(hooks, timeout=10))
    hooks_line = "    hooks: {pre_deploy: fetch.sh, post_deploy: done.sh}\n"
    text = manifest({"name": "solo"}).replace("    command:", hooks_line + "    command:")
    world["repo"].commit({"service.yaml": text, "app.py": "x",
                          "fetch.sh": "echo fetching model for $DEPLOYER_SERVICE on port $PORT\n",
                          "done.sh": "echo deployed $DEPLOYER_SHA\n"}, "hooks")
    assert run(world) == {"solo": "succeeded"}
    steps = {step.name: step for step in world["store"].history.attempts("solo", 1)[0].steps}
    assert list(steps)[:4] == ["checkout", "build", "pre_deploy", "apply"] and "post_deploy" in steps
    assert "fetching model for solo on port 91" in steps["pre_deploy"].output_tail
    assert world["repo"].shas[-1] in steps["post_deploy"].output_tail

    world["repo"].commit({"fetch.sh": "echo model server unreachable; exit 3\n"}, "a hook that fails")
    assert run(world) == {"solo": "rolled_back"}
    attempt = world["store"].history.attempts("solo", 1)[0]
    assert attempt.reason == "HookFailed" and "pre-deploy hook fetch.sh exited with 3" in attempt.message
    steps = {step.name: step for step in attempt.steps}
    assert not steps["pre_deploy"].ok and "model server unreachable" in steps["pre_deploy"].output_tail
    assert "operator told: solo on-failure" in steps["global-on-failure"].output_tail


def test_fifty_code_only_commits_leave_a_bounded_number_of_checkouts(world: dict[str, Any]) -> None:
    from deployer.reconcile.sources import KEEP_NEWEST

    repo = world["repo"]
    repo.commit(files(two_services()), "two")
    run(world)
    for index in range(50):
        repo.commit({"alpha/app.py": f"print({index})\n"}, f"code only {index}")
        run(world)
    checkouts = world["tmp"] / "state" / "checkouts" / "repo"
    kept = sorted(entry.name for entry in checkouts.iterdir())
    # The newest few heads, and what runs (alpha and beta at their last good revisions) — nothing else.
    assert len(kept) <= KEEP_NEWEST + 2, kept
    assert repo.shas[-1] in kept
    beta = world["store"].views.service("beta")
    assert beta is not None and beta.running_sha in kept  # beta last changed in the first commit: still there


def test_requirements_are_chosen_by_one_rule_shared_with_the_build(world: dict[str, Any]) -> None:
    from deployer.build import resolve_requirements

    pyproject = '[project]\nname = "svc"\nversion = "1"\ndependencies = ["requests>=2"]\n'
    world["repo"].commit({**files(two_services()), "alpha/pyproject.toml": pyproject,
                          "alpha/requirements.txt": "flask\n"}, "both files in alpha")
    run(world)
    revision = world["store"].history.revisions("alpha", 1)[0]
    chosen = resolve_requirements(world["tmp"] / "work" / "alpha", None)
    assert revision.spec["requirements"] == chosen.origin == "pyproject.toml"


def test_source_errors_can_be_read_while_passes_write_them(world: dict[str, Any]) -> None:
    import threading

    registry = world["reconciler"].sources
    stop = threading.Event()

    def write() -> None:
        index = 0
        while not stop.is_set():
            registry.set_error(f"s{index % 500}", "down")
            registry.clear_error(f"s{(index + 250) % 500}")
            index += 1

    writer = threading.Thread(target=write)
    writer.start()
    try:
        for _ in range(2000):  # what the page does: iterate every error
            sorted(registry.errors().items())
    finally:
        stop.set()
        writer.join()


def test_a_revert_to_the_tree_that_runs_is_converged_not_failing(world: dict[str, Any]) -> None:
    repo, store = world["repo"], world["store"]
    repo.commit(files(two_services()), "good")
    run(world)
    repo.commit(files(two_services(alpha={"health": "/broken"})), "alpha never healthy")
    assert run(world)["alpha"] == "rolled_back"
    head = repo.commit(files(two_services()), "revert to the good tree")
    assert run(world) == {"alpha": "noop", "beta": "noop"}  # nothing to deploy: that spec runs already
    view = store.views.service("alpha")
    assert view is not None and view.running_sha == view.desired_sha == head
    assert view.running_revision == view.desired_revision


def test_when_an_attempt_reads_finished_the_service_already_shows_what_runs(world: dict[str, Any],
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A redeploy in place records "starting"; the state after it is recorded before the attempt's end,
    so nobody reads a succeeded attempt beside a service still "starting"."""
    store: Store = world["store"]
    world["repo"].commit(files(two_services()), "two services")
    run(world)
    seen_at_finish: list[tuple[str, str, bool]] = []
    finish = store.history.finish_attempt

    def finishing(attempt: int, outcome: Any, *args: Any, **kwargs: Any) -> None:
        view = next(view for view in store.views.services() if view.name == "alpha")
        seen_at_finish.append((outcome.value, view.state, view.healthy))
        finish(attempt, outcome, *args, **kwargs)

    monkeypatch.setattr(store.history, "finish_attempt", finishing)
    world["repo"].commit(files(two_services(), alpha="print('a2')\n"), "alpha changes")
    assert run(world)["alpha"] == "succeeded"
    assert seen_at_finish == [("succeeded", "running", True)]
