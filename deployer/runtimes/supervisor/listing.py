"""What runs under supervisord, as its process listing and the program files describe it.

One listing per observation (deployer's compact one where supervisord has it, else
``getAllProcessInfo``); which programs are deployer's; and who holds the port of a service
that is not running. ``runtime`` drives programs; this module only reads.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Collection
from dataclasses import replace
from pathlib import Path
from typing import Any

from supervisor.xmlrpc import Faults

from deployer.errors import ApplyError, RuntimeUnavailable
from deployer.model.actual import ActualService, ServiceState
from deployer.runtimes.supervisor.embedded import EmbeddedSupervisord
from deployer.runtimes.supervisor.files import ProgramFile, read_program_files
from deployer.runtimes.supervisor.orphans import PortHolder, ProgramProcess, port_holders
from deployer.runtimes.supervisor.rpc import SupervisorRpc

RUNTIME_NAME = "supervisor"
_LISTING_RETRY_SECONDS = 60.0
_STATES = {
    "RUNNING": ServiceState.RUNNING,
    "STARTING": ServiceState.STARTING,
    "BACKOFF": ServiceState.STARTING,
    "STOPPED": ServiceState.STOPPED,
    "STOPPING": ServiceState.STOPPED,
    "EXITED": ServiceState.STOPPED,
    "FATAL": ServiceState.FAILED,
}


class ProcessListing:
    """Reads supervisord's processes and the include dir; ``embedded``: every program is ours."""

    def __init__(self, rpc: SupervisorRpc, supervisord: EmbeddedSupervisord, *, embedded: bool) -> None:
        self._rpc = rpc
        self._supervisord = supervisord
        self._paths = supervisord.paths
        self._embedded = embedded
        self._no_listing_until = 0.0  # monotonic time before which supervisord lacks the compact listing

    def observe(self) -> dict[str, ActualService]:
        """One listing plus the program files in the include dir (see ``SupervisorRuntime.observe``)."""
        processes = {info["name"]: info for info in self._list_processes() if info["group"] == info["name"]}
        files = read_program_files(self._paths.include_dir)
        actual = {name: actual_service(name, program, processes.get(name)) for name, program in files.items()}
        for name in processes.keys() - files.keys():
            if self.owns(processes[name]):
                actual[name] = actual_service(name, None, processes[name])
        return dict(sorted(self._with_port_holders(actual, files).items()))

    def owns(self, info: dict[str, Any]) -> bool:
        """Every program of the embedded supervisord is deployer's; elsewhere, those logging into our dir."""
        return self._embedded or Path(str(info.get("stdout_logfile") or "")).parent == self._paths.log_dir

    def port_holders(self, names: Collection[str] | None, files: dict[str, ProgramFile] | None = None,
                     started: dict[str, int] | None = None) -> list[PortHolder]:
        """Who holds the ports of the programs ``names`` (every program: None), one socket listing.

        ``started``: the pid supervisord gave each program it is starting, from the same listing
        (a port held only by that process has no other holder to find).
        """
        files = read_program_files(self._paths.include_dir) if files is None else files
        started = started or {}
        programs = [_program_process(program, started.get(name)) for name, program in files.items()
                    if names is None or name in names]
        wanted = [program for program in programs if program is not None]
        if not wanted:
            return []
        return port_holders(wanted, socket_path=self._paths.socket, supervisors=self._live_supervisors())

    def _with_port_holders(self, actual: dict[str, ActualService], files: dict[str, ProgramFile]
                           ) -> dict[str, ActualService]:
        """Name who holds the port of a service that is not running (one socket listing)."""
        waiting = [name for name, seen in actual.items() if seen.state is not ServiceState.RUNNING]
        started = {name: pid for name in waiting if (pid := actual[name].pid)}
        for holder in self.port_holders(waiting, files, started) if waiting else []:
            seen = actual[holder.service]
            actual[holder.service] = replace(seen, detail=_joined(holder.describe(), seen.detail))
        return actual

    def _live_supervisors(self) -> set[int]:
        """Pids of supervisords whose children are legitimately on a port: ours, and the one answering."""
        pids = {pid for pid in (self._supervisord.live_pid(),) if pid is not None}
        with contextlib.suppress(RuntimeUnavailable, ApplyError):  # none answering: no live children
            pids.add(int(self._rpc.call("getPID")))
        return pids

    def _list_processes(self) -> list[dict[str, Any]]:
        """Every process: deployer's compact listing where supervisord has it, else getAllProcessInfo.

        The embedded supervisord loads the listing (``runtimes/supervisord_ext.py``); one started by
        an older deployer, or an operator's own, answers UNKNOWN_METHOD, asked again a minute later
        (it may have been restarted with the extension meanwhile).
        """
        if time.monotonic() >= self._no_listing_until:
            text = self._rpc.call("deployer.listProcesses", ok={Faults.UNKNOWN_METHOD})
            if text is not None:
                return list(json.loads(text))
            self._no_listing_until = time.monotonic() + _LISTING_RETRY_SECONDS
        return list(self._rpc.call("getAllProcessInfo"))


def actual_service(name: str, program: ProgramFile | None, info: dict[str, Any] | None) -> ActualService:
    """What runs, as its program file and supervisord describe it; a file edited by hand has no spec hash."""
    header = program.header if program is not None else None
    spec_hash = header.spec_hash if header is not None and program is not None and not program.edited else None
    revision = header.revision if header is not None else None
    note = _file_note(program)
    if info is None:
        detail = _joined(note, "program file present but not loaded in supervisord")
        return ActualService(name, RUNTIME_NAME, ServiceState.STOPPED, spec_hash, revision, detail=detail)
    state = _STATES.get(str(info["statename"]), ServiceState.UNKNOWN)
    detail = _joined(note, str(info.get("spawnerr") or info.get("description") or ""))
    pid = int(info["pid"]) or None
    return ActualService(name, RUNTIME_NAME, state, spec_hash, revision, pid=pid, detail=detail)


def _file_note(program: ProgramFile | None) -> str:
    if program is None:
        return "program file missing"
    return "program file edited by hand" if program.edited else ""


def _joined(*parts: str) -> str:
    return "; ".join(part for part in parts if part)


def _program_process(program: ProgramFile, pid: int | None = None) -> ProgramProcess | None:
    port, settings = program.port(), program.settings()
    if port is None or settings is None:
        return None
    return ProgramProcess(program.name, port, settings.argv, settings.directory, pid)
