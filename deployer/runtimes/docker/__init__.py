"""The Docker runtimes: ``docker`` (one container per service) and ``swarm`` (one swarm service).

``engine`` is the connection and its error translation; ``images`` builds, reuses, pushes and
prunes images; ``ownership`` holds the labels; ``spec`` turns a deployment into container
settings; ``containers`` and ``swarm`` are the two runtimes. Code outside this package imports from here only.
"""

from deployer.runtimes.docker.containers import ContainerExited, DockerRuntime
from deployer.runtimes.docker.engine import Engine
from deployer.runtimes.docker.images import ImageBuild, ImageBuilder
from deployer.runtimes.docker.ownership import LABEL_SERVICE, MANAGED_FILTER, ContainerConflict, labels
from deployer.runtimes.docker.spec import command, environment
from deployer.runtimes.docker.swarm import SwarmRuntime, UpdateOrder, service_spec

__all__ = [
    "LABEL_SERVICE",
    "MANAGED_FILTER",
    "ContainerConflict",
    "ContainerExited",
    "DockerRuntime",
    "Engine",
    "ImageBuild",
    "ImageBuilder",
    "SwarmRuntime",
    "UpdateOrder",
    "command",
    "environment",
    "labels",
    "service_spec",
]
