"""Supervisor runtime: one ``[program:NAME]`` file per service, driven over XML-RPC.

Talks to supervisord on its unix socket with supervisor's own transport, never
supervisorctl. In "embedded" mode it runs its own supervisord as a separate daemon
under the state dir, so services outlive the deployer and a new runtime reconnects.
XML-RPC faults and socket errors become ``deployer.errors`` here and go no further.
"""

from __future__ import annotations

import fcntl
import http.client
import os
import shutil
import subprocess
import sys
import tempfile
import time
import xmlrpc.client
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from supervisor.xmlrpc import Faults, SupervisorTransport

from deployer.errors import ApplyError, ConfigError, RuntimeUnavailable
from deployer.model.actual import ActualService, ServiceState
from deployer.model.deployment import Deployment
from deployer.render import (
    SYSTEM_PATH,
    ProgramHeader,
    check_program,
    parse_header,
    program_environment,
    redact,
    render_program,
)

EMBEDDED = "embedded"
RUNTIME_NAME = "supervisor"
# AF_UNIX paths are limited to 108 bytes including the terminating NUL.
_MAX_SOCKET_PATH = 107
_POLL_SECONDS = 0.1
_STATES = {
    "RUNNING": ServiceState.RUNNING,
    "STARTING": ServiceState.STARTING,
    "BACKOFF": ServiceState.STARTING,
    "STOPPED": ServiceState.STOPPED,
    "STOPPING": ServiceState.STOPPED,
    "EXITED": ServiceState.STOPPED,
    "FATAL": ServiceState.FAILED,
}
# The embedded supervisord (and so every service) starts from a fixed environment: the
# daemon's own environment holds its secrets (DEPLOYER_*), which must never reach a service.
_SUPERVISORD_ENV = {"PATH": SYSTEM_PATH, "LANG": "C.UTF-8"}


class StartFailed(ApplyError):
    """A program did not reach RUNNING; ``output`` holds the tail of its log."""

    def __init__(self, message: str, *, output: str = "") -> None:
        super().__init__(message)
        self.output = output


class SupervisorProtocolError(ApplyError):
    """supervisord answered with an HTTP error instead of an XML-RPC result or fault."""


