"""The gateway as callers see it: check, apply a whole route table, read what is live.

Embedded, it is two nginx masters: the client-facing one (``backend``: listeners, paths, sticky
ports, each service proxied to its unix socket on the inner one) and the inner one (``inner``:
each service's socket proxied to its active slot). A slot switch changes only the inner config,
so the workers holding clients' keep-alive connections are never reloaded by a redeploy; the
client-facing one is reloaded only when a service, path or port comes or goes. External mode
is one tier (the operator's nginx).

Every change, per tier (inner first): rendered → candidate tested (``nginx -t``) → live file
replaced → reload → the new generation confirmed on the marker. nginx keeps its old config when
a reload cannot bind a port (and the reload still "succeeds"), so when the marker never answers
the new generation, the previous file is put back, nginx reloaded again, and the error raised
carries nginx's own words; a tier already changed by the same apply is put back too.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from deployer.errors import DeployerError, GatewayError
from deployer.gateway.embedded import EmbeddedNginx, NginxPaths
from deployer.gateway.external import ExternalNginx
from deployer.gateway.files import flock, read_text
from deployer.gateway.nginx import ErrorLog
from deployer.gateway.probe import accepts, generation_at, generation_on_socket, wait_until
from deployer.gateway.render import ConfigRenderer, Rendered, generation_of, nginx_listen
from deployer.gateway.routes import LOOPBACK, Route, RouteTable, check_routes

log = logging.getLogger("deployer.gateway")

CONFIRM_SECONDS = 8.0  # a reload that cannot bind retries for about 2.5 s before it gives up


class Gateway(Protocol):
    """What the reconciler uses; ``NginxGateway`` is the implementation."""

    @property
    def access_log(self) -> Path: ...

    def check(self) -> str | None: ...

    def apply(self, routes: Sequence[Route], *, handover: Callable[[], None] | None = None) -> str: ...

    def generation(self) -> str | None: ...

    def url(self, route: Route) -> str | None: ...


class Backend(Protocol):
    """How one mode tests, installs and reloads a config (``EmbeddedNginx``, ``ExternalNginx``)."""

    renderer: ConfigRenderer

    @property
    def errors(self) -> ErrorLog | None:
        """The log nginx reports a failed reload in, when deployer can read it (embedded)."""

    @property
    def live_file(self) -> Path: ...

    @property
    def access_log(self) -> Path: ...

    def ensure(self) -> str | None: ...

    def generation(self) -> str | None:
        """The generation this nginx answers on its marker now (None: not answering)."""

    def install(self, rendered: Rendered, previous: str | None) -> None: ...

    def restore(self, previous: str | None) -> None: ...

    def reload(self) -> None: ...

    def settled(self) -> bool: ...

    def shutdown(self, timeout: float = 10.0) -> None: ...


@dataclass(frozen=True)
class GatewayConfig:
    """The ``[gateway]`` settings as this package takes them (the composition root maps them)."""

    state_dir: Path
    templates_dir: Path
    listen: str = "127.0.0.1:8080"
    nginx: str = "nginx"
    drain: float = 10.0
    conf_path: Path | None = None  # set: external mode
    reload_command: str = ""
    test_command: str = ""  # external mode; "" = `nginx -t -q` (the operator's default config)
    confirm_timeout: float = CONFIRM_SECONDS


class NginxGateway:
    def __init__(self, backend: Backend, *, listen: str, lock_file: Path, inner: Backend | None = None,
                 confirm_timeout: float = CONFIRM_SECONDS) -> None:
        self.backend = backend  # the client-facing nginx
        self.inner = inner  # embedded: the nginx that switches slots (None: one tier)
        self.listen = nginx_listen(listen)
        self._host, self._port = probe_address(listen)
        self._lock_file = lock_file
        self._confirm_timeout = confirm_timeout

    @property
    def access_log(self) -> Path:
        return self.backend.access_log

    @property
    def tiers(self) -> tuple[Backend, ...]:
        """In the order a change is applied: the inner one first (a new service's socket must exist
        before the client-facing nginx proxies to it)."""
        return (self.backend,) if self.inner is None else (self.inner, self.backend)

    def check(self) -> str | None:
        """Raise ``GatewayUnavailable`` when nginx cannot serve; embedded: start or adopt it.

        Returns a note when something had to be repaired (a dead master restarted): drift.
        """
        with flock(self._lock_file):
            notes = [note for note in (tier.ensure() for tier in self.tiers) if note]
        return "; ".join(notes) or None

    def apply(self, routes: Sequence[Route], *, handover: Callable[[], None] | None = None) -> str:
        """Make ``routes`` the whole route table; the client-facing generation now live (unchanged: no reload).

        ``handover`` runs once everything but the client-facing reload is done and checked (the inner
        tier live, the candidate accepted by ``nginx -t``): it frees a sticky port (a service moved
        behind the gateway stops its own process there), so nothing answers there only from then on
        until the reload binds it.
        """
        table = check_routes(routes, listen_port=self._port)
        rendered = [(tier, tier.renderer.render(table)) for tier in self.tiers]
        with flock(self._lock_file):
            for tier in self.tiers:
                note = tier.ensure()
                if note:
                    log.warning("%s", note)
            changed: list[tuple[Backend, str | None]] = []
            try:
                for tier, text in rendered:
                    previous = read_text(tier.live_file)
                    if self._apply_tier(tier, text, table, previous, handover if tier is self.backend else None):
                        changed.append((tier, previous))
            except DeployerError:
                for tier, previous in changed:
                    self._put_back(tier, previous)
                raise
        generation = rendered[-1][1].generation
        log.info("gateway generation %s live (%d route(s); changed: %s)", generation, len(table.routes),
                 ", ".join(_tier_name(self, tier) for tier, _ in changed) or "nothing")
        return generation

    def generation(self) -> str | None:
        """The generation nginx answers on ``[gateway] listen`` now (None: not answering)."""
        return generation_at(self._host, self._port)

    def inner_answers(self) -> bool:
        """Whether the inner nginx answers its marker (always true with one tier)."""
        return self.inner is None or self.inner.generation() is not None

    def url(self, route: Route) -> str | None:
        """Where people reach a path route through the gateway (for ``/api/services``' ``gateway_url``)."""
        if route.path is None:
            return None
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self._port}{route.path}"

    def shutdown(self, timeout: float = 10.0) -> None:
        """Stop the embedded nginx (tests and operators); the external one is left alone."""
        with flock(self._lock_file):
            for tier in reversed(self.tiers):
                tier.shutdown(timeout)

    def _apply_tier(self, tier: Backend, rendered: Rendered, table: RouteTable, previous: str | None,
                    handover: Callable[[], None] | None) -> bool:
        """One nginx to ``rendered``; False when it was live already (nothing done)."""
        if previous == rendered.text and tier.generation() == rendered.generation and handover is None:
            return False
        tier.install(rendered, previous)  # nginx -t binds nothing: it passes while a sticky port is still held
        if tier is self.backend:
            try:
                if handover is not None:
                    handover()
                self._preflight(table)
            except DeployerError:
                tier.restore(previous)
                raise
        self._switch(tier, rendered, previous)
        return True

    def _preflight(self, table: RouteTable) -> None:
        """A sticky port held by another process fails the reload later, with less to say: refuse now."""
        for route in table.by_port:
            port = route.port or 0
            if accepts(LOOPBACK, port) and generation_at(LOOPBACK, port) is None:
                raise GatewayError(f"port {port} of service {route.service!r} is held by another process;"
                                   " the gateway cannot listen there (the previous config stays live)")

    def _switch(self, tier: Backend, rendered: Rendered, previous: str | None) -> None:
        errors = tier.errors
        mark = errors.mark() if errors else 0
        try:
            tier.reload()
        except GatewayError:
            tier.restore(previous)
            raise
        given_up = (lambda: errors.reload_failed(mark)) if errors else (lambda: False)
        if wait_until(lambda: tier.generation() == rendered.generation and tier.settled(),
                      timeout=self._confirm_timeout, given_up=given_up):
            return
        said = (errors.since(mark) if errors else "") or self._diagnose(tier)
        self._put_back(tier, previous)
        raise GatewayError(f"nginx kept its previous config (generation {rendered.generation} never went live): "
                           f"{said}")

    def _put_back(self, tier: Backend, previous: str | None) -> None:
        """The previous text live again (confirmed, briefly), e.g. the inner tier when the outer one failed."""
        tier.restore(previous)
        try:
            tier.reload()
        except GatewayError as exc:
            log.warning("gateway: reloading the previous config failed too: %s", exc)
            return
        wanted = generation_of(previous)
        if wanted is not None and not wait_until(lambda: tier.generation() == wanted and tier.settled(),
                                                 timeout=self._confirm_timeout, given_up=lambda: False):
            log.warning("gateway: the previous config (generation %s) did not answer again in time", wanted)

    def _diagnose(self, tier: Backend) -> str:
        live = tier.generation()
        if live is None:
            return f"nothing answers on {_where(self, tier)}"
        return f"nginx still answers generation {live}; see its error log"


