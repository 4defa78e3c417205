"""The composition root: the only place that builds settings' consumers.

``build`` wires store, runtimes, reconciler, work queue, scheduler and the web
app from one ``Settings``; ``serve`` runs it under uvicorn and owns start-up
and shutdown. No other module constructs a dependency or reads the environment.
"""

from __future__ import annotations

import gc
import logging
import shutil
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import uvicorn
from starlette.applications import Starlette

import deployer
from deployer import logs
from deployer.artifacts import Artifacts, ContentCache, Fetchers, FetchOptions
from deployer.build import EnvBuilder
from deployer.demo import DemoLimits
from deployer.errors import ConfigError, DeployerError
from deployer.gateway import GatewayConfig, NginxGateway, TrafficReader, build_gateway
from deployer.gitea import GiteaClient, StatusReporter, WebhookError, clone_url
from deployer.hooks import HookRunner
from deployer.metrics import Metrics
from deployer.model.status import Trigger
from deployer.operations import Operations
from deployer.ports import holder, is_free
from deployer.reconcile import HostChecks, PassResult, Reconciler, ReconcilerConfig, SourceSpec, assemble
from deployer.reconcile.events import EventBus
from deployer.runtimes.base import Runtime
from deployer.runtimes.docker import DockerRuntime, SwarmRuntime
from deployer.runtimes.supervisor import SupervisorRuntime
from deployer.scheduler import Request, Scheduler, WorkQueue
from deployer.secrets import SecretStore, local_api_token
from deployer.settings import Settings, SourceSettings
from deployer.source import HttpToken
from deployer.store import Store
from deployer.web.app import WebDeps, build_app
from deployer.web.monitoring import Notice
from deployer.web.protocol import BoundedHttpToolsProtocol
from deployer.web.webhook import GiteaRouting, WebhookReceiver

log = logging.getLogger("deployer")
SWITCH_INTERVAL = 0.0005  # seconds
LOW_DISK = 16 * 1024 * 1024  # bytes free in the state dir below which /healthz fails


@dataclass
class Daemon:
    settings: Settings
    store: Store
    runtimes: dict[str, Runtime]
    reconciler: Reconciler
    queue: WorkQueue[PassResult]
    scheduler: Scheduler
    webhook: WebhookReceiver
    status: StatusReporter
    gateway: NginxGateway | None
    app: Starlette
    operations: Operations


def templates_dir(settings: Settings) -> Path:
    """Operator templates: the configured folder, else the checkout's, else the bundled copy."""
    if settings.paths.templates is not None:
        return settings.paths.templates
    checkout = Path(deployer.__file__).resolve().parent.parent / "templates"
    return checkout if checkout.is_dir() else Path(deployer.__file__).resolve().parent / "_bundled" / "templates"


def source_spec(entry: SourceSettings, config_dir: Path) -> SourceSpec:
    """A ``[[sources]]`` entry; plain paths are relative to the config file's folder."""
    url = entry.url
    if "://" not in url and not url.startswith("git@"):
        url = str((config_dir / url).resolve())
    name = entry.name or url.rstrip("/").rsplit("/", 1)[-1].removesuffix(".git")
    return SourceSpec(name=name, url=url, branch=entry.branch)


def git_token(settings: Settings) -> HttpToken | None:
    """The Gitea token for clones and LFS of the repositories under its http(s) clone base (or url)."""
    base, token = settings.gitea.clone_base or settings.gitea.url, settings.gitea_token
    if not token or not base.startswith(("http://", "https://")):
        return None
    return HttpToken(base.rstrip("/") + "/", token)


def secret_store(settings: Settings) -> SecretStore:
    """Service secrets, and the values masked in every log line, row and page: theirs and the daemon's own."""
    return SecretStore(settings.secrets_dir,
                       also_mask=(settings.webhook_secret, settings.gitea_token, settings.api_token))