class SupervisorRuntime:
    """Runs services as supervisord programs (see the module docstring).

    ``socket`` is ``"embedded"`` or the path (or ``unix://`` URL) of an operator's
    supervisord, which must then include ``include_dir/*.conf`` itself. The include
    dir defaults to ``state_dir/supervisor/programs``; logs go to ``.../supervisor/logs``.
    ``start_timeout`` bounds how long apply/start wait for a program to leave STARTING.
    """

    name = RUNTIME_NAME

    def __init__(
        self,
        state_dir: Path,
        *,
        socket: str = EMBEDDED,
        include_dir: Path | None = None,
        templates_dir: Path,
        user: str = "",
        start_timeout: float = 30.0,
    ) -> None:
        self.home = state_dir.absolute() / "supervisor"
        self.embedded = socket == EMBEDDED
        self.socket_path = self.home / "supervisor.sock" if self.embedded else Path(socket.removeprefix("unix://"))
        self.include_dir = (include_dir or self.home / "programs").absolute()
        self.log_dir = self.home / "logs"
        self.config_file = self.home / "supervisord.conf"
        self.pid_file = self.home / "supervisord.pid"
        self.templates_dir = templates_dir
        self.user = user
        self.start_timeout = start_timeout
        if len(str(self.socket_path).encode()) > _MAX_SOCKET_PATH:
            raise ConfigError(f"supervisor socket path {self.socket_path} is too long for a unix socket")

    # -- the Runtime protocol -------------------------------------------------------

    def check(self) -> None:
        """Raise ``RuntimeUnavailable`` when supervisord does not answer.

        In embedded mode the daemon owns supervisord, so a missing one is started again.
        """
        if self.embedded:
            self.ensure_running()
            return
        state = self._call("getState")
        if state.get("statename") != "RUNNING":
            raise RuntimeUnavailable(f"supervisord at {self.socket_path} is {state.get('statename')}")

    def observe(self) -> dict[str, ActualService]:
        """One ``getAllProcessInfo`` plus the headers of the program files in the include dir.

        A program file whose program is not loaded reads as ``stopped`` (not ``absent``):
        the service is installed, so the planner starts it, or prunes the file if unwanted.
        In embedded mode every loaded program is deployer's, so one without a file is
        reported too (spec hash unknown) and gets updated or removed rather than forgotten.
        """
        processes = {info["group"]: info for info in self._call("getAllProcessInfo") if info["group"] == info["name"]}
        installed = self._installed()
        actual = {name: _actual(name, header, processes.get(name)) for name, header in installed.items()}
        if self.embedded:
            for name in processes.keys() - installed.keys():
                actual[name] = _actual(name, None, processes[name])
        return dict(sorted(actual.items()))

    def apply(self, deployment: Deployment) -> None:
        """Write the program file, load it and start it; returns once it is RUNNING.

        supervisord compares only a program's settings, not deployer's header, so a
        code-only change (new spec hash, same settings) reads as unchanged to it. apply is
        only called to replace what runs, so an already loaded program is always replaced.
        """
        name = deployment.name
        text = render_program(deployment, templates_dir=self.templates_dir, log_dir=self.log_dir, user=self.user)
        check_program(text, environment=program_environment(deployment))
        self._prepare_dirs()
        path = self._program_file(name)
        previous = path.read_text(encoding="utf-8") if path.exists() else None
        _write_atomic(path, text)
        try:
            added = self._reload()[0]
        except Exception:
            self._restore(path, previous)  # the header must keep describing what is loaded
            raise
        if name not in added:
            self._unload(name)
        self._call("addProcessGroup", name, ok={Faults.ALREADY_ADDED})
        self._start(name)

    def start(self, name: str) -> None:
        """Start an installed program, loading its file first when supervisord lacks it."""
        if not self._loaded(name):
            if not self._program_file(name).exists():
                raise ApplyError(f"service {name}: not installed in supervisor (no program file); deploy it first")
            self._reload()
            self._call("addProcessGroup", name, ok={Faults.ALREADY_ADDED})
        self._start(name)

    def stop(self, name: str) -> None:
        """Stop the program and keep it installed; not loaded or not running is fine."""
        results = self._call("stopProcessGroup", name, True, ok={Faults.BAD_NAME}) or []
        failed = [result for result in results if result.get("status") not in (Faults.SUCCESS, Faults.NOT_RUNNING)]
        if failed:
            raise ApplyError(f"service {name}: supervisord could not stop it: {failed[0].get('description')}")

    def remove(self, name: str) -> None:
        """Delete the program file, reload, stop and unload; already absent is fine."""
        self._program_file(name).unlink(missing_ok=True)
        self._reload()
        self._unload(name)

    def logs(self, name: str, max_bytes: int = 8192) -> str:
        """The last ``max_bytes`` of the program's output (stderr is redirected into it).

        supervisord decodes the tail strictly and fails with HTTP 500 when the window cuts
        a UTF-8 character, so the window is shrunk a byte at a time (a character has at
        most four); if that never works the file is read directly, decoded with replacement.
        """
        for shift in range(4):
            try:
                data, _offset, _overflow = self._call("tailProcessStdoutLog", name, 0, max(max_bytes - shift, 0))
                return str(data)
            except SupervisorProtocolError:
                continue
            except ApplyError:
                break  # not loaded (BAD_NAME): its log file may still be there
        return _read_tail(self.log_dir / f"{name}.log", max_bytes)

    # -- the embedded supervisord ---------------------------------------------------

    def ensure_running(self) -> None:
        """Connect to supervisord; in embedded mode start it first when it does not answer."""
        if not self.embedded:
            self._call("getState")
            return
        self._prepare_dirs()
        self._write_if_changed(self.config_file, self._supervisord_conf())
        if self._answers():
            return
        with _flock(self.home / "start.lock"):
            if not self._answers():  # another deployer may have started it meanwhile
                self._spawn_supervisord()
                self._wait_answering()

    def shutdown(self, timeout: float = 60.0) -> None:
        """Stop the embedded supervisord and with it every program (for tests and operators)."""
        pid = _read_pid(self.pid_file)
        try:
            self._call("shutdown")
        except RuntimeUnavailable:
            return
        deadline = time.monotonic() + timeout
        while pid is not None and _alive(pid) and time.monotonic() < deadline:
            time.sleep(_POLL_SECONDS)

    def _supervisord_conf(self) -> str:
        values = {
            "socket": self.socket_path,
            "logfile": self.home / "supervisord.log",
            "pidfile": self.pid_file,
            "childlogdir": self.log_dir,
            "directory": self.home,
            "include": self.include_dir / "*.conf",
        }
        safe = {key: _conf_path(value) for key, value in values.items()}
        return _SUPERVISORD_CONF.format(**safe)

    def _spawn_supervisord(self) -> None:
        binary = _find_supervisord()
        with tempfile.TemporaryFile() as output:
            try:
                # supervisord daemonizes (fork + setsid): the launcher exits, the daemon lives on.
                done = subprocess.run(
                    [binary, "-c", str(self.config_file)], stdin=subprocess.DEVNULL, stdout=output,
                    stderr=subprocess.STDOUT, env=_SUPERVISORD_ENV, cwd=self.home, timeout=30, check=False,
                )
            except (OSError, subprocess.TimeoutExpired) as exc:
                raise RuntimeUnavailable(f"cannot start supervisord ({binary}): {exc}") from exc
            if done.returncode != 0:
                output.seek(0)
                text = output.read().decode("utf-8", errors="replace").strip()
                raise RuntimeUnavailable(f"supervisord -c {self.config_file} exited with {done.returncode}: {text}")

    def _wait_answering(self, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while not self._answers():
            if time.monotonic() > deadline:
                raise RuntimeUnavailable(
                    f"supervisord did not answer on {self.socket_path} within {timeout:.0f}s;"
                    f" see {self.home / 'supervisord.log'}"
                )
            time.sleep(_POLL_SECONDS)

    def _answers(self) -> bool:
        try:
            return bool(self._call("getState").get("statename") == "RUNNING")
        except (RuntimeUnavailable, ApplyError):
            return False

    # -- programs -------------------------------------------------------------------

    def _start(self, name: str) -> None:
        """Start (autostart may have beaten us to it) and wait until RUNNING or failed."""
        try:
            self._call("startProcess", name, False, ok={Faults.ALREADY_STARTED})
        except ApplyError as exc:
            raise self._start_failed(name, str(exc)) from exc
        deadline = time.monotonic() + self.start_timeout
        while True:
            info = self._call("getProcessInfo", name)
            if info["statename"] in ("RUNNING", "EXITED"):
                return  # EXITED: it ran past startsecs; autorestart and the health gate take over
            if info["statename"] == "FATAL":
                raise self._start_failed(name, f"FATAL: {info.get('spawnerr') or 'exited too quickly'}")
            if info["statename"] == "STOPPED" or time.monotonic() > deadline:
                raise self._start_failed(name, f"still {info['statename']} after {self.start_timeout:.0f}s")
            time.sleep(_POLL_SECONDS)

    def _start_failed(self, name: str, what: str) -> StartFailed:
        tail = self.logs(name, 8192)
        short = tail[-1000:].strip() or "(no output)"
        return StartFailed(f"service {name}: did not start: {what}; last output:\n{short}", output=tail)

    def _unload(self, name: str) -> None:
        """stop -> remove: supervisord has no update over XML-RPC, a changed group is re-added."""
        self.stop(name)
        self._call("removeProcessGroup", name, ok={Faults.BAD_NAME})

    def _reload(self) -> tuple[list[str], list[str], list[str]]:
        """``reloadConfig`` -> (added, changed, removed) across every program file."""
        result = self._call("reloadConfig")
        added, changed, removed = result[0]
        return list(added), list(changed), list(removed)

    def _loaded(self, name: str) -> bool:
        return self._call("getProcessInfo", name, ok={Faults.BAD_NAME}) is not None

    def _installed(self) -> dict[str, ProgramHeader]:
        """Program files carrying deployer's header, by service name (the file's stem)."""
        installed: dict[str, ProgramHeader] = {}
        for path in sorted(self.include_dir.glob("*.conf")):
            header = _read_header(path)
            if header is not None and header.name == path.stem:
                installed[header.name] = header
        return installed

    def _program_file(self, name: str) -> Path:
        return self.include_dir / f"{name}.conf"

    def _prepare_dirs(self) -> None:
        for folder in (self.home, self.include_dir, self.log_dir):
            folder.mkdir(parents=True, exist_ok=True)

    def _restore(self, path: Path, previous: str | None) -> None:
        if previous is None:
            path.unlink(missing_ok=True)
        else:
            _write_atomic(path, previous)

    def _write_if_changed(self, path: Path, text: str) -> None:
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            _write_atomic(path, text)

    # -- XML-RPC --------------------------------------------------------------------

    def _call(self, method: str, *args: Any, ok: Collection[int] = ()) -> Any:
        """One call on a fresh connection (safe from any thread); faults in ``ok`` return None."""
        transport = SupervisorTransport(None, None, f"unix://{self.socket_path}")
        proxy = xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport)
        function: Callable[..., Any] = getattr(proxy.supervisor, method)
        try:
            return function(*args)
        except xmlrpc.client.Fault as fault:
            if fault.faultCode in ok:
                return None
            raise self._fault_error(method, fault) from None
        except xmlrpc.client.ProtocolError as exc:
            raise SupervisorProtocolError(f"supervisord {method}: HTTP {exc.errcode} {exc.errmsg}") from None
        except (OSError, http.client.HTTPException) as exc:
            raise RuntimeUnavailable(f"supervisord at {self.socket_path} is not answering: {exc}") from None
        finally:
            transport.close()

    def _fault_error(self, method: str, fault: xmlrpc.client.Fault) -> ApplyError | RuntimeUnavailable:
        text = redact(str(fault.faultString))
        if fault.faultCode == Faults.SHUTDOWN_STATE:
            return RuntimeUnavailable(f"supervisord at {self.socket_path} is shutting down")
        if fault.faultCode == Faults.CANT_REREAD:
            return ApplyError(f"supervisord cannot re-read its program files in {self.include_dir}: {text}")
        return ApplyError(f"supervisord {method}: {text}")


