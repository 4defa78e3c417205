"""An embedded nginx: one of deployer's own masters under ``<state_dir>/gateway/``, outliving the daemon.

Two run there: the client-facing one (``gateway/``) and the inner one (``gateway/inner/``) that
switches slots. Each runs as ``nginx -e HOME/error.log -p HOME -c HOME/nginx.conf`` from HOME
(without ``-e`` nginx opens its compiled-in error log before it reads the config; unix socket
paths are relative to HOME, so its workers, running as nobody, need no access above it); it
daemonises, and the next deployer adopts it through its pid file (the pid counts only while its
command line names our config). A master killed with SIGKILL leaves its workers serving on the
old sockets: they are reaped (found by the error log they hold open) before a new master starts,
or its bind() would fail; so are the socket files it left.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from deployer.errors import GatewayRejected, GatewayUnavailable
from deployer.gateway.files import (
    alive,
    children,
    cmdline,
    holds_file,
    processes_named,
    read_pid,
    read_text,
    write_atomic,
)
from deployer.gateway.nginx import (
    ACCESS_LOG_MAX,
    ERROR_LOG_MAX,
    NGINX_ENV,
    ErrorLog,
    find_nginx,
    nginx_message,
    run,
)
from deployer.gateway.probe import wait_until
from deployer.gateway.render import ConfigRenderer, Rendered, generation_of, nginx_path
from deployer.gateway.routes import RouteTable

log = logging.getLogger("deployer.gateway")

TEMP_DIRS = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
_START_SECONDS = 15.0
_ANSWER_SECONDS = 3.0
_POLL_SECONDS = 0.05
# A worker's title; one told to quit (by a reload) becomes "... is shutting down" and stops accepting.
_WORKER = "nginx: worker process"


@dataclass(frozen=True)
class NginxPaths:
    """Everything of the embedded nginx, under one folder of the state dir."""

    home: Path

    @property
    def config(self) -> Path:
        return self.home / "nginx.conf"

    @property
    def candidate(self) -> Path:
        """Where a new config is tested; a rejected one stays here for the operator to read."""
        return self.home / "nginx.conf.candidate"

    @property
    def pid_file(self) -> Path:
        return self.home / "nginx.pid"

    @property
    def error_log(self) -> Path:
        return self.home / "error.log"

    @property
    def access_log(self) -> Path:
        return self.home / "access.log"

    @property
    def sockets(self) -> Path:
        """The unix sockets a master listens on (the inner one: one per service)."""
        return self.home / "sockets"

    @property
    def control_socket(self) -> Path:
        return self.home / "control.sock"

    def template_values(self, drain: float) -> dict[str, object]:
        home = nginx_path(self.home, "the gateway's state folder")
        return {"home": home, "access_log": f"{home}/access.log", "drain_ms": int(drain * 1000)}


class EmbeddedNginx:
    """Start, adopt, test, reload, rotate and stop deployer's own nginx master."""

    def __init__(self, paths: NginxPaths, renderer: ConfigRenderer, *, nginx: str,
                 probe: Callable[[], str | None], where: str, name: str = "the gateway's nginx") -> None:
        self.name = name  # in what it says: "the gateway's nginx", "the gateway's inner nginx"
        self.paths = paths
        self.renderer = renderer
        self.errors = ErrorLog(paths.error_log)
        self._nginx = nginx
        self._probe = probe
        self.where = where  # where its generation is asked, for messages
        self._old_workers: list[int] = []

    def generation(self) -> str | None:
        """The generation this master answers on its marker now (None: not answering)."""
        return self._probe()

    @property
    def live_file(self) -> Path:
        return self.paths.config

    @property
    def access_log(self) -> Path:
        return self.paths.access_log

    def ensure(self) -> str | None:
        """Adopt the running master, or start one; a note when it had died (the caller's drift)."""
        binary = find_nginx(self._nginx)
        self._make_dirs()
        pid = self.live_pid()
        if pid is not None:
            self._rotate_logs(pid)
            return None
        dead = read_pid(self.paths.pid_file)
        reaped = self._reap_leftovers()
        self._remove_stale_sockets()
        if not self.paths.config.exists():
            self.install(self.renderer.render(RouteTable(())), None)
        try:
            self._spawn(binary)
        except GatewayUnavailable as exc:
            if dead is not None:
                raise GatewayUnavailable(
                    f"{self.name} (pid {dead}) exited; restarting it failed: {exc}") from None
            raise
        if dead is not None:
            return f"{self.name} (pid {dead}) exited; restarted it (pid {self.live_pid()})"
        if reaped:
            pids = ", ".join(map(str, reaped))
            return f"left-over nginx processes of the gateway (pids {pids}) stopped; started nginx"
        return None

    def live_pid(self) -> int | None:
        """The pid file's master while it runs with our config (a recycled pid does not count)."""
        pid = read_pid(self.paths.pid_file)
        if pid is None or not alive(pid) or f"-c {self.paths.config}" not in cmdline(pid):
            return None
        return pid

    def install(self, rendered: Rendered, previous: str | None) -> None:
        """Test the candidate with ``nginx -t``; only a config nginx accepts replaces the live file."""
        candidate = self.paths.candidate
        self._make_dirs()  # nginx -t creates the temp folders, not their parents
        write_atomic(candidate, rendered.text)
        code, output = run([find_nginx(self._nginx), "-t", "-q", "-e", "stderr", "-p", f"{self.paths.home}/",
                            "-c", str(candidate)], cwd=self.paths.home)
        if code != 0:
            raise GatewayRejected(nginx_message(output) or f"nginx -t exited with {code}")
        os.replace(candidate, self.paths.config)

    def restore(self, previous: str | None) -> None:
        if previous is not None:
            write_atomic(self.paths.config, previous)

    def reload(self) -> None:
        """HUP to the adopted master (what ``nginx -s reload`` sends, without re-reading the config first)."""
        pid = self.live_pid()
        if pid is None:
            raise GatewayUnavailable(f"{self.name} is not running; it is started by the next check")
        self._old_workers = [child for child in children(pid) if cmdline(child) == _WORKER]
        os.kill(pid, signal.SIGHUP)

    def settled(self) -> bool:
        """No worker of the config before the last reload still accepts connections.

        The marker answering the new generation shows new workers run; for a few milliseconds
        the old ones accept too, until the master tells them to quit.
        """
        return not any(alive(pid) and cmdline(pid) == _WORKER for pid in self._old_workers)

    def shutdown(self, timeout: float = 10.0) -> None:
        """Graceful stop (QUIT: requests in flight finish), then whatever is left is killed."""
        pid = self.live_pid()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGQUIT)
            deadline = time.monotonic() + timeout
            while alive(pid) and time.monotonic() < deadline:
                time.sleep(_POLL_SECONDS)
        self._reap_leftovers(grace=0.0)

    def _make_dirs(self) -> None:
        for folder in (self.paths.home, self.paths.sockets, *(self.paths.home / "temp" / name for name in TEMP_DIRS)):
            folder.mkdir(parents=True, exist_ok=True)
        for folder in (self.paths.home, self.paths.sockets):
            folder.chmod(0o755)  # nobody's workers reach the sockets through these (whatever deployer's umask)

    def _remove_stale_sockets(self) -> None:
        """Socket files a killed master left: a new master's bind() on them would fail."""
        for stale in (self.paths.control_socket, *self.paths.sockets.glob("*.sock")):
            stale.unlink(missing_ok=True)

    def _spawn(self, binary: str) -> None:
        mark = self.errors.mark()
        command = [binary, "-e", str(self.paths.error_log), "-p", f"{self.paths.home}/", "-c", str(self.paths.config)]
        # A file, not a pipe, takes the launcher's output: the daemon must never hold our end open.
        with tempfile.TemporaryFile() as output:
            try:
                # nginx binds its sockets, then daemonises: the launcher exits, the master lives on.
                done = subprocess.run(command, stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT,
                                      env=NGINX_ENV, cwd=self.paths.home, timeout=60, check=False)
            except (OSError, subprocess.TimeoutExpired) as exc:
                raise GatewayUnavailable(f"cannot start nginx ({binary}): {exc}") from None
            output.seek(0)
            said = nginx_message(output.read().decode("utf-8", errors="replace"))
        if done.returncode != 0:
            said = said or self.errors.since(mark)
            raise GatewayUnavailable(f"cannot start nginx: {said or f'exit status {done.returncode}'}")
        self._wait_started(generation_of(read_text(self.paths.config)))

    def _wait_started(self, generation: str | None) -> None:
        deadline = time.monotonic() + _START_SECONDS
        while self.live_pid() is None:
            if time.monotonic() > deadline:
                raise GatewayUnavailable(f"nginx started but wrote no pid file; see {self.paths.error_log}")
            time.sleep(_POLL_SECONDS)
        # The file may come from an earlier [gateway] listen: then nothing answers here until the next
        # apply rewrites it (and that apply's confirmation is the proof), so this is a warning only.
        if not wait_until(lambda: self.generation() == generation, timeout=_ANSWER_SECONDS,
                          given_up=lambda: generation is None):
            log.warning("%s (pid %s) started but does not answer generation %s on %s yet; "
                        "the next apply rewrites its config", self.name, self.live_pid(), generation, self.where)

    def _rotate_logs(self, pid: int) -> None:
        rotated = False
        for path, limit in ((self.paths.access_log, ACCESS_LOG_MAX), (self.paths.error_log, ERROR_LOG_MAX)):
            with contextlib.suppress(FileNotFoundError):
                if path.stat().st_size > limit:
                    os.replace(path, path.with_name(path.name + ".1"))
                    rotated = True
        if rotated:
            os.kill(pid, signal.SIGUSR1)  # the master reopens its logs

    def _reap_leftovers(self, grace: float = 5.0) -> list[int]:
        """nginx processes of ours without a live master (workers of a killed one), stopped."""
        leftovers = [pid for pid in processes_named("nginx: ") if holds_file(pid, self.paths.error_log)]
        for pid in leftovers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGQUIT)  # they stop accepting at once and finish what they serve
        deadline = time.monotonic() + grace
        while any(alive(pid) for pid in leftovers) and time.monotonic() < deadline:
            time.sleep(_POLL_SECONDS)
        for pid in leftovers:
            if alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        return leftovers
