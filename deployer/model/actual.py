"""What a runtime reports it is running, observed, never assumed."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class ServiceState(StrEnum):
    RUNNING = "running"
    STARTING = "starting"
    STOPPED = "stopped"
    FAILED = "failed"
    ABSENT = "absent"
    # Written by the observer, never a runtime's listing: running, but fewer tasks than asked (swarm).
    DEGRADED = "degraded"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class Task:
    """One task of a swarm service: the node it is on (by address: hostnames can repeat), its state, and why."""

    node: str
    state: str
    error: str = ""

    def __str__(self) -> str:
        return f"{self.node or 'no node'} {self.state}" + (f" ({self.error})" if self.error else "")


@dataclass(frozen=True)
class ActualService:
    """One managed service as its runtime sees it.

    ``spec_hash`` and ``revision`` are read back from what deployer wrote
    (program file header, container labels), so drift is visible as a mismatch. A swarm service
    adds its ``tasks``, the ``addresses`` of the nodes where a task runs (where it answers), and
    ``degraded``: why fewer tasks run than asked ("" when all do).
    """

    name: str
    runtime: str
    state: ServiceState
    spec_hash: str | None = None
    revision: int | None = None
    pid: int | None = None
    detail: str = ""
    tasks: tuple[Task, ...] = ()
    addresses: tuple[str, ...] = ()
    degraded: str = ""

    @property
    def present(self) -> bool:
        return self.state is not ServiceState.ABSENT
