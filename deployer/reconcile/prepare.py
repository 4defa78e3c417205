"""A revision made ready to start: checkout (its Git LFS files, its artifacts), ``files:``, then the build.

Nothing runs yet and nothing serving is touched: a failure here leaves the serving revision as it
was (the rollout says so: ``NotStarted``). Each part is a recorded step of the attempt.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

from deployer.artifacts import Artifacts
from deployer.build import EnvBuilder
from deployer.errors import BuildError, Reason, StalledError
from deployer.model.deployment import Deployment
from deployer.model.desired import DesiredService
from deployer.reconcile.gate import Steps
from deployer.reconcile.resolve import SERVICE_HOST, argv, read_files, service_dir
from deployer.reconcile.slots import Placement
from deployer.reconcile.sources import SourceRegistry
from deployer.runtimes.base import BuildsImages, Runtime
from deployer.safety import UnsafePath, write_inside
from deployer.secrets import SecretStore


class Preparation:
    """Turns a desired service into the ``Deployment`` a runtime applies, recording each step."""

    def __init__(self, runtimes: Mapping[str, Runtime], builder: EnvBuilder, secrets: SecretStore,
                 sources: SourceRegistry, steps: Steps, *, builds: threading.BoundedSemaphore,
                 artifacts: Artifacts | None) -> None:
        self._runtimes = runtimes
        self._builder = builder
        self._secrets = secrets
        self._sources = sources
        self._steps = steps
        self._builds = builds  # builds use the CPU; bounded apart from deploys (see RolloutParts)
        self._artifacts = artifacts

    def prepare(self, desired: DesiredService, revision: int, attempt: int, prefix: str,
                 place: Placement) -> Deployment:
        """Checkout (its Git LFS files, its artifacts), then build: a Python environment or an image (containers)."""
        with self._steps.step(attempt, f"{prefix}checkout") as step:
            source = self._sources.get(desired.source)
            checkout = source.checkout(desired.sha)
            workdir = service_dir(checkout, desired.path)
            step.output = f"{desired.sha[:7]} at {workdir}"
        pointers = source.lfs_pointers(desired.sha, workdir)
        if pointers:  # Git LFS files: the real ones replace their pointers before anything builds or starts
            with self._steps.step(attempt, f"{prefix}lfs") as step:
                step.output = source.materialise_lfs(desired.sha, workdir, pointers).summary()
        if desired.artifacts and self._artifacts is not None:  # before anything of the revision runs
            with self._steps.step(attempt, f"{prefix}artifacts") as step:
                step.output = self._artifacts.place(desired.name, desired.artifacts, workdir).summary()
        secret_env = self._secrets.resolve(desired.secrets, service=desired.name)
        files = self._files(desired, workdir, attempt, prefix,
                            into_checkout=not isinstance(self._runtimes[desired.runtime], BuildsImages))
        port = place.port if place.port is not None else desired.port
        environment = {**desired.env, "PORT": str(port), "HOST": SERVICE_HOST}
        deployment = Deployment(desired=desired, revision=revision, workdir=workdir, argv=argv(desired.command, port),
                                environment=environment, secret_env=secret_env, slot=place.slot,
                                slot_port=place.port, files=files)
        runtime = self._runtimes[desired.runtime]
        with self._steps.step(attempt, f"{prefix}build") as step, self._builds:
            try:
                if isinstance(runtime, BuildsImages):
                    image = runtime.build(deployment)
                    step.output = f"reused image {image.image}" if image.reused else image.output_tail
                    return deployment
                built = self._builder.ensure(workdir, desired.requirements)
            except BuildError as exc:
                step.output = f"{exc}\n{exc.output}".strip()
                raise
            done = f"reused environment {built.key[:12]}" if built.reused else built.output_tail
            step.output = f"{built.summary}\n{done}"
        return replace(deployment, env_dir=built.env_dir)

    def _files(self, desired: DesiredService, workdir: Path, attempt: int, prefix: str, *,
               into_checkout: bool) -> tuple[tuple[str, bytes], ...]:
        """The ``files:`` contents; a process runtime's are written into the checkout now (0600).

        A container runtime copies them into the container before it starts (never into the image).
        """
        if not desired.files:
            return ()
        with self._steps.step(attempt, f"{prefix}files") as step:
            contents = read_files(desired.name, desired.files, workdir, self._secrets)
            missing = [entry.secret for entry in desired.files if entry.secret and contents.get(entry.path) is None]
            if missing:
                self._secrets.resolve(missing, service=desired.name)  # raises SecretMissing naming them
            ready = tuple((path, data) for path, data in contents.items() if data is not None)
            if into_checkout:
                for path, data in ready:
                    try:
                        write_inside(workdir, path, data, mode=0o600)
                    except (UnsafePath, OSError) as exc:
                        raise StalledError(f"{desired.name}: files: cannot write {path}: {exc}",
                                           reason=Reason.APPLY_FAILED) from None
            step.output = "\n".join(f"{entry.path} (mode 0600) from " + (f"secret {entry.secret}" if entry.secret
                                                                        else f"{entry.from_}")
                                    for entry in desired.files)
        return ready
