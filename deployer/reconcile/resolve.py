"""Resolving a commit: ``service.yaml`` at one sha becomes one ``DesiredService`` per entry.

Resolution reads the checkout and the store but records nothing: which port a
service gets is asked of a ``PortChooser`` (the pass's claims ports, a preview
only looks them up), and recording revisions is the pass's job. A problem with
one entry is kept beside the others, so one broken service never hides the rest.
"""

from __future__ import annotations

import hashlib
import json
import shlex
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from deployer.build import resolve_requirements
from deployer.errors import BuildError, DeployerError, Reason, StalledError
from deployer.loader import load_manifest_with_text
from deployer.model.desired import DesiredService
from deployer.model.manifest import FileSpec, ServiceManifest
from deployer.safety import UnsafePath, contained, read_inside
from deployer.secrets import SecretStore
from deployer.source import CommitInfo, GitSource
from deployer.store import Store

MANIFEST = "service.yaml"
SERVICE_HOST = "127.0.0.1"
MAX_FILE_BYTES = 1024 * 1024  # a repository file given by ``files: [{from: …}]``


class PortChooser(Protocol):
    def port_for(self, entry: ServiceManifest, source: str, runtime: str) -> int:
        """The port ``entry`` gets; may raise ``StalledError`` (a conflict)."""


@dataclass
class Resolution:
    """A source's manifest at one commit: desired services, and the entries that could not be resolved."""

    sha: str
    text: str = ""
    commit: CommitInfo | None = None
    desired: dict[str, DesiredService] = field(default_factory=dict)
    errors: dict[str, DeployerError] = field(default_factory=dict)


class Resolver:
    def __init__(self, store: Store, runtimes: Collection[str], *, default_runtime: str,
                 port_bounds: tuple[int, int], secrets: SecretStore) -> None:
        self._store = store
        self._secrets = secrets
        self._runtimes = frozenset(runtimes)
        self._default_runtime = default_runtime
        self.port_bounds = port_bounds

    def resolve(self, source: GitSource, sha: str, ports: PortChooser) -> Resolution:
        """Every entry of the manifest at ``sha``; a broken manifest raises ``StalledError``."""
        checkout = source.checkout(sha)
        if not (checkout / MANIFEST).exists() and not (checkout / MANIFEST).is_symlink():
            raise StalledError(f"{MANIFEST}: not found at {sha[:7]}", reason=Reason.MANIFEST_INVALID)
        manifest, text = load_manifest_with_text(checkout / MANIFEST, repo_root=checkout,
                                                 port_range=self.port_bounds)
        resolution = Resolution(sha=sha, text=text, commit=source.commit_info(sha))
        for entry in manifest.services:
            try:
                runtime = self._check(entry, source.name)
                port = ports.port_for(entry, source.name, runtime)
                desired = _desired(source, sha, entry, checkout, runtime, port)
                resolution.desired[entry.name] = self._with_files(desired, checkout)
            except DeployerError as exc:
                resolution.errors[entry.name] = exc
        return resolution

    def files_changed(self, source: GitSource, resolution: Resolution) -> bool:
        """Whether a file of some ``files:`` (a secret's value, most likely) changed since ``resolution``."""
        with_files = [desired for desired in resolution.desired.values() if desired.files]
        if not with_files:
            return False
        checkout = source.checkout(resolution.sha)
        try:
            return any(self._with_files(desired, checkout).files_hash != desired.files_hash for desired in with_files)
        except DeployerError:
            return True  # resolving again reports it

    def _with_files(self, desired: DesiredService, checkout: Path) -> DesiredService:
        if not desired.files:
            return desired
        contents = read_files(desired.name, desired.files, service_dir(checkout, desired.path), self._secrets)
        return desired.model_copy(update={"files_hash": files_hash(contents)})

    def _check(self, entry: ServiceManifest, source: str) -> str:
        owner = self._store.services.source_of(entry.name)
        if owner is not None and owner != source:
            raise StalledError(f"{entry.name}: service name already belongs to source {owner!r}; "
                               "names are unique across sources")
        runtime = entry.runtime or self._default_runtime
        if runtime not in self._runtimes:
            raise StalledError(f"{entry.name}: runtime {runtime!r} is not enabled on this host "
                               f"(enabled: {', '.join(sorted(self._runtimes))})")
        if runtime == "swarm" and entry.files:
            raise StalledError(f"{entry.name}: 'files' is not supported by runtime swarm (a task may start on "
                               "another node); use runtime docker, or secrets as environment",
                               reason=Reason.MANIFEST_INVALID)
        if runtime != "swarm" and entry.placement is not None:
            raise StalledError(f"{entry.name}: 'placement' applies to runtime swarm only (this service runs on "
                               f"{runtime}, the default runtime of deployer.toml)", reason=Reason.MANIFEST_INVALID)
        if runtime == "supervisor" and not entry.command:
            raise StalledError(f"{entry.name}: 'command' is required for runtime supervisor",
                               reason=Reason.MANIFEST_INVALID)
        return runtime


