"""What the reconciler tells the rest of the daemon, as plain values.

Metrics and Gitea commit statuses subscribe to these instead of being reached
through the reconciler: an attempt started or finished, a service observed or
removed, a commit that cannot be deployed at all, a pass done.
"""

from __future__ import annotations

from dataclasses import dataclass

from deployer.model.status import Outcome, Trigger


@dataclass(frozen=True)
class AttemptStarted:
    service: str
    source: str
    sha: str
    revision: int
    attempt: int
    trigger: Trigger


@dataclass(frozen=True)
class AttemptFinished:
    service: str
    source: str
    sha: str
    revision: int | None
    attempt: int
    trigger: Trigger
    outcome: Outcome
    reason: str
    message: str
    seconds: float


@dataclass(frozen=True)
class CommitRefused:
    """A commit whose manifest cannot be deployed: reported against every service of the source."""

    service: str
    source: str
    sha: str
    reason: str
    message: str


@dataclass(frozen=True)
class ServiceObserved:
    service: str
    running: bool
    healthy: bool


@dataclass(frozen=True)
class ServiceRemoved:
    service: str


@dataclass(frozen=True)
class ServiceCrashed:
    """A service that passed its gate died later (its runtime restarts it, or it is down); or came back."""

    service: str
    detail: str
    recovered: bool = False


@dataclass(frozen=True)
class ServiceDegraded:
    """A swarm service runs fewer tasks than asked (a node lost, no suitable node …); or all of them again."""

    service: str
    detail: str
    recovered: bool = False


@dataclass(frozen=True)
class PassFinished:
    source: str
    seconds: float


Event = (AttemptStarted | AttemptFinished | CommitRefused | ServiceObserved | ServiceRemoved | ServiceCrashed
         | ServiceDegraded | PassFinished)
