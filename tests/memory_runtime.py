"""An in-memory runtime for reconciler unit tests: records calls, runs nothing.

``fail_next`` makes the next apply of a service fail, and ``healthy`` decides
what the fake health check sees, so rollback paths can be driven as data.
"""

from __future__ import annotations

from dataclasses import replace

from deployer.errors import ApplyError, RuntimeUnavailable
from deployer.model.actual import ActualService, ServiceState
from deployer.model.deployment import Deployment


class MemoryRuntime:
    name = "memory"

    def __init__(self, name: str = "supervisor") -> None:
        self.name = name
        self.services: dict[str, ActualService] = {}
        self.deployments: dict[str, Deployment] = {}
        self.calls: list[tuple[str, str]] = []
        self.fail_next: set[str] = set()
        self.down = False

    def check(self) -> None:
        self.calls.append(("check", ""))
        if self.down:
            raise RuntimeUnavailable(f"{self.name}: simulated outage")

    def observe(self) -> dict[str, ActualService]:
        self.calls.append(("observe", ""))
        if self.down:
            raise RuntimeUnavailable(f"{self.name}: simulated outage")
        return dict(self.services)

    def inspect(self, name: str) -> ActualService | None:
        self.calls.append(("inspect", name))
        if self.down:
            raise RuntimeUnavailable(f"{self.name}: simulated outage")
        return self.services.get(name)

    def apply(self, deployment: Deployment) -> None:
        self.calls.append(("apply", deployment.name))
        if deployment.name in self.fail_next:
            self.fail_next.discard(deployment.name)
            raise ApplyError(f"{deployment.name}: simulated apply failure")
        self.deployments[deployment.name] = deployment
        self.services[deployment.name] = ActualService(
            name=deployment.name,
            runtime=self.name,
            state=ServiceState.RUNNING,
            spec_hash=deployment.desired.spec_hash,
            revision=deployment.revision,
        )

    def start(self, name: str) -> None:
        self.calls.append(("start", name))
        self.services[name] = replace(self.services[name], state=ServiceState.RUNNING)

    def stop(self, name: str) -> None:
        self.calls.append(("stop", name))
        if name in self.services:
            self.services[name] = replace(self.services[name], state=ServiceState.STOPPED)

    def remove(self, name: str) -> None:
        self.calls.append(("remove", name))
        self.services.pop(name, None)
        self.deployments.pop(name, None)

    def logs(self, name: str, max_bytes: int = 8192) -> str:
        return f"{name}: no logs in memory\n"[-max_bytes:]
