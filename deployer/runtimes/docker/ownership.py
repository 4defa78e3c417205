"""Ownership labels: what marks an engine object as deployer's, and the conflict when it is not.

deployer only ever touches containers, swarm services and images labelled
``deployer.managed=true``; a name held by anything else is a conflict, never a takeover.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from deployer.errors import ApplyError
from deployer.model.deployment import Deployment

LABEL_MANAGED = "deployer.managed"
LABEL_SERVICE = "deployer.service"
LABEL_SPEC_HASH = "deployer.spec-hash"
LABEL_REVISION = "deployer.revision"
LABEL_CONTEXT = "deployer.context"
MANAGED_FILTER = f"{LABEL_MANAGED}=true"


class ContainerConflict(ApplyError):
    """A container or swarm service holds the name deployer needs but is not deployer's."""


def labels(deployment: Deployment) -> dict[str, str]:
    """Ownership labels: deployer only ever touches what carries ``deployer.managed=true``."""
    return {
        LABEL_MANAGED: "true",
        LABEL_SERVICE: deployment.name,
        LABEL_SPEC_HASH: deployment.desired.spec_hash,
        LABEL_REVISION: str(deployment.revision),
    }


def ensure_names_free(kind: str, names: Iterable[str], service: str, found: Iterable[dict[str, Any]]) -> None:
    """Raise ``ContainerConflict`` naming both sides when an unmanaged object holds one of ``names``."""
    wanted = set(names)
    for item in found:
        name, item_labels = item["name"], item.get("labels") or {}
        if name in wanted and (item_labels.get(LABEL_MANAGED) != "true" or item_labels.get(LABEL_SERVICE) != service):
            raise ContainerConflict(
                f"service {service}: a {kind} named {name!r} ({str(item['id'])[:12]}) already exists and is not "
                f"managed by deployer for this service; deployer never takes one over: rename or remove {name!r}"
            )