def build(settings: Settings, *, config_dir: Path | None = None, secrets: SecretStore | None = None) -> Daemon:
    state_dir = settings.paths.state_dir
    state_dir.mkdir(parents=True, exist_ok=True)
    secrets = secrets or secret_store(settings)
    api_token = settings.api_token or local_api_token(state_dir)  # the CLI on this host finds it there
    secrets.also_mask(api_token)
    store = Store(settings.database_url, redact=secrets.mask)
    store.migrate()
    interrupted = store.history.interrupt_running_attempts()
    if interrupted:
        log.warning("marked %d attempt(s) interrupted by the last shutdown", interrupted)
    supervisor = SupervisorRuntime(
        state_dir=state_dir, socket=settings.supervisor.socket, include_dir=settings.supervisor.include_dir,
        templates_dir=templates_dir(settings), user=settings.supervisor.user,
    )
    runtimes: dict[str, Runtime] = {"supervisor": supervisor, **_container_runtimes(settings)}
    status = _status_reporter(settings)
    metrics = Metrics()
    events = EventBus()
    events.subscribe(metrics.on_event)
    events.subscribe(status.on_event)
    gateway, traffic = _gateway(settings, metrics)
    artifacts = _artifacts(settings)
    metrics.observe_artifacts(artifacts.cache.use)
    reconciler = assemble(
        store, runtimes,
        EnvBuilder(state_dir / "envs", installer=settings.build.installer, python=settings.build.python,
                   timeout=settings.build.timeout),
        secrets,
        ReconcilerConfig(state_dir=state_dir, port_bounds=settings.ports.bounds, default_runtime=settings.runtime,
                         prune=settings.reconcile.prune, port_grace=settings.ports.reuse_grace,
                         demo_limits=DemoLimits(settings.demo.max_input_bytes, settings.demo.max_response_bytes,
                                                settings.demo.timeout),
                         slot_bounds=settings.ports.slot_bounds, drain=settings.gateway.drain,
                         parallel=settings.reconcile.parallel, builds=settings.reconcile.builds,
                         git_token=git_token(settings)),
        HostChecks(port_is_free=is_free, port_holder=holder),
        hooks=HookRunner(settings.hooks.dir, timeout=settings.hooks.timeout), events=events, gateway=gateway,
        artifacts=artifacts,
    )
    _add_sources(reconciler, store, settings, config_dir or Path.cwd())
    last_errors: dict[str, str | None] = {}
    queue = WorkQueue(lambda request: _run_pass(reconciler, request, last_errors), workers=settings.reconcile.workers)
    metrics.observe_queue(queue.depth)
    scheduler = Scheduler(reconciler.sources.names, queue, interval=settings.reconcile.interval,
                          poll_interval=settings.reconcile.poll_interval, probe=reconciler.rooms.observer.probe_due)
    webhook = WebhookReceiver(
        store=store, sources=reconciler.sources, queue=queue, metrics=metrics, secret=settings.webhook_secret,
        routing=GiteaRouting(tuple(settings.gitea.allowed_owners), settings.gitea.repo_prefix,
                             settings.gitea.branch, settings.gitea.clone_base or settings.gitea.url),
    )
    operations = Operations(workers=settings.reconcile.workers * 2)  # stop/start/restart batches, bounded
    daemon = Daemon(settings, store, runtimes, reconciler, queue, scheduler, webhook, status, gateway,
                    app=Starlette(), operations=operations)
    deps = WebDeps(store=store, webhook=webhook, reconciler=reconciler, queue=queue, metrics=metrics,
                   api_token=api_token, checks=_checks(daemon), gitea_url=settings.gitea.url,
                   gateway_url=f"http://{settings.gateway.listen}" if gateway is not None else "",
                   traffic=traffic.read if traffic is not None else None, operations=operations,
                   artifacts=artifacts.use)
    daemon.app = build_app(deps, lifespan=_lifespan(daemon))
    return daemon


def _gateway(settings: Settings, metrics: Metrics) -> tuple[NginxGateway | None, TrafficReader | None]:
    """deployer's nginx (or the operator's, in external mode) when ``[gateway] enabled``; its traffic in /metrics."""
    options = settings.gateway
    if not options.enabled:
        return None, None
    gateway = build_gateway(GatewayConfig(
        state_dir=settings.paths.state_dir, templates_dir=templates_dir(settings), listen=options.listen,
        nginx=options.nginx, drain=options.drain, conf_path=options.conf_path, reload_command=options.reload_command,
        test_command=options.test_command))
    traffic = TrafficReader(gateway.access_log, start_at_end=True)
    metrics.observe_gateway(traffic.read)
    return gateway, traffic


