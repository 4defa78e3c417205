"""A deployment: one revision of one service, made concrete for a runtime.

The reconciler builds it (checkout, environment, port, secrets) and a runtime
applies it. Behind the gateway a service runs in a blue/green ``slot``: the runtime
then manages the instance ``NAME--SLOT`` on the slot's port, and knows nothing else
of slots. ``secret_env`` and ``files`` (the ``files:`` entries' contents, by path in the
service folder) hold secret values: never logged, stored or shown.
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
    slot: str | None = None  # blue/green behind the gateway; None: the service itself on its sticky port
    slot_port: int | None = None
    files: tuple[tuple[str, bytes], ...] = field(default=(), repr=False)

    @property
    def name(self) -> str:
        """What the runtime calls it: the service, or its slot's instance."""
        return instance_name(self.desired.name, self.slot)

    @property
    def service(self) -> str:
        return self.desired.name

    @property
    def port(self) -> int:
        """Where the process listens: its slot's port behind the gateway, else the sticky port."""
        return self.slot_port if self.slot_port is not None else self.desired.port

    def full_environment(self) -> dict[str, str]:
        """Everything the process gets: manifest env, PORT/HOST, then secrets."""
        return {**self.environment, **self.secret_env}


SLOT_SEPARATOR = "--"
SLOTS = ("blue", "green")


def instance_name(service: str, slot: str | None) -> str:
    """``NAME--blue``: service names may not end in a slot suffix, so an instance never clashes."""
    return f"{service}{SLOT_SEPARATOR}{slot}" if slot else service


def split_instance(instance: str) -> tuple[str, str | None]:
    """``("NAME", "blue")`` for a slot's instance, ``(instance, None)`` for a plain one."""
    for slot in SLOTS:
        suffix = f"{SLOT_SEPARATOR}{slot}"
        if instance.endswith(suffix) and len(instance) > len(suffix):
            return instance[: -len(suffix)], slot
    return instance, None
