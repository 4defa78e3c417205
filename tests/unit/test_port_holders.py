"""Who holds a managed port: the cheap answers from the kernel's tables before a walk of every process."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from deployer.runtimes.supervisor import orphans
from deployer.runtimes.supervisor.orphans import ProgramProcess, port_holders

LISTENER = """
import socket, sys, time
s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen()
print(s.getsockname()[1], flush=True)
time.sleep(60)
"""


@pytest.fixture
def listener() -> Iterator[tuple[subprocess.Popen[str], int]]:
    process = subprocess.Popen([sys.executable, "-c", LISTENER], stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        yield process, int(process.stdout.readline())
    finally:
        process.kill()
        process.wait()


@pytest.fixture
def scans(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the walks of every process's sockets (psutil.net_connections), still doing them."""
    counted: list[int] = []
    real = psutil.net_connections

    def counting(*args: object, **kwargs: object) -> list[object]:
        counted.append(1)
        return list(real(*args, **kwargs))  # type: ignore[arg-type]

    monkeypatch.setattr(orphans.psutil, "net_connections", counting)
    return counted


def program(port: int, pid: int | None) -> ProgramProcess:
    return ProgramProcess("svc", port, ("python", "serve.py"), "/nonexistent", pid)


def test_a_port_held_only_by_the_programs_own_starting_process_needs_no_walk(
        listener: tuple[subprocess.Popen[str], int], scans: list[int]) -> None:
    process, port = listener
    assert port_holders([program(port, process.pid)], socket_path=Path("/nonexistent.sock"), supervisors=()) == []
    assert scans == []


def test_a_port_held_by_another_process_is_still_found(listener: tuple[subprocess.Popen[str], int],
                                                       scans: list[int]) -> None:
    holder, port = listener
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        for pid in (other.pid, None):  # supervisord started a different process, or none yet
            found = port_holders([program(port, pid)], socket_path=Path("/nonexistent.sock"), supervisors=())
            assert [(h.port, h.pid, h.orphan) for h in found] == [(port, holder.pid, False)]
    finally:
        other.kill()
        other.wait()
    assert len(scans) == 2


def test_a_port_nothing_listens_on_needs_no_walk(scans: list[int]) -> None:
    with socket.socket() as bound:
        bound.bind(("127.0.0.1", 0))  # bound, not listening
        port = bound.getsockname()[1]
        assert port_holders([program(port, None)], socket_path=Path("/nonexistent.sock"), supervisors=()) == []
    assert scans == []
