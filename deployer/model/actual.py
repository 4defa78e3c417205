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
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class ActualService:
    """One managed service as its runtime sees it.

    ``spec_hash`` and ``revision`` are read back from what deployer wrote
    (program file header, container labels), so drift is visible as a mismatch.
    """

    name: str
    runtime: str
    state: ServiceState
    spec_hash: str | None = None
    revision: int | None = None
    pid: int | None = None
    detail: str = ""

    @property
    def present(self) -> bool:
        return self.state is not ServiceState.ABSENT
