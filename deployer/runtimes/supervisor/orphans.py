"""Processes holding a managed port that no live supervisord of ours started (DESIGN §6).

A SIGKILLed supervisord leaves its programs running; the next one starts duplicates that go
FATAL with "Address already in use". Only a process that provably came from the program
(supervisord's environment markers, the program's directory and command) is ever stopped;
anything else on a managed port is a conflict: reported, never touched.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from collections.abc import Collection, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import psutil

from deployer.host import alive, listening_tcp_sockets, socket_inodes

log = logging.getLogger(__name__)
_POLL_SECONDS = 0.05


@dataclass(frozen=True)
class ProgramProcess:
    """What a program file says its process looks like."""

    name: str
    port: int
    argv: tuple[str, ...]
    directory: str | None
    pid: int | None = None  # the process a live supervisord of ours started for it, when it has one


@dataclass(frozen=True)
class PortHolder:
    """A process listening on a service's port outside any live supervisord of ours.

    ``pgid`` is set only for a proven leftover of the service's own program (safe to stop).
    """

    service: str
    port: int
    pid: int | None
    process: str
    pgid: int | None = None

    @property
    def orphan(self) -> bool:
        return self.pgid is not None

    def describe(self) -> str:
        if self.pid is None:
            return f"port {self.port} held by a process deployer cannot inspect (outside deployer)"
        if self.orphan:
            return f"port {self.port} held by pid {self.pid} ({self.process}), left over from an earlier supervisord"
        return f"port {self.port} held by pid {self.pid} ({self.process}) outside deployer"


@dataclass(frozen=True)
class Orphan:
    """A leftover that was stopped; ``forced`` when it ignored SIGTERM and needed SIGKILL."""

    pid: int
    pgid: int
    service: str
    port: int
    process: str
    forced: bool = False


def port_holders(
    programs: Iterable[ProgramProcess], *, socket_path: Path, supervisors: Collection[int]
) -> list[PortHolder]:
    """Listeners on the programs' ports, except children of the live supervisord pids given."""
    by_port = {program.port: program for program in programs}
    holders: dict[tuple[int, int | None], PortHolder] = {}
    for conn in _listeners(by_port):
        key = (conn.laddr.port, conn.pid)
        if key not in holders:
            holder = _classify(by_port[conn.laddr.port], conn.pid, socket_path, supervisors)
            if holder is not None:
                holders[key] = holder
    return sorted(holders.values(), key=lambda holder: (holder.port, holder.pid or 0))


def reap(holders: Iterable[PortHolder], *, grace: float) -> list[Orphan]:
    """SIGTERM each orphan's process group, SIGKILL what is left after ``grace`` seconds."""
    orphans = [Orphan(holder.pid, holder.pgid, holder.service, holder.port, holder.process)
               for holder in holders if holder.pid is not None and holder.pgid is not None]
    for pgid in {orphan.pgid for orphan in orphans}:
        _signal_group(pgid, signal.SIGTERM)
    stubborn = _wait_gone({pid for orphan in orphans for pid in (orphan.pid, orphan.pgid)}, grace)
    forced = {orphan.pgid for orphan in orphans if stubborn & {orphan.pid, orphan.pgid}}
    for pgid in forced:
        _signal_group(pgid, signal.SIGKILL)
    _wait_gone(stubborn, 5.0)
    reaped = [replace(orphan, forced=orphan.pgid in forced) for orphan in orphans]
    for orphan in reaped:
        log.warning("service %s: stopped pid %d (%s) left holding port %d by an earlier supervisord%s",
                    orphan.service, orphan.pid, orphan.process, orphan.port, " (SIGKILL)" if orphan.forced else "")
    return reaped


def _listeners(by_port: dict[int, ProgramProcess]) -> list[Any]:
    """Listening sockets on these ports, found by walking every process (psutil) only when needed.

    Cheap answers first, from the kernel's socket tables: a port nothing listens on has no
    holder, nor does one whose every listening socket is open in the process our supervisord
    started for the program (a program starting up, before supervisord calls it RUNNING).
    """
    listening = listening_tcp_sockets()
    ports = set(by_port)
    if listening is not None:
        ports = {port for port in ports & listening.keys()
                 if not _own_listener(by_port[port], listening[port])}
    if not ports:
        return []
    try:
        connections = psutil.net_connections(kind="tcp")
    except (psutil.Error, OSError) as exc:
        log.warning("cannot list listening sockets to find port holders: %s", exc)
        return []
    return [conn for conn in connections
            if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port in ports]


def _own_listener(program: ProgramProcess, inodes: set[int]) -> bool:
    return program.pid is not None and inodes <= socket_inodes(program.pid)


def _classify(program: ProgramProcess, pid: int | None, socket_path: Path,
              supervisors: Collection[int]) -> PortHolder | None:
    """None for a live supervisord's own child (not an orphan) or a process gone meanwhile."""
    if pid is None:  # the kernel hides another user's socket owner from us
        return PortHolder(program.name, program.port, None, "")
    try:
        process = psutil.Process(pid)
        if any(parent.pid in supervisors for parent in process.parents()):
            return None
        pgid = os.getpgid(pid)
        ours = pgid not in (0, 1, os.getpgrp()) and _started_by(_leader(pgid, process), program, socket_path)
        return PortHolder(program.name, program.port, pid, process.name(), pgid if ours else None)
    except (psutil.NoSuchProcess, ProcessLookupError):
        return None


def _leader(pgid: int, process: psutil.Process) -> psutil.Process:
    """The group leader is the program supervisord exec'd; a worker holding the port may not be."""
    if pgid == process.pid:
        return process
    try:
        return psutil.Process(pgid)
    except psutil.NoSuchProcess:
        return process


def _started_by(process: psutil.Process, program: ProgramProcess, socket_path: Path) -> bool:
    """Environment markers of our supervisord, plus the program's directory and command line."""
    try:
        env, cwd, argv = process.environ(), process.cwd(), tuple(process.cmdline())
    except psutil.Error:
        return False  # cannot prove it is ours, so it is not
    url = env.get("SUPERVISOR_SERVER_URL", "")
    return (
        env.get("SUPERVISOR_PROCESS_NAME") == program.name
        and url.startswith("unix://")
        and os.path.realpath(url.removeprefix("unix://")) == os.path.realpath(socket_path)
        and program.directory is not None
        and os.path.realpath(cwd) == os.path.realpath(program.directory)
        and bool(program.argv)
        # A script run through its shebang shows the interpreter first: compare the tail.
        and argv[-len(program.argv):] == program.argv
    )


def _signal_group(pgid: int, signum: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):  # already gone
        os.killpg(pgid, signum)


def _wait_gone(pids: Collection[int], timeout: float) -> set[int]:
    """The pids still alive after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    remaining = {pid for pid in pids if alive(pid)}
    while remaining and time.monotonic() < deadline:
        time.sleep(_POLL_SECONDS)
        remaining = {pid for pid in remaining if alive(pid)}
    return remaining
