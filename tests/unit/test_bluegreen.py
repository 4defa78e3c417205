"""Blue/green behind the gateway, driven as data: the in-memory runtime, a scripted health gate and a
gateway that records every route table it is given (or refuses one).

A new revision starts in the idle slot while the serving one is untouched; only after its gate does
the route switch, then the old slot is drained and stopped. A failed gate stops only the new slot.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import pytest

from deployer.errors import DeployerError, GatewayUnavailable
from deployer.hooks import HookRunner
from deployer.model.status import Trigger
from deployer.reconcile import HostChecks, ReconcilerConfig, Route, SourceSpec, assemble
from deployer.secrets import SecretStore
from deployer.store import Store
from tests.helpers import GitRepo
from tests.memory_runtime import MemoryRuntime
from tests.unit.test_reconcile import FakeBuilder, Gate, manifest


class RecordingGateway:
    def __init__(self) -> None:
        self.tables: list[tuple[Route, ...]] = []
        self.refuse = False
        self.missing = False

    def check(self) -> str | None:
        if self.missing:
            raise GatewayUnavailable("nginx not found: apt-get install nginx")
        return None

    def apply(self, routes: Sequence[Route], *, handover: Callable[[], None] | None = None) -> str:
        if handover is not None:  # as nginx does: after the candidate passed nginx -t, before the reload
            handover()
        if self.refuse:
            raise DeployerError("nginx: [emerg] bind() to 127.0.0.1:9100 failed (98: Address already in use)")
        self.tables.append(tuple(routes))
        return str(len(self.tables))

    def upstream(self, service: str) -> int:
        route = next(route for route in self.tables[-1] if route.service == service)
        return route.upstreams[0]


@pytest.fixture
def world(tmp_path: Any) -> dict[str, Any]:
    repo = GitRepo.create(tmp_path / "bare.git", tmp_path / "work")
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    store.migrate()
    runtime, gate, gateway = MemoryRuntime("supervisor"), Gate(), RecordingGateway()
    config = ReconcilerConfig(state_dir=tmp_path / "state", port_bounds=(9100, 9199), slot_bounds=(9800, 9899),
                              drain=0.0)
    host = HostChecks(port_is_free=lambda _: True, wait_healthy=gate.wait, probe=gate.probe)
    reconciler = assemble(store, {"supervisor": runtime}, FakeBuilder(tmp_path / "env"),  # type: ignore[arg-type]
                          SecretStore(tmp_path / "secrets"), config, host, hooks=HookRunner(), gateway=gateway)
    reconciler.add_source(SourceSpec("repo", str(repo.bare), "main"))
    return {"repo": repo, "store": store, "runtime": runtime, "gate": gate, "gateway": gateway,
            "reconciler": reconciler}


def run(world: dict[str, Any]) -> dict[str, str]:
    result = world["reconciler"].reconcile_source("repo", trigger=Trigger.WEBHOOK)
    assert result.error is None, result.error
    return dict(result.outcomes)


def commit(world: dict[str, Any], version: str, *, health: str = "/health", strategy: str = "") -> None:
    text = manifest({"name": "clf", "health": health})
    text += f"    env: {{VERSION: '{version}'}}\n    gateway: {{path: /ai/clf/}}\n"
    if strategy:
        text += f"    rollout: {{strategy: {strategy}}}\n"
    world["repo"].commit({"service.yaml": text, "app.py": f"print('{version}')\n"}, version)


def test_a_change_starts_the_idle_slot_switches_then_stops_the_old_one(world: dict[str, Any]) -> None:
    store, runtime, gateway = world["store"], world["runtime"], world["gateway"]
    commit(world, "v1")
    assert run(world) == {"clf": "succeeded"}
    ports = store.slots.ports("clf", (9800, 9899), lambda _: True)
    assert store.slots.active("clf") == "blue" and set(runtime.services) == {"clf--blue"}
    first = gateway.tables[-1][0]
    assert (first.upstreams, first.port, first.path) == ((ports["blue"],), store.ports.of("clf"), "/ai/clf/")

    commit(world, "v2")
    assert run(world) == {"clf": "succeeded"}
    assert store.slots.active("clf") == "green" and gateway.upstream("clf") == ports["green"]
    assert set(runtime.services) == {"clf--green"}  # the old slot was stopped after the switch
    order = [call for call in runtime.calls if call[0] in ("apply", "remove") and call[1].startswith("clf")]
    assert order[-2:] == [("apply", "clf--green"), ("remove", "clf--blue")]  # started before the old one stopped
    steps = [step.name for step in store.history.attempts("clf", 1)[0].steps]
    assert steps[-3:] == ["health", "switch", "drain"]
    assert run(world) == {"clf": "noop"}  # converged: the serving slot is what the pass sees


def test_a_failed_gate_stops_only_the_new_slot_and_is_recorded_as_rolled_back(world: dict[str, Any]) -> None:
    store, runtime, gateway = world["store"], world["runtime"], world["gateway"]
    commit(world, "v1")
    run(world)
    tables, serving = len(gateway.tables), store.views.service("clf").running_revision
    commit(world, "v2", health="/broken")
    assert run(world) == {"clf": "rolled_back"}
    attempt = store.history.attempts("clf", 1)[0]
    assert attempt.reason == "HealthCheckFailed" and attempt.rolled_back_to == serving
    assert "kept serving (blue-green: it was never stopped)" in attempt.message
    assert not any(step.name.startswith("rollback-") for step in attempt.steps)  # nothing was rolled out again
    assert set(runtime.services) == {"clf--blue"} and store.slots.active("clf") == "blue"
    assert len(gateway.tables) == tables  # the route never moved
    assert ("apply", "clf--blue") not in runtime.calls[-6:]  # the serving slot was not restarted


def test_a_refused_switch_keeps_the_old_slot_serving(world: dict[str, Any]) -> None:
    store, runtime, gateway = world["store"], world["runtime"], world["gateway"]
    commit(world, "v1")
    run(world)
    gateway.refuse = True
    commit(world, "v2")
    assert run(world) == {"clf": "rolled_back"}
    assert store.slots.active("clf") == "blue" and set(runtime.services) == {"clf--blue"}
    assert "Address already in use" in store.history.attempts("clf", 1)[0].message


def test_recreate_replaces_the_serving_slot_in_place(world: dict[str, Any]) -> None:
    store, runtime = world["store"], world["runtime"]
    commit(world, "v1", strategy="recreate")
    run(world)
    commit(world, "v2", strategy="recreate")
    assert run(world) == {"clf": "succeeded"}
    assert store.slots.active("clf") == "blue" and set(runtime.services) == {"clf--blue"}
    assert runtime.services["clf--blue"].revision == store.views.service("clf").running_revision


def test_a_service_running_before_the_gateway_moves_behind_it(world: dict[str, Any], tmp_path: Any) -> None:
    store, runtime = world["store"], world["runtime"]
    commit(world, "v1")
    gate = world["gate"]
    plain = assemble(store, {"supervisor": runtime}, FakeBuilder(tmp_path / "env"),  # type: ignore[arg-type]
                     SecretStore(tmp_path / "secrets"),
                     ReconcilerConfig(state_dir=tmp_path / "state", port_bounds=(9100, 9199)),
                     HostChecks(port_is_free=lambda _: True, wait_healthy=gate.wait, probe=gate.probe))
    plain.add_source(SourceSpec("repo", str(world["repo"].bare), "main"))
    assert plain.reconcile_source("repo", trigger=Trigger.WEBHOOK).outcomes == {"clf": "succeeded"}
    assert set(runtime.services) == {"clf"}  # no gateway: the service itself, on its own port

    plan = [action for _, action in world["reconciler"].preview() if action.service == "clf"]
    assert plan[0].kind.value == "update" and "moving behind the gateway" in plan[0].reason
    assert run(world) == {"clf": "succeeded"}
    assert set(runtime.services) == {"clf--blue"} and store.slots.active("clf") == "blue"
    stop = runtime.calls.index(("stop", "clf"))
    assert runtime.calls.index(("apply", "clf--blue")) < stop  # the slot was up before the old process stopped
    assert run(world) == {"clf": "noop"}


def test_a_crash_between_switch_and_cleanup_converges_to_one_serving_slot(world: dict[str, Any]) -> None:
    store, runtime = world["store"], world["runtime"]
    commit(world, "v1")
    run(world)
    # What a SIGKILL after the new slot started, before the store recorded the switch, leaves behind.
    runtime.services["clf--green"] = runtime.services["clf--blue"]
    assert run(world) == {"clf": "noop"}
    assert set(runtime.services) == {"clf--blue"} and store.slots.active("clf") == "blue"


def test_without_nginx_services_still_deploy_and_move_behind_it_when_it_is_back(world: dict[str, Any]) -> None:
    store, runtime, gateway = world["store"], world["runtime"], world["gateway"]
    gateway.missing = True
    commit(world, "v1")
    assert run(world) == {"clf": "succeeded"}
    assert set(runtime.services) == {"clf"} and store.slots.active("clf") is None  # on its own port
    assert "recreate: unavailable for about" in store.history.attempts("clf", 1)[0].message
    assert world["reconciler"].gateway_problem().startswith("down: nginx not found")  # what the page says
    gateway.missing = False
    assert run(world) == {"clf": "succeeded"}  # moving behind the gateway
    assert set(runtime.services) == {"clf--blue"} and store.slots.active("clf") == "blue"
    assert "blue-green: the old slot served until the switch" in store.history.attempts("clf", 1)[0].message
    assert world["reconciler"].gateway_problem() is None


def test_a_swarm_service_keeps_its_own_update_and_is_routed_by_path(world: dict[str, Any], tmp_path: Any) -> None:
    store, gateway, swarm = world["store"], world["gateway"], MemoryRuntime("swarm")
    config = ReconcilerConfig(state_dir=tmp_path / "state", port_bounds=(9100, 9199), slot_bounds=(9800, 9899),
                              drain=0.0)
    gate = world["gate"]
    reconciler = assemble(store, {"supervisor": world["runtime"], "swarm": swarm},
                          FakeBuilder(tmp_path / "env"), SecretStore(tmp_path / "secrets"), config,  # type: ignore[arg-type]
                          HostChecks(port_is_free=lambda _: True, wait_healthy=gate.wait, probe=gate.probe),
                          gateway=gateway)
    reconciler.add_source(SourceSpec("repo", str(world["repo"].bare), "main"))
    text = manifest({"name": "replicated"}) + "    runtime: swarm\n    gateway: {path: /ai/replicated/}\n"
    world["repo"].commit({"service.yaml": text, "app.py": "print(1)\n"}, "a swarm service")
    assert reconciler.reconcile_source("repo", trigger=Trigger.WEBHOOK).outcomes == {"replicated": "succeeded"}
    assert set(swarm.services) == {"replicated"} and store.slots.active("replicated") is None  # no slots
    route = next(route for route in gateway.tables[-1] if route.service == "replicated")
    assert (route.upstreams, route.port, route.path) == ((store.ports.of("replicated"),), None, "/ai/replicated/")
    # Its tasks run on two nodes: one server per node; the same nodes again change nothing; a service
    # with no running task keeps its last nodes (nginx needs a server; a node coming back is routed).
    router, port, applied = reconciler.rooms.rollout.slots.router, store.ports.of("replicated"), len(gateway.tables)
    assert router is not None and router.follow_nodes({"replicated": ("10.0.0.1", "10.0.0.2")})
    route = next(route for route in gateway.tables[-1] if route.service == "replicated")
    assert route.upstreams == (("10.0.0.1", port), ("10.0.0.2", port))
    assert not router.follow_nodes({"replicated": ("10.0.0.1", "10.0.0.2")}) and len(gateway.tables) == applied + 1
    assert not router.follow_nodes({"replicated": ()})
    assert router.follow_nodes({"replicated": ("10.0.0.2",)})
    assert next(r for r in gateway.tables[-1] if r.service == "replicated").upstreams == (("10.0.0.2", port),)