def _artifacts(settings: Settings) -> Artifacts:
    """The artifact cache under the state dir and its fetchers, keys read from their secret files now."""
    options = settings.artifacts
    access_key, secret_key = settings.s3_keys
    fetch = FetchOptions(s3_endpoint=options.s3_endpoint, s3_region=options.s3_region, s3_access_key=access_key,
                         s3_secret_key=secret_key, ca_bundle=options.ca_bundle, timeout=options.timeout)
    cache = ContentCache(settings.paths.state_dir / "artifacts", budget=options.cache_max)
    return Artifacts(cache, Fetchers(fetch), parallel=options.parallel)


def _container_runtimes(settings: Settings) -> dict[str, Runtime]:
    """Docker and Swarm, when enabled (``auto``: when an engine answers now)."""
    if settings.docker.enabled is False:
        return {}
    options = settings.docker
    docker = DockerRuntime(options.url, bind_address=options.bind_address, base_image=options.base_image,
                           templates_dir=templates_dir(settings), keep_images=options.keep_images,
                           registry=options.registry)
    if settings.docker.enabled == "auto":
        try:
            docker.check()
        except DeployerError as exc:
            log.info("docker runtimes off: %s (set [docker] enabled = true to require them)", exc)
            return {}
    swarm = SwarmRuntime(options.url, base_image=options.base_image, templates_dir=templates_dir(settings),
                         keep_images=options.keep_images, registry=options.registry)
    return {"docker": docker, "swarm": swarm}


def _status_reporter(settings: Settings) -> StatusReporter:
    """Commit statuses go to Gitea when its URL is set; without a token they cannot, and we say so once."""
    if not settings.gitea.url:
        return StatusReporter(None)
    token = settings.gitea_token
    if not token:
        log.warning("[gitea] url is set but no token (DEPLOYER_GITEA_TOKEN_FILE): no commit statuses are sent")
        return StatusReporter(None)
    return StatusReporter(GiteaClient(settings.gitea.url, token), context_prefix=settings.gitea.status_context,
                          public_url=settings.server.public_url or f"http://{settings.server.listen}")


def _add_sources(reconciler: Reconciler, store: Store, settings: Settings, config_dir: Path) -> None:
    for entry in settings.sources:
        reconciler.add_source(source_spec(entry, config_dir), origin="config")
    for record in store.sources.all():
        if reconciler.sources.has(record.name):
            continue
        if record.origin == "gitea":  # repos first seen through a webhook stay followed
            try:  # from the same identity and rule as a webhook's (an older version stored payload URLs)
                url = clone_url(record.name, record.url, settings.gitea.clone_base or settings.gitea.url)
                reconciler.add_source(SourceSpec(record.name, url, record.branch), origin="gitea")
            except (ConfigError, WebhookError) as exc:  # a stored row never stops start-up: say so and go on
                log.error("stored source skipped: %s", exc)
                reconciler.sources.set_error(record.name[:120], f"not followed: {exc}")
            continue
        removed = reconciler.retire_source(record.name, allow_empty=settings.reconcile.allow_empty)
        if removed:
            log.warning("source %s left deployer.toml: removed %s", record.name, ", ".join(removed))


def _run_pass(reconciler: Reconciler, request: Request, last_errors: dict[str, str | None]) -> PassResult:
    """The pass a request asked for, its result for whoever follows it (``Request.done``).

    Logged only when it changed something or its error is new: one line per step, not per poll."""
    result = reconciler.reconcile_source(request.source, trigger=request.trigger, fetch=request.fetch,
                                         retry=request.retry)
    changed = {name: outcome for name, outcome in result.outcomes.items() if outcome not in ("noop", "held")}
    new_error = result.error != last_errors.get(request.source)
    last_errors[request.source] = result.error
    if changed or (result.error and new_error):
        log.info("pass %s@%s (%s): %s%s", result.source, (result.sha or "?")[:7], request.trigger.value,
                 ", ".join(f"{name}={outcome}" for name, outcome in sorted(changed.items())) or "no changes",
                 f"; {result.error}" if result.error else "")
    return result