class KnownPorts:
    """For previews: the port a service holds already (or would ask for); nothing is written."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def port_for(self, entry: ServiceManifest, source: str, runtime: str) -> int:
        if entry.port != "auto":
            return entry.port  # what the pass claims: a fixed port in the manifest wins over the one held
        return self._store.ports.of(entry.name) or 0


class ClaimedPorts:
    """For passes: the service joins the inventory and gets its sticky port (allocated or claimed)."""

    def __init__(self, store: Store, bounds: tuple[int, int], *, is_free: Callable[[int], bool],
                 holder: Callable[[int], str | None], grace: float) -> None:
        self._store = store
        self._bounds = bounds
        self._is_free = is_free
        self._holder = holder
        self._grace = grace

    def port_for(self, entry: ServiceManifest, source: str, runtime: str) -> int:
        self._store.services.upsert(entry.name, source, runtime)
        if entry.port == "auto":
            return self._store.ports.allocate(entry.name, self._bounds, self._is_free, grace=self._grace)
        held = self._store.ports.of(entry.name)
        if held != entry.port and not self._is_free(entry.port):
            who = self._holder(entry.port) or "a process outside deployer"
            raise StalledError(f"{entry.name}: port {entry.port} is already in use by {who}, outside deployer; "
                               "free it or choose another port", reason=Reason.PORT_CONFLICT)
        self._store.ports.claim(entry.name, entry.port)
        return entry.port


def service_dir(checkout: Path, relative: str) -> Path:
    """The service's folder in a checkout; ``StalledError`` when it leads outside the repository."""
    try:
        return contained(checkout, relative)
    except UnsafePath as exc:
        raise StalledError(str(exc), reason=Reason.MANIFEST_INVALID) from None


def argv(command: str | None, port: int) -> tuple[str, ...]:
    """Split like a shell (no shell runs it) and substitute ``${PORT}`` and ``${HOST}``."""
    if not command:
        return ()
    return tuple(part.replace("${PORT}", str(port)).replace("${HOST}", SERVICE_HOST) for part in shlex.split(command))


def _desired(source: GitSource, sha: str, entry: ServiceManifest, checkout: Path, runtime: str,
             port: int) -> DesiredService:
    requirements, requirements_hash = _requirements(service_dir(checkout, entry.path), entry.requirements)
    return DesiredService(
        name=entry.name, source=source.name, sha=sha, tree=source.tree_id(sha, entry.path),
        path=entry.path, runtime=runtime, command=entry.command, argv=argv(entry.command, port),
        requirements=requirements, requirements_hash=requirements_hash,
        port=port, env=dict(entry.env), secrets=tuple(entry.secrets), health=entry.health, info=entry.info,
        group=entry.group, demo=tuple(entry.demo), gateway=entry.gateway, rollout=entry.rollout,
        resources=entry.resources,
        replicas=entry.replicas, placement=entry.placement, hooks=entry.hooks, docker=entry.docker,
        files=tuple(entry.files), artifacts=tuple(entry.artifacts),
    )


def read_files(service: str, files: Iterable[FileSpec], workdir: Path, secrets: SecretStore) -> dict[str, bytes | None]:
    """Each ``files:`` entry's content by path: a secret's bytes (None while not set), or a repository file's."""
    contents: dict[str, bytes | None] = {}
    for entry in files:
        if entry.secret is not None:
            contents[entry.path] = secrets.content(entry.secret, service=service)
        elif entry.from_ is not None:
            contents[entry.path] = _repository_file(service, workdir, entry.from_)
    return contents


def files_hash(contents: Mapping[str, bytes | None]) -> str:
    """One sha256 over each path and the sha256 of its content: values never enter a spec, even hashed alone."""
    digests = [[path, hashlib.sha256(data).hexdigest() if data is not None else "missing"]
               for path, data in sorted(contents.items())]
    return hashlib.sha256(json.dumps(digests, separators=(",", ":")).encode()).hexdigest()


def _repository_file(service: str, workdir: Path, relative: str) -> bytes:
    try:
        data = read_inside(workdir, relative, MAX_FILE_BYTES)
    except FileNotFoundError:
        raise StalledError(f"{service}: files: {relative} does not exist in the service folder",
                           reason=Reason.MANIFEST_INVALID) from None
    except (UnsafePath, OSError) as exc:
        raise StalledError(f"{service}: files: {exc}", reason=Reason.MANIFEST_INVALID) from None
    if len(data) > MAX_FILE_BYTES:
        raise StalledError(f"{service}: files: {relative} is larger than {MAX_FILE_BYTES} bytes",
                           reason=Reason.MANIFEST_INVALID)
    return data


def _requirements(folder: Path, named: str | None) -> tuple[str | None, str | None]:
    """Which dependency file the service uses (the build's one rule), and a hash of the files that
    decide its environment (that file, its lock, ``.python-version``): a new lock is a new revision."""
    try:
        chosen = resolve_requirements(folder, named)
    except BuildError as exc:
        # Dependencies deployer cannot read fail the revision's build step, which names the file and
        # the format (the previous revision keeps serving); the hash is the problem, without the checkout.
        problem = str(exc).replace(str(folder), "")
        return named, hashlib.sha256(problem.encode()).hexdigest()
    if not chosen.files:
        return None, None
    return chosen.origin or None, chosen.digest(folder)
