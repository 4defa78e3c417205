"""The Runtime protocol every runtime implements.

Observing is one listing per call (not one request per service). ``apply``
installs a deployment and starts it, replacing whatever ran under that name;
it returns once the runtime has accepted it, the health gate is the caller's.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from deployer.model.actual import ActualService
from deployer.model.deployment import Deployment
from deployer.model.desired import DesiredService


class Runtime(Protocol):
    name: str

    def check(self) -> None:
        """Raise ``RuntimeUnavailable`` when the runtime cannot be reached."""

    def observe(self) -> dict[str, ActualService]:
        """Every service this runtime manages for deployer, keyed by name."""

    def inspect(self, name: str) -> ActualService | None:
        """One service as ``observe`` would report it (None when absent), at the cost of one service."""

    def apply(self, deployment: Deployment) -> None:
        """Install and start ``deployment``, replacing what runs under its name."""

    def start(self, name: str) -> None:
        """Start an installed but stopped service; already running is fine."""

    def stop(self, name: str) -> None:
        """Stop a service and keep it installed; already stopped is fine."""

    def remove(self, name: str) -> None:
        """Stop and uninstall a service; already absent is fine."""

    def logs(self, name: str, max_bytes: int = 8192) -> str:
        """The last ``max_bytes`` of the service's output, decoded with replacement."""


class BuiltImage(Protocol):
    image: str
    reused: bool
    output_tail: str


@runtime_checkable
class Reloads(Protocol):
    """A runtime that can restart all its processes at once (supervisord's reload on SIGHUP)."""

    def generation(self) -> str | None:
        """A token that changes whenever the runtime restarted or reloaded; None when it cannot tell."""


@runtime_checkable
class BuildsImages(Protocol):
    """Container runtimes build (or reuse) the service's image before ``apply``."""

    def build(self, deployment: Deployment) -> BuiltImage:
        """Build or reuse the image for ``deployment``; raise ``BuildError`` with the output tail."""


@runtime_checkable
class SpreadsOverNodes(Protocol):
    """A runtime whose service answers on several machines (swarm): each is gated and probed where it runs."""

    def addresses(self, name: str) -> tuple[str, ...]:
        """The address of every node where ``name`` runs a task now (empty when none does)."""

    def nodes_for(self, desired: DesiredService) -> tuple[str, ...]:
        """The address of every node a task of ``desired`` may be placed on now (ready, allowed)."""