def _checks(daemon: Daemon) -> dict[str, Callable[[], None]]:
    def scheduler_alive() -> None:
        if not daemon.scheduler.alive() or not daemon.queue.alive():
            raise RuntimeError("scheduler or workers are not running")

    def runtime_check(name: str, runtime: Runtime) -> Callable[[], None]:
        def check() -> None:
            # Supervisor always counts; a container runtime only once a service uses it
            # (a host with Docker but no swarm is healthy until someone asks for swarm).
            if name == "supervisor" or any(view.runtime == name for view in daemon.store.views.services()):
                runtime.check()
        return check

    def gateway_answers() -> None:
        # Asked, not repaired: a GET of /healthz must not restart nginx (the next pass does).
        if daemon.gateway is not None and daemon.gateway.generation() is None:
            raise RuntimeError(f"the gateway does not answer on {daemon.settings.gateway.listen}; "
                               "the next pass restarts it (see <state>/gateway/error.log)")
        if daemon.gateway is not None and not daemon.gateway.inner_answers():
            raise RuntimeError("the gateway's inner nginx does not answer; the next pass restarts it "
                               "(see <state>/gateway/inner/error.log)")

    def statuses_delivered() -> None:
        # A Gitea outage fails no deploy, but a status that waits is something an operator should see:
        # said in /healthz's body, without its 503 (nothing restarting deployer would deliver them sooner).
        problem = daemon.status.problem
        if problem is not None:
            raise Notice(problem)

    def state_dir_space() -> None:
        state_dir = daemon.settings.paths.state_dir
        free = shutil.disk_usage(state_dir).free
        if free < LOW_DISK:
            raise RuntimeError(f"{state_dir} has {free // 1024} KiB free: checkouts, environments and the "
                               "database need room; deploys fail until space returns")

    checks: dict[str, Callable[[], None]] = {"store": daemon.store.ping, "scheduler": scheduler_alive,
                                             "disk": state_dir_space,
                                             "webhook_audit": daemon.webhook.check}
    checks.update({name: runtime_check(name, runtime) for name, runtime in daemon.runtimes.items()})
    if daemon.gateway is not None:
        checks["gateway"] = gateway_answers
    if daemon.status.enabled:
        checks["gitea_status"] = statuses_delivered
    return checks


def _lifespan(daemon: Daemon):  # type: ignore[no-untyped-def]
    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        start(daemon)
        try:
            yield
        finally:
            stop(daemon)

    return lifespan


def start(daemon: Daemon) -> None:
    for name, runtime in daemon.runtimes.items():
        try:
            runtime.check()
        except DeployerError as exc:
            log.error("runtime %s unavailable: %s; its services wait until it is back", name, exc)
    daemon.status.start()
    daemon.webhook.start()
    daemon.queue.start()
    daemon.scheduler.start()
    daemon.scheduler.poll_all(Trigger.STARTUP)
    log.info("deployer %s serving on http://%s, following %d source(s)", deployer.__version__,
             daemon.settings.server.listen, len(daemon.reconciler.sources.names()))


def stop(daemon: Daemon) -> None:
    """Stop taking webhooks, let running passes finish, close the store."""
    daemon.webhook.stop()
    daemon.scheduler.stop()
    daemon.operations.shutdown()
    daemon.queue.stop(timeout=60)
    daemon.status.stop(timeout=5)
    daemon.store.close()
    log.info("deployer stopped; services keep running under their runtimes")


def serve(settings: Settings, *, config_dir: Path | None = None, log_level: str = "INFO",
          log_format: str = "text") -> None:
    # Acknowledgements share the interpreter with the passes' threads: a waiting thread gets the GIL
    # after at most this long (CPython's default is 5 ms), so a burst of passes cannot starve the
    # event loop that answers Gitea (bench/webhook_burst.py).
    sys.setswitchinterval(SWITCH_INTERVAL)
    secrets = secret_store(settings)
    logs.configure(log_level, log_format, secrets.mask)
    daemon = build(settings, config_dir=config_dir, secrets=secrets)
    # What start-up made (modules, models, tables: most of the heap) lives as long as the daemon:
    # frozen, the cyclic collector stops walking it, so a full collection no longer pauses every
    # thread, the acknowledging event loop among them, for tens of milliseconds.
    gc.freeze()
    # uvloop and httptools: socket calls and HTTP parsing in C, holding the GIL, so answering a
    # request no longer waits for the passes' threads at every send and receive.
    uvicorn.run(daemon.app, host=settings.server.host, port=settings.server.port, log_level="warning",
                access_log=False, lifespan="on", loop="uvloop", http=BoundedHttpToolsProtocol)
