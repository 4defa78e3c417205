"""Supervisor runtime: one ``[program:NAME]`` file per service, driven over XML-RPC.

Talks to supervisord on its unix socket (never supervisorctl). In "embedded" mode it runs its
own supervisord under the state dir, so services outlive the deployer and a new runtime
reconnects. Drift is observed truthfully: edited or missing files, stopped programs, ports held.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Collection
from pathlib import Path
from typing import Any

from supervisor.xmlrpc import Faults

from deployer.errors import ApplyError, ConfigError, Reason, RuntimeUnavailable
from deployer.model.actual import ActualService
from deployer.model.cause import root_cause
from deployer.model.deployment import Deployment
from deployer.runtimes.supervisor.embedded import EmbeddedSupervisord, SupervisorPaths
from deployer.runtimes.supervisor.files import read_program_file, read_tail, restore, write_atomic
from deployer.runtimes.supervisor.listing import RUNTIME_NAME, ProcessListing, actual_service
from deployer.runtimes.supervisor.orphans import Orphan, PortHolder, reap
from deployer.runtimes.supervisor.program import check_program, program_environment, render_program
from deployer.runtimes.supervisor.rpc import SupervisorProtocolError, SupervisorRpc

__all__ = ["EMBEDDED", "StartFailed", "SupervisorRuntime"]

log = logging.getLogger(__name__)

EMBEDDED = "embedded"
# AF_UNIX paths are limited to 108 bytes including the terminating NUL.
_MAX_SOCKET_PATH = 107
_SUPERVISORD_SUFFIX = 8  # supervisord binds "<path>.<pid>" first, then renames it to <path>
_POLL_SECONDS = 0.1
# stopProcessGroup waits for the program to exit: up to its stopwaitsecs (10 in the template).
_STOP_ALLOWANCE = 60.0
_ADDRESS_IN_USE = "Address already in use"


class StartFailed(ApplyError):
    """A program did not reach RUNNING; ``output`` holds the tail of its log."""

    def __init__(self, message: str, *, output: str = "", reason: Reason | None = None) -> None:
        super().__init__(message, reason=reason)
        self.output = output


class SupervisorRuntime:
    """Runs services as supervisord programs (see the module docstring).

    ``socket`` is ``"embedded"`` or the path (or ``unix://`` URL) of an operator's
    supervisord, which must then include ``include_dir/*.conf`` itself. The include
    dir defaults to ``state_dir/supervisor/programs``; logs go to ``.../supervisor/logs``.
    ``start_timeout`` bounds how long apply/start wait for a program to leave STARTING,
    ``rpc_timeout`` any one XML-RPC call, ``orphan_grace`` SIGTERM before SIGKILL for leftovers.
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
        rpc_timeout: float = 10.0,
        orphan_grace: float = 10.0,
    ) -> None:
        self.home = state_dir.absolute() / "supervisor"
        self.embedded = socket == EMBEDDED
        self.socket_path = self.home / "supervisor.sock" if self.embedded else Path(socket.removeprefix("unix://"))
        self.include_dir = (include_dir or self.home / "programs").absolute()
        self.log_dir = self.home / "logs"
        self.templates_dir = templates_dir
        self.user = user
        self.start_timeout = start_timeout
        self.orphan_grace = orphan_grace
        if len(str(self.socket_path).encode()) > _MAX_SOCKET_PATH - _SUPERVISORD_SUFFIX:
            raise ConfigError(f"supervisor socket path {self.socket_path} is too long for a unix socket (at most "
                              f"{_MAX_SOCKET_PATH - _SUPERVISORD_SUFFIX} bytes): choose a shorter [paths] state_dir")
        self.rpc = SupervisorRpc(self.socket_path, include_dir=self.include_dir, timeout=rpc_timeout)
        self.embedded_supervisord = EmbeddedSupervisord(
            SupervisorPaths(self.home, self.socket_path, self.include_dir, self.log_dir), self.rpc)
        self.listing = ProcessListing(self.rpc, self.embedded_supervisord, embedded=self.embedded)

    # -- the Runtime protocol -------------------------------------------------------

    def check(self) -> None:
        """Raise ``RuntimeUnavailable`` when supervisord does not answer.

        In embedded mode the daemon owns supervisord, so a missing one is started again
        (after stopping what a killed one left holding the services' ports).
        """
        if self.embedded:
            self.ensure_running()
            return
        state = self._call("getState")
        if state.get("statename") != "RUNNING":
            raise RuntimeUnavailable(f"supervisord at {self.socket_path} is {state.get('statename')}")

    def observe(self) -> dict[str, ActualService]:
        """One ``getAllProcessInfo`` plus the program files in the include dir.

        A file whose body no longer matches its header's hash reports no spec hash (so the
        planner rewrites it); a loaded program of ours without a file likewise. A file whose
        program is not loaded reads ``stopped``. A service that is not running and whose port
        is held by another process says so in ``detail``.
        """
        return self.listing.observe()

    def inspect(self, name: str) -> ActualService | None:
        """One ``getProcessInfo`` and one program file: a deploy's gate asks this every second."""
        info = self._call("getProcessInfo", name, ok={Faults.BAD_NAME})
        program = read_program_file(self._program_file(name))
        if program is None and (info is None or not self.listing.owns(info)):
            return None
        return actual_service(name, program, info)

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
        write_atomic(path, text)
        try:
            added = self._reload()[0]
        except Exception:
            restore(path, previous)  # the header must keep describing what is loaded
            raise
        if name not in added:
            self._unload(name)
        self._call("addProcessGroup", name, ok={Faults.ALREADY_ADDED})
        self._start(name)

    def start(self, name: str) -> None:
        """Start an installed program, loading its file first when supervisord lacks it
        (after an interrupted apply or a ``supervisorctl remove``)."""
        if not self._loaded(name):
            if not self._program_file(name).exists():
                raise ApplyError(f"service {name}: not installed in supervisor (no program file); deploy it first")
            self._reload()
            self._call("addProcessGroup", name, ok={Faults.ALREADY_ADDED})
        self._start(name)

    def stop(self, name: str) -> None:
        """Stop the program and keep it installed; not loaded or not running is fine."""
        # stopProcess, not stopProcessGroup: the group call answers on supervisord's next
        # one-second tick (measured: 1.0 s against 5 ms), and each group holds one process.
        self._call("stopProcess", f"{name}:{name}", True, ok={Faults.BAD_NAME, Faults.NOT_RUNNING},
                   timeout=self.rpc.timeout + _STOP_ALLOWANCE)

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
        return read_tail(self.log_dir / f"{name}.log", max_bytes)

    # -- leftovers holding a service's port ------------------------------------------

    def reap_orphans(self, names: Collection[str] | None = None) -> list[Orphan]:
        """Stop processes left by our programs on their ports outside any live supervisord.

        A SIGKILLed supervisord leaves its programs running; a new one would start duplicates
        that fail with "Address already in use". Only a process proven to come from the
        program (see ``orphans``) is stopped; anything else is logged and left alone.
        """
        holders = self.listing.port_holders(names)
        for holder in holders:
            if not holder.orphan:
                log.warning("service %s: %s; left alone, the service cannot start", holder.service, holder.describe())
        return reap(holders, grace=self.orphan_grace)

    def generation(self) -> str | None:
        """Which start or reload of supervisord this is: it makes its unix socket anew each time (a
        SIGHUP keeps its pid but restarts every program); None while there is no socket."""
        try:
            found = self.socket_path.stat()
        except OSError:
            return None
        return f"{found.st_ino}:{found.st_ctime_ns}"

    # -- the embedded supervisord ---------------------------------------------------

    def ensure_running(self) -> None:
        """Connect to supervisord; in embedded mode start it first when it does not answer."""
        if not self.embedded:
            self._call("getState")
            return
        self._prepare_dirs()
        self.embedded_supervisord.ensure_running(reap=self.reap_orphans)

    def shutdown(self, timeout: float = 60.0) -> None:
        """Stop the embedded supervisord and with it every program (for tests and operators)."""
        self.embedded_supervisord.shutdown(timeout)

    # -- programs -------------------------------------------------------------------

    def _start(self, name: str) -> None:
        """Start and wait for RUNNING; a port held by our own leftover is freed and the start retried once."""
        try:
            self._start_and_wait(name)
        except StartFailed as failure:
            if _ADDRESS_IN_USE not in failure.output:
                raise
            holders = self.listing.port_holders([name])
            if not any(holder.orphan for holder in holders):
                raise _port_conflict(name, failure, holders) from None
            reap(holders, grace=self.orphan_grace)
            log.info("service %s: retrying the start after stopping the leftovers on its port", name)
            self._start_and_wait(name)

    def _start_and_wait(self, name: str) -> None:
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
        cause = root_cause(tail)  # first: a commit status shows little more than a line
        return StartFailed(f"{cause} — service {name} did not start: {what}" if cause else
                           f"service {name}: did not start: {what} (no output)", output=tail)

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

    def _program_file(self, name: str) -> Path:
        return self.include_dir / f"{name}.conf"

    def _prepare_dirs(self) -> None:
        for folder in (self.home, self.include_dir, self.log_dir):
            folder.mkdir(parents=True, exist_ok=True)
            if folder.is_relative_to(self.home):  # ours: program files and logs are for root's eyes only
                folder.chmod(0o700)

    def _call(self, method: str, *args: Any, ok: Collection[int] = (), timeout: float | None = None) -> Any:
        return self.rpc.call(method, *args, ok=ok, timeout=timeout)


def _port_conflict(name: str, failure: StartFailed, holders: list[PortHolder]) -> StartFailed:
    """A start that failed on a port held outside deployer: say by whom, as a PortConflict."""
    if not holders:
        return failure
    held = "; ".join(holder.describe() for holder in holders)
    return StartFailed(
        f"service {name}: did not start: {held}; stop that process or give the service another port",
        output=failure.output, reason=Reason.PORT_CONFLICT,
    )
