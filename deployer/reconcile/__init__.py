"""Reconciling: one room per job, and the small ``Reconciler`` that orchestrates a pass.

``sources`` (the followed repositories), ``resolve`` (a commit into desired
services), ``planning`` (pins, stops, suspensions, held failures, down runtimes → a
plan), ``planner`` (a pass up to its plan), ``execute`` (the plan carried out),
``rollout`` (one service: build, hooks, apply, gate, put back), ``slots`` (placement and
the switch behind the gateway), ``actions`` (stop, start, restart by hand), ``observe``
(listings, probes, snapshots), ``demos``, ``events``, ``locks`` (one per service);
``passes`` ties them together.
``assemble`` builds the rooms the same way for the daemon and for tests.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from deployer.artifacts import Artifacts, ContentCache, Fetchers, FetchOptions
from deployer.build import EnvBuilder
from deployer.demo import DemoLimits
from deployer.gateway import Route
from deployer.health import HttpChecks, Probe
from deployer.hooks import HookRunner
from deployer.reconcile.actions import ActionDone, ServiceActions
from deployer.reconcile.demos import DemoRunner
from deployer.reconcile.events import EventBus
from deployer.reconcile.gate import Gate, Steps
from deployer.reconcile.observe import Observer
from deployer.reconcile.passes import PassResult, Reconciler, Rooms
from deployer.reconcile.record import Recorder
from deployer.reconcile.resolve import ClaimedPorts, Resolver
from deployer.reconcile.retention import Retention
from deployer.reconcile.rollout import Rollout, RolloutParts
from deployer.reconcile.routing import GatewayPort, Router
from deployer.reconcile.sources import SourceRegistry, SourceSpec
from deployer.runtimes.base import Runtime
from deployer.secrets import SecretStore
from deployer.source import HttpToken
from deployer.store import Store

__all__ = ["ActionDone", "GatewayPort", "HostChecks", "PassResult", "Reconciler", "ReconcilerConfig", "Route",
           "SourceSpec", "assemble"]


@dataclass(frozen=True)
class ReconcilerConfig:
    """The settings the rooms need, gathered by the composition root."""

    state_dir: Path
    port_bounds: tuple[int, int]
    default_runtime: str = "supervisor"
    prune: bool = True
    port_grace: float = 0.0
    probe_interval: float = 10.0
    demo_limits: DemoLimits = field(default_factory=DemoLimits)
    slot_bounds: tuple[int, int] = (9800, 9999)  # [ports] slot_range: blue/green slots behind the gateway
    drain: float = 10.0  # [gateway] drain: seconds the old slot keeps finishing requests after a switch
    parallel: int = 4  # [reconcile] parallel: services of one source deployed at once
    builds: int = 2  # [reconcile] builds: builds at once across every source (the CPU-heavy step)
    git_token: HttpToken | None = None  # [gitea] token, sent to the Gitea's clone and LFS URLs


@dataclass(frozen=True)
class HostChecks:
    """How the host is asked about ports and services; tests replace the HTTP parts."""

    port_is_free: Callable[[int], bool]
    port_holder: Callable[[int], str | None] = lambda port: None
    wait_healthy: Callable[..., float] | None = None
    probe: Callable[..., Probe] | None = None


def assemble(store: Store, runtimes: Mapping[str, Runtime], builder: EnvBuilder, secrets: SecretStore,
             config: ReconcilerConfig, host: HostChecks, *, hooks: HookRunner | None = None,
             events: EventBus | None = None, gateway: GatewayPort | None = None,
             artifacts: Artifacts | None = None) -> Reconciler:
    """Every room, wired once: the daemon's composition root and the tests build the same reconciler."""
    events = events or EventBus()
    artifacts = artifacts or Artifacts(ContentCache(config.state_dir / "artifacts", budget=20 * 1000**3),
                                       Fetchers(FetchOptions()))
    http = HttpChecks()
    sources = SourceRegistry(store, config.state_dir, token=config.git_token)
    observer = Observer(store, runtimes, http, events, probe=host.probe, probe_interval=config.probe_interval)
    demos = DemoRunner(store, sources, http.client, config.state_dir, config.demo_limits, secrets)
    steps = Steps(store)
    gate = Gate(http, demos, steps, wait_healthy=host.wait_healthy)
    router = Router(store, gateway, slot_bounds=config.slot_bounds, is_free=host.port_is_free,
                    drain=config.drain) if gateway is not None else None
    parts = RolloutParts(runtimes, builder, secrets, hooks or HookRunner(), sources, router,
                         builds=threading.BoundedSemaphore(config.builds), artifacts=artifacts)
    recorder = Recorder(store, sources, events)
    rollout = Rollout(store, parts, gate, observer, events)
    rooms = Rooms(
        sources=sources,
        resolver=Resolver(store, runtimes, default_runtime=config.default_runtime, port_bounds=config.port_bounds,
                          secrets=secrets),
        ports=ClaimedPorts(store, config.port_bounds, is_free=host.port_is_free, holder=host.port_holder,
                           grace=config.port_grace),
        observer=observer, rollout=rollout, demos=demos, secrets=secrets,
        events=events, recorder=recorder, actions=ServiceActions(store, rollout, observer),
    )
    events.subscribe(recorder.on_event)
    events.subscribe(Retention(store, artifacts).on_event)
    return Reconciler(store, rooms, prune=config.prune, parallel=config.parallel)