_SUPERVISORD_CONF = """\
; Written by deployer for its embedded supervisord; rewritten when the daemon starts.
[unix_http_server]
file={socket}
chmod=0700

[supervisord]
logfile={logfile}
logfile_maxbytes=10MB
logfile_backups=3
pidfile={pidfile}
childlogdir={childlogdir}
directory={directory}
identifier=deployer
nodaemon=false

[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

[include]
files = {include}
"""


def _actual(name: str, header: ProgramHeader | None, info: dict[str, Any] | None) -> ActualService:
    if info is None:
        return ActualService(
            name, RUNTIME_NAME, ServiceState.STOPPED, header.spec_hash if header else None,
            header.revision if header else None, detail="program file present but not loaded in supervisord",
        )
    state = _STATES.get(str(info["statename"]), ServiceState.UNKNOWN)
    detail = str(info.get("spawnerr") or info.get("description") or "")
    if header is None:
        detail = "loaded in supervisord but its program file is gone"
    return ActualService(
        name, RUNTIME_NAME, state, header.spec_hash if header else None,
        header.revision if header else None, pid=int(info["pid"]) or None, detail=detail,
    )


def _read_header(path: Path) -> ProgramHeader | None:
    try:
        with path.open(encoding="utf-8", errors="replace") as handle:
            return parse_header(handle.readline(4096))
    except OSError:
        return None  # removed between listing and reading


def _read_tail(path: Path, max_bytes: int) -> str:
    try:
        with path.open("rb") as handle:
            size = handle.seek(0, os.SEEK_END)
            handle.seek(max(size - max_bytes, 0))
            return handle.read().decode("utf-8", errors="replace")
    except OSError:
        return ""


def _write_atomic(path: Path, text: str) -> None:
    """Write beside ``path`` under a name the ``*.conf`` include glob never matches, then rename."""
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _conf_path(path: Path) -> str:
    """A path for supervisord.conf: no whitespace or comment characters, ``%`` escaped."""
    text = str(path)
    if any(char.isspace() or char in ";#" or ord(char) < 32 for char in text):
        raise ConfigError(f"supervisor path {text!r} must not contain whitespace, ';' or '#'")
    return text.replace("%", "%%")


def _find_supervisord() -> str:
    beside = Path(sys.executable).parent / "supervisord"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("supervisord")
    if found is None:
        raise RuntimeUnavailable("supervisord not found next to the Python interpreter or on PATH")
    return found


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _alive(pid: int) -> bool:
    """True while ``pid`` runs; a zombie counts as gone (our parent may never reap it)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return False
    return fields[0] != "Z"


@contextmanager
def _flock(path: Path) -> Iterator[None]:
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
