"""A swarm service's tasks summarised (pure): per node, counted, and why fewer run than asked."""

from __future__ import annotations

from typing import Any

from deployer.runtimes.docker.tasks import nodes_by_id, summarise

NODES = nodes_by_id([
    {"ID": "n1", "Status": {"State": "ready", "Addr": "10.0.0.1"}, "Spec": {"Availability": "active"}},
    {"ID": "n2", "Status": {"State": "down", "Addr": "10.0.0.2"}, "Spec": {"Availability": "active"}},
    {"ID": "n3", "Status": {"State": "ready", "Addr": "0.0.0.0"}, "Spec": {"Availability": "drain"},
     "ManagerStatus": {"Addr": "10.0.0.3:2377"}},
])


def task(node: str, state: str, desired: str = "running", err: str = "", when: str = "2026-01-01T00:00:00Z"
         ) -> dict[str, Any]:
    return {"ID": f"{node}-{state}-{when}", "NodeID": node, "DesiredState": desired,
            "Status": {"State": state, "Err": err, "Timestamp": when}}


def test_all_running_is_not_degraded() -> None:
    summary = summarise(1, [task("n1", "running"), task("n1", "shutdown", "shutdown")], NODES)
    assert (summary.running, summary.addresses, summary.degraded) == (1, ("10.0.0.1",), "")
    assert [str(t) for t in summary.tasks] == ["10.0.0.1 running"]


def test_a_lost_node_and_a_waiting_task_say_why() -> None:
    pending = "no suitable node (1 node not available for new tasks; host-mode port already in use on 1 node)"
    summary = summarise(2, [task("n1", "running"), task("n2", "running", "shutdown"), task("", "pending", err=pending)],
                        NODES)
    assert summary.running == 1 and summary.addresses == ("10.0.0.1",)
    assert summary.degraded.startswith("node 10.0.0.2 down; node 10.0.0.3 drained; no suitable node (1 node")
    assert "10.0.0.2 running, node down" in [str(t) for t in summary.tasks]


def test_the_last_failed_task_is_the_reason_and_long_texts_are_trimmed() -> None:
    tasks = [task("n1", "rejected", "shutdown", "old", "2026-01-01T00:00:01Z"),
             task("n1", "rejected", "shutdown", "No such image: r/x:1 " + "x" * 300, "2026-01-01T00:00:02Z")]
    summary = summarise(1, tasks, NODES)
    assert summary.running == 0 and "last task failed: No such image: r/x:1" in summary.degraded
    assert len(summary.degraded) <= 240 and summary.degraded.endswith("…")
    assert summarise(0, tasks, NODES).degraded == ""  # stopped (0 replicas) is not degraded


def test_constraints_are_checked_against_a_node_as_swarm_would() -> None:
    from deployer.runtimes.docker.tasks import eligible

    node = {"ID": "abc", "Spec": {"Role": "manager", "Labels": {"zone": "a"}},
            "Description": {"Hostname": "vm", "Platform": {"OS": "linux", "Architecture": "x86_64"},
                            "Engine": {"Labels": {"gpu": "yes"}}}}
    assert eligible(node, []) and eligible(node, ["node.role==manager", "node.labels.zone != b"])
    assert eligible(node, ["engine.labels.gpu==yes", "node.platform.os==linux", "node.hostname==vm"])
    assert not eligible(node, ["node.role==worker"]) and not eligible(node, ["node.labels.zone==b"])
    assert not eligible(node, ["node.labels.missing==x"]) and eligible(node, ["node.labels.missing!=x"])
