"""A swarm service's tasks as deployer shows them: on which node, in which state, and why fewer run than asked.

Pure: it reads the listings the runtime made (one of tasks, one of nodes). Nodes are named by their
address, not their hostname (two machines can share one, and the address is where a task answers).
Swarm's own error texts are kept, trimmed: "no suitable node (…)", "No such image: …".
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from deployer.model.actual import Task

WHY_LIMIT = 240  # characters of a degraded service's reason (swarm's messages can be long)
_ERROR_LIMIT = 120
_CURRENT = frozenset({"running", "ready", "accepted"})  # desired states of the tasks swarm wants up now
_FAILED = frozenset({"failed", "rejected"})
_MANAGER_PORT_SUFFIX = ":2377"


@dataclass(frozen=True)
class Node:
    id: str
    address: str
    ready: bool
    availability: str


@dataclass(frozen=True)
class TaskSummary:
    """What one service's tasks amount to: shown per task, counted, and explained when short."""

    tasks: tuple[Task, ...]
    addresses: tuple[str, ...]
    running: int
    degraded: str


def nodes_by_id(nodes: Iterable[dict[str, Any]]) -> dict[str, Node]:
    found = {}
    for node in nodes:
        status = node.get("Status") or {}
        address = str(status.get("Addr") or "")
        if address in ("", "0.0.0.0"):  # some managers report no address here: their manager address is it
            address = str((node.get("ManagerStatus") or {}).get("Addr", "")).removesuffix(_MANAGER_PORT_SUFFIX)
        found[str(node["ID"])] = Node(str(node["ID"]), address or str(node["ID"])[:12], status.get("State") == "ready",
                                      str((node.get("Spec") or {}).get("Availability", "")))
    return found


def eligible(node: dict[str, Any], constraints: Iterable[str]) -> bool:
    """Whether a node (as the engine lists it) meets every placement constraint (swarm's own rule, for
    the attributes the manifest allows: node.id, hostname, role, platform, node and engine labels)."""
    for constraint in constraints:
        operator = "!=" if "!=" in constraint else "=="
        attribute, _, wanted = (part.strip() for part in constraint.partition(operator))
        value = _attribute(node, attribute)
        if (value == wanted) != (operator == "=="):
            return False
    return True


def _attribute(node: dict[str, Any], attribute: str) -> str | None:
    spec, description = node.get("Spec") or {}, node.get("Description") or {}
    platform = description.get("Platform") or {}
    plain = {"node.id": node.get("ID"), "node.hostname": description.get("Hostname"), "node.role": spec.get("Role"),
             "node.platform.os": platform.get("OS"), "node.platform.arch": platform.get("Architecture")}
    if attribute in plain:
        found = plain[attribute]
        return None if found is None else str(found)
    for prefix, labels in (("node.labels.", spec.get("Labels")), ("engine.labels.",
                                                                   (description.get("Engine") or {}).get("Labels"))):
        if attribute.startswith(prefix):
            found = (labels or {}).get(attribute.removeprefix(prefix))
            return None if found is None else str(found)
    return None


def summarise(wanted: int, tasks: Iterable[dict[str, Any]], nodes: dict[str, Node]) -> TaskSummary:
    """The tasks swarm wants up (and any still running on a lost node), the addresses answering, why short."""
    listed = list(tasks)
    current = [t for t in listed if t.get("DesiredState") in _CURRENT]
    stranded = [t for t in listed if t.get("DesiredState") not in _CURRENT and _state(t) == "running"
                and not _node(t, nodes).ready]
    serving = [t for t in current if _state(t) == "running" and _node(t, nodes).ready]
    shown = tuple(_task(t, nodes) for t in sorted(current + stranded, key=lambda t: (_node(t, nodes).address,
                                                                                      str(t.get("ID")))))
    addresses = tuple(sorted({_node(t, nodes).address for t in serving}))
    degraded = _why(listed, current, nodes) if wanted > 0 and len(serving) < wanted else ""
    return TaskSummary(shown, addresses, len(serving), degraded)


def _why(listed: list[dict[str, Any]], current: list[dict[str, Any]], nodes: dict[str, Node]) -> str:
    """Swarm's own reasons, most telling first: lost nodes, drained nodes, waiting tasks, the last failure."""
    reasons = [f"node {node.address} down" for node in _nodes_of(listed, nodes) if not node.ready]
    reasons += [f"node {node.address} drained" for node in nodes.values() if node.availability == "drain"]
    reasons += [_error(t) for t in current if _state(t) != "running" and _error(t)]
    failed = sorted((t for t in listed if _state(t) in _FAILED), key=lambda t: str((t.get("Status") or {})
                                                                                    .get("Timestamp", "")))
    if failed:
        reasons.append(f"last task failed: {_error(failed[-1]) or _state(failed[-1])}")
    why = "; ".join(dict.fromkeys(reasons)) or "fewer tasks run than asked"
    return why if len(why) <= WHY_LIMIT else why[: WHY_LIMIT - 1] + "…"


def _nodes_of(tasks: list[dict[str, Any]], nodes: dict[str, Node]) -> list[Node]:
    ids = dict.fromkeys(str(t.get("NodeID")) for t in tasks if t.get("NodeID") and _state(t) == "running")
    return [nodes[node_id] for node_id in ids if node_id in nodes]


def _task(task: dict[str, Any], nodes: dict[str, Node]) -> Task:
    node = _node(task, nodes)
    state = _state(task) + ("" if node.ready or not task.get("NodeID") else ", node down")
    return Task(node.address, state, "" if _state(task) == "running" else _error(task))


def _node(task: dict[str, Any], nodes: dict[str, Node]) -> Node:
    node_id = str(task.get("NodeID") or "")
    return nodes.get(node_id) or Node(node_id, node_id[:12], False, "")


def _state(task: dict[str, Any]) -> str:
    return str((task.get("Status") or {}).get("State", ""))


def _error(task: dict[str, Any]) -> str:
    status = task.get("Status") or {}
    text = " ".join(str(status.get("Err") or "").split())
    if not text and _state(task) in _FAILED:
        text = " ".join(str(status.get("Message") or "").split())
    return text if len(text) <= _ERROR_LIMIT else text[: _ERROR_LIMIT - 1] + "…"
