"""A deployment: one revision of one service, made concrete for a runtime.

The reconciler builds it (checkout, environment, port, secrets) and a runtime
applies it. ``secret_env`` holds secret values: it is never logged, stored or
shown, and its ``repr`` is masked.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from deployer.model.desired import DesiredService


@dataclass(frozen=True)
class Deployment:
    desired: DesiredService
    revision: int
    workdir: Path
    env_dir: Path | None = None
    argv: tuple[str, ...] = ()
    environment: dict[str, str] = field(default_factory=dict)
    secret_env: dict[str, str] = field(default_factory=dict, repr=False)

    @property
    def name(self) -> str:
        return self.desired.name

    @property
    def port(self) -> int:
        return self.desired.port

    def full_environment(self) -> dict[str, str]:
        """Everything the process gets: manifest env, PORT/HOST, then secrets."""
        return {**self.environment, **self.secret_env}
