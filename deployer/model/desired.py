"""The desired state of one service: a manifest entry resolved against one commit.

A ``DesiredService`` is what a revision stores (as JSON) and what a runtime
applies. Its ``spec_hash`` decides whether anything changed: it covers the
resolved spec and the git tree of the service's folder, not the commit sha, so
a push that touches only another service of a monorepo changes nothing here.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

from deployer.model.manifest import (
    ArtifactSpec,
    DemoSpec,
    DockerSpec,
    FileSpec,
    GatewaySpec,
    HealthSpec,
    HooksSpec,
    InfoSpec,
    PlacementSpec,
    ResourcesSpec,
    RolloutSpec,
    RuntimeName,
)

# Fields that describe where a spec came from, not what it is.
_PROVENANCE = frozenset({"sha", "source"})
# Fields added after revisions were first recorded: left out while unset (None or empty), so an
# upgrade of deployer does not change the hash of (and so redeploy) every service.
_ADDED_LATER = frozenset({"rollout", "files", "files_hash", "artifacts", "placement"})


class DesiredService(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    _spec_hash: str | None = PrivateAttr(default=None)

    name: str
    source: str
    sha: str = Field(description="the commit this spec was resolved from")
    tree: str = Field(description="git tree id of the service's folder at that commit")
    path: str = "."
    runtime: RuntimeName
    command: str | None = None
    argv: tuple[str, ...] = ()
    requirements: str | None = None
    requirements_hash: str | None = None
    port: int
    env: dict[str, str] = Field(default_factory=dict)
    secrets: tuple[str, ...] = ()
    health: HealthSpec = Field(default_factory=HealthSpec)
    info: InfoSpec = Field(default_factory=InfoSpec)
    group: str | None = None
    demo: tuple[DemoSpec, ...] = ()
    gateway: GatewaySpec | None = None
    rollout: RolloutSpec | None = None
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    replicas: int = 1
    placement: PlacementSpec | None = None
    hooks: HooksSpec = Field(default_factory=HooksSpec)
    docker: DockerSpec = Field(default_factory=DockerSpec)
    files: tuple[FileSpec, ...] = ()
    files_hash: str | None = Field(default=None, description="sha256 over each file's path and the sha256 of its "
                                                              "content: a changed secret redeploys, its value "
                                                              "never enters the spec")
    artifacts: tuple[ArtifactSpec, ...] = Field(default=(), description="files fetched by digest (their sha256 "
                                                                         "is in the spec: new weights redeploy)")

    def spec(self) -> dict[str, Any]:
        """The resolved spec as plain JSON data (what a revision stores)."""
        unset = {name for name in _ADDED_LATER if getattr(self, name) in (None, ())}
        return self.model_dump(mode="json", exclude=unset)

    @property
    def spec_hash(self) -> str:
        # Computed once per instance (a spec never changes: the model is frozen); a pass asks it
        # several times for each of hundreds of services.
        if self._spec_hash is None:
            self._spec_hash = spec_hash(self.spec())
        return self._spec_hash

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> DesiredService:
        copied = super().model_copy(update=update, deep=deep)
        copied._spec_hash = None  # a copy with changes is another spec
        return copied

    def secret_names(self) -> tuple[str, ...]:
        """Every secret a deploy needs: the environment's, the demos' headers' and the files' (in that order)."""
        names = [*self.secrets, *(name for demo in self.demo for name in demo.secret_names()),
                 *(entry.secret for entry in self.files if entry.secret is not None)]
        return tuple(dict.fromkeys(names))

    @property
    def short_hash(self) -> str:
        return self.spec_hash[:12]


def spec_hash(spec: dict[str, Any]) -> str:
    """sha256 of the canonical JSON of a spec, provenance fields left out."""
    content = {key: value for key, value in spec.items() if key not in _PROVENANCE}
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode("ascii")).hexdigest()
