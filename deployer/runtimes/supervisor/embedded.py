"""The embedded supervisord: deployer's own, under the state dir, outliving the daemon.

Started when it does not answer (after leftovers of a killed one are reaped), never
doubled when one of ours runs but hangs, adopted again by the next deployer through
its pid file and socket. Services keep running whatever happens to deployer.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from deployer.errors import ApplyError, RuntimeUnavailable
from deployer.host import alive, cmdline, flock, read_pid
from deployer.runtimes.supervisor.files import supervisord_conf, write_atomic
from deployer.runtimes.supervisor.program import SYSTEM_PATH
from deployer.runtimes.supervisor.rpc import SupervisorRpc

_POLL_SECONDS = 0.1
# The embedded supervisord (and so every service) starts from a fixed environment: the
# daemon's own environment holds its secrets (DEPLOYER_*), which must never reach a service.
_SUPERVISORD_ENV = {"PATH": SYSTEM_PATH, "LANG": "C.UTF-8"}


@dataclass(frozen=True)
class SupervisorPaths:
    home: Path
    socket: Path
    include_dir: Path
    log_dir: Path

    @property
    def config_file(self) -> Path:
        return self.home / "supervisord.conf"

    @property
    def pid_file(self) -> Path:
        return self.home / "supervisord.pid"


class EmbeddedSupervisord:
    def __init__(self, paths: SupervisorPaths, rpc: SupervisorRpc) -> None:
        self.paths = paths
        self._rpc = rpc

    def ensure_running(self, *, reap: Callable[[], object]) -> None:
        """Start supervisord when it does not answer; ``reap`` stops leftovers first.

        A supervisord of ours that runs but does not answer (hung, or shutting down) is not
        doubled: that is ``RuntimeUnavailable``. Leftovers are reaped before the spawn, because
        supervisord autostarts every program as soon as it reads the include dir.
        """
        paths = self.paths
        # Only a supervisord on deployer's own interpreter can import deployer's extension.
        conf = supervisord_conf(socket=paths.socket, home=paths.home, pid_file=paths.pid_file,
                                include_dir=paths.include_dir, log_dir=paths.log_dir,
                                extension=_executable(_beside_python()))
        if not paths.config_file.exists() or paths.config_file.read_text(encoding="utf-8") != conf:
            write_atomic(paths.config_file, conf)
        if self.answers():
            return
        with flock(paths.home / "start.lock"):
            if self.answers():  # another deployer may have started it meanwhile
                return
            running = self.live_pid()
            if running is not None:
                raise RuntimeUnavailable(
                    f"supervisord (pid {running}) runs but does not answer on {paths.socket}"
                    " (hung or shutting down); not starting a second one, retrying later"
                )
            reap()
            self._spawn()
            self._wait_answering()

    def shutdown(self, timeout: float = 60.0) -> None:
        """Stop it and with it every program (for tests and operators)."""
        pid = read_pid(self.paths.pid_file)
        try:
            self._rpc.call("shutdown")
        except RuntimeUnavailable:
            return
        deadline = time.monotonic() + timeout
        while pid is not None and alive(pid) and time.monotonic() < deadline:
            time.sleep(_POLL_SECONDS)

    def live_pid(self) -> int | None:
        """The pid file's supervisord while it runs with our config (a recycled pid does not count)."""
        pid = read_pid(self.paths.pid_file)
        if pid is None or not alive(pid) or str(self.paths.config_file) not in cmdline(pid):
            return None
        return pid

    def answers(self) -> bool:
        try:
            return bool(self._rpc.call("getState").get("statename") == "RUNNING")
        except (RuntimeUnavailable, ApplyError):
            return False

    def _spawn(self) -> None:
        binary = _find_supervisord()
        config = self.paths.config_file
        with tempfile.TemporaryFile() as output:
            try:
                # supervisord daemonizes (fork + setsid): the launcher exits, the daemon lives on.
                done = subprocess.run(
                    [binary, "-c", str(config)], stdin=subprocess.DEVNULL, stdout=output,
                    stderr=subprocess.STDOUT, env=_SUPERVISORD_ENV, cwd=self.paths.home, timeout=30, check=False,
                )
            except (OSError, subprocess.TimeoutExpired) as exc:
                raise RuntimeUnavailable(f"cannot start supervisord ({binary}): {exc}") from exc
            if done.returncode != 0:
                output.seek(0)
                text = output.read().decode("utf-8", errors="replace").strip()
                raise RuntimeUnavailable(f"supervisord -c {config} exited with {done.returncode}: {text}")

    def _wait_answering(self, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.answers():
            if time.monotonic() > deadline:
                raise RuntimeUnavailable(
                    f"supervisord did not answer on {self.paths.socket} within {timeout:.0f}s;"
                    f" see {self.paths.home / 'supervisord.log'}"
                )
            time.sleep(_POLL_SECONDS)


def _beside_python() -> Path:
    return Path(sys.executable).parent / "supervisord"


def _executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def _find_supervisord() -> str:
    beside = _beside_python()
    if _executable(beside):
        return str(beside)
    found = shutil.which("supervisord")
    if found is None:
        raise RuntimeUnavailable("supervisord not found next to the Python interpreter or on PATH")
    return found
