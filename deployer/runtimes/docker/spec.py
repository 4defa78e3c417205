"""What a deployment becomes in a container: command, environment and resource limits.

Shared by the docker runtime (``containers``) and the swarm runtime (``swarm``); pure
translations of the deployment, except ``check_memory``, which asks the engine for the host's memory.
"""

from __future__ import annotations

import shlex
from typing import Any

import docker.types

from deployer.errors import ApplyError
from deployer.model.deployment import Deployment
from deployer.model.desired import DesiredService

# Inside a container the service must listen on every interface to be reachable through
# the published port; the host side of the port is what is bound to loopback.
CONTAINER_HOST = "0.0.0.0"
_MEMORY_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}


def command(desired: DesiredService, listen: int | None = None) -> list[str] | None:
    """The manifest command split like a shell (none runs it), ``${PORT}``/``${HOST}`` substituted.

    ``None`` when the manifest has no command: the image's own CMD runs. ``listen`` is the port
    the process listens on when it is not the sticky one (a blue/green slot's).
    """
    if not desired.command:
        return None
    port = str(listen if listen is not None else desired.port)
    return [part.replace("${PORT}", port).replace("${HOST}", CONTAINER_HOST) for part in shlex.split(desired.command)]


def environment(deployment: Deployment) -> list[str]:
    """``KEY=value`` entries, sorted: the deployment's environment with HOST for a container."""
    env = {**deployment.environment, "HOST": CONTAINER_HOST, "PORT": str(deployment.port), **deployment.secret_env}
    return [f"{key}={value}" for key, value in sorted(env.items())]


def memory_bytes(text: str | None) -> int | None:
    """``resources.memory`` ("512m", "2g", "1.5g", "1000000") in bytes."""
    if not text:
        return None
    unit = text[-1].lower() if text[-1].isalpha() else ""
    number = text[:-1] if unit else text
    return int(float(number) * _MEMORY_UNITS[unit])


def nano_cpus(cpus: float | None) -> int | None:
    return int(cpus * 1_000_000_000) if cpus else None


def check_memory(api: Any, deployment: Deployment) -> None:
    """Refuse a memory limit above the host's memory (the engine would accept it silently)."""
    wanted = memory_bytes(deployment.desired.resources.memory)
    if wanted is None:
        return
    total = int(api.info().get("MemTotal") or 0)
    if total and wanted > total:
        raise ApplyError(
            f"service {deployment.name}: resources.memory {deployment.desired.resources.memory} is more than "
            f"this host has ({total / 1024**3:.1f} GiB); lower it in service.yaml"
        )


def device_requests(gpus: int) -> list[Any] | None:
    if gpus <= 0:
        return None
    return [docker.types.DeviceRequest(count=gpus, capabilities=[["gpu"]])]
