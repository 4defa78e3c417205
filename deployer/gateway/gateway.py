"""The gateway as callers see it: check, apply a whole route table, read what is live.

Every change: routes checked → rendered → candidate tested (``nginx -t``) → live file replaced →
reload → the new generation confirmed on the marker. nginx keeps its old config when a reload
cannot bind a port (and the reload still "succeeds"), so when the marker never answers the new
generation, the previous file is put back, nginx reloaded again, and the error raised carries
nginx's own words. The embedded and external modes differ only in their ``Backend``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from deployer.errors import GatewayError
from deployer.gateway.embedded import EmbeddedNginx, NginxPaths
from deployer.gateway.external import ExternalNginx
from deployer.gateway.files import flock, read_text
from deployer.gateway.nginx import ErrorLog
from deployer.gateway.probe import accepts, generation_at, wait_until
from deployer.gateway.render import ConfigRenderer, Rendered, nginx_listen
from deployer.gateway.routes import LOOPBACK, Route, RouteTable, check_routes

log = logging.getLogger("deployer.gateway")

CONFIRM_SECONDS = 8.0  # a reload that cannot bind retries for about 2.5 s before it gives up


class Gateway(Protocol):
    """What the reconciler uses; ``NginxGateway`` is the implementation."""

    @property
    def access_log(self) -> Path: ...

    def check(self) -> str | None: ...

    def apply(self, routes: Sequence[Route]) -> str: ...

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
    def __init__(self, backend: Backend, *, listen: str, lock_file: Path,
                 confirm_timeout: float = CONFIRM_SECONDS) -> None:
        self.backend = backend
        self.listen = nginx_listen(listen)
        self._host, self._port = probe_address(listen)
        self._lock_file = lock_file
        self._confirm_timeout = confirm_timeout

    @property
    def access_log(self) -> Path:
        return self.backend.access_log

    def check(self) -> str | None:
        """Raise ``GatewayUnavailable`` when nginx cannot serve; embedded: start or adopt it.

        Returns a note when something had to be repaired (a dead master restarted): drift.
        """
        with flock(self._lock_file):
            return self.backend.ensure()

    def apply(self, routes: Sequence[Route]) -> str:
        """Make ``routes`` the whole route table; the generation now live (unchanged: no reload)."""
        table = check_routes(routes, listen_port=self._port)
        rendered = self.backend.renderer.render(table)
        with flock(self._lock_file):
            note = self.backend.ensure()
            if note:
                log.warning("%s", note)
            previous = read_text(self.backend.live_file)
            if previous == rendered.text and self.generation() == rendered.generation:
                return rendered.generation
            self._preflight(table)
            self.backend.install(rendered, previous)
            self._switch(rendered, previous)
        log.info("gateway generation %s live (%d route(s))", rendered.generation, len(table.routes))
        return rendered.generation

    def generation(self) -> str | None:
        """The generation nginx answers on ``[gateway] listen`` now (None: not answering)."""
        return generation_at(self._host, self._port)

    def url(self, route: Route) -> str | None:
        """Where people reach a path route through the gateway (for ``/api/services``' ``gateway_url``)."""
        if route.path is None:
            return None
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self._port}{route.path}"

    def shutdown(self, timeout: float = 10.0) -> None:
        """Stop the embedded nginx (tests and operators); the external one is left alone."""
        with flock(self._lock_file):
            self.backend.shutdown(timeout)

    def _preflight(self, table: RouteTable) -> None:
        """A sticky port held by another process fails the reload later, with less to say: refuse now."""
        for route in table.by_port:
            port = route.port or 0
            if accepts(LOOPBACK, port) and generation_at(LOOPBACK, port) is None:
                raise GatewayError(f"port {port} of service {route.service!r} is held by another process;"
                                   " the gateway cannot listen there (the previous config stays live)")

    def _switch(self, rendered: Rendered, previous: str | None) -> None:
        errors = self.backend.errors
        mark = errors.mark() if errors else 0
        try:
            self.backend.reload()
        except GatewayError:
            self.backend.restore(previous)
            raise
        given_up = (lambda: errors.reload_failed(mark)) if errors else (lambda: False)
        if wait_until(lambda: self.generation() == rendered.generation and self.backend.settled(),
                      timeout=self._confirm_timeout, given_up=given_up):
            return
        said = (errors.since(mark) if errors else "") or self._diagnose()
        self._put_back(previous)
        raise GatewayError(f"nginx kept its previous config (generation {rendered.generation} never went live): "
                           f"{said}")

    def _put_back(self, previous: str | None) -> None:
        self.backend.restore(previous)
        try:
            self.backend.reload()
        except GatewayError as exc:
            log.warning("gateway: reloading the previous config failed too: %s", exc)

    def _diagnose(self) -> str:
        live = self.generation()
        if live is None:
            return f"nothing answers on {self._host}:{self._port}"
        return f"nginx still answers generation {live}; see its error log"


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
    """Embedded nginx unless ``conf_path`` names the operator's include file."""
    home = config.state_dir / "gateway"
    home.mkdir(parents=True, exist_ok=True)
    paths = NginxPaths(home)
    values = {"listen": nginx_listen(config.listen), **paths.template_values(config.drain)}
    probe = probe_address(config.listen)
    backend: Backend
    if config.conf_path is None:
        backend = EmbeddedNginx(paths, ConfigRenderer(config.templates_dir, "nginx.conf.j2", values),
                                nginx=config.nginx, probe=probe)
    else:
        backend = ExternalNginx(config.conf_path, ConfigRenderer(config.templates_dir, "routes.conf.j2", values),
                                nginx=config.nginx, reload_command=config.reload_command,
                                test_command=config.test_command, access_log=paths.access_log, probe=probe)
    return NginxGateway(backend, listen=config.listen, lock_file=home / "gateway.lock",
                        confirm_timeout=config.confirm_timeout)