def _tier_name(gateway: NginxGateway, tier: Backend) -> str:
    return "inner" if tier is gateway.inner else "client-facing"


def _where(gateway: NginxGateway, tier: Backend) -> str:
    if tier is gateway.inner:
        return f"the inner nginx's {getattr(tier, 'where', 'control socket')}"
    host, port = probe_address(gateway.listen)
    return f"{host}:{port}"


def probe_address(listen: str) -> tuple[str, int]:
    """Where to reach ``listen`` from this host: a wildcard address is reached on loopback."""
    host, _, port = listen.rpartition(":")
    host = host.strip("[]")
    if host in ("", "*", "0.0.0.0"):
        host = LOOPBACK
    elif host == "::":
        host = "::1"
    return host, int(port)


def build_gateway(config: GatewayConfig) -> NginxGateway:
    """Embedded nginx (two masters) unless ``conf_path`` names the operator's include file."""
    home = config.state_dir / "gateway"
    home.mkdir(parents=True, exist_ok=True)
    paths = NginxPaths(home)
    values = {"listen": nginx_listen(config.listen), **paths.template_values(config.drain)}
    host, port = probe_address(config.listen)
    if config.conf_path is not None:
        external = ExternalNginx(config.conf_path, ConfigRenderer(config.templates_dir, "routes.conf.j2",
                                                                   {**values, "sockets": ""}),
                                 nginx=config.nginx, reload_command=config.reload_command,
                                 test_command=config.test_command, access_log=paths.access_log, probe=(host, port))
        return NginxGateway(external, listen=config.listen, lock_file=home / "gateway.lock",
                            confirm_timeout=config.confirm_timeout)
    inner_paths = NginxPaths(home / "inner")
    control = str(inner_paths.control_socket)
    inner_values = {**inner_paths.template_values(config.drain), "sockets": "sockets"}
    inner = EmbeddedNginx(inner_paths, ConfigRenderer(config.templates_dir, "inner.conf.j2", inner_values),
                          nginx=config.nginx, probe=lambda: generation_on_socket(control), where=control,
                          name="the gateway's inner nginx")
    # Socket paths are relative to each master's folder (its working directory): short, and reachable by
    # workers running as nobody whatever the folders above the state dir allow.
    edge = EmbeddedNginx(paths, ConfigRenderer(config.templates_dir, "nginx.conf.j2",
                                               {**values, "sockets": "inner/sockets"}),
                         nginx=config.nginx, probe=lambda: generation_at(host, port), where=f"{host}:{port}")
    return NginxGateway(edge, inner=inner, listen=config.listen, lock_file=home / "gateway.lock",
                        confirm_timeout=config.confirm_timeout)
