"""supervisord sent SIGHUP (its "reload": every program stopped, the config read again, every program
started) in the middle of a pass that deploys three services.

A reload restarts every process, so a service beside the deploy is briefly without an answer: that
is supervisord's, and is measured, not hidden. What deployer owes: the interrupted pass completes or
is retried, each service ends at its new revision with one program and one process (none lost,
none doubled, no orphan holding a port), every attempt has an outcome.
"""

from __future__ import annotations

import os
import signal
import time
import xmlrpc.client
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from supervisor.xmlrpc import SupervisorTransport

from tests.helpers import GitRepo, local_source, start_daemon, stop_supervisord, wait_for, write_config
from tests.reliability.harness import SERVER, RequestLoop, answer, serving, state_of, wait_idle_history

TOKEN = "sighup-token"
CHANGING = ("alpha", "beta", "gamma")
SLOW_BOOT = "import time\ntime.sleep(1.5)  # loading the model\n"


def manifest(greeting: str) -> str:
    services = [("steady", "v1"), *((name, greeting) for name in CHANGING)]
    return "services:\n" + "".join(
        f"  - name: {name}\n    path: app\n    command: python server.py ${{PORT}}\n"
        f"    env: {{GREETING: {value}}}\n    health: {{path: /health, timeout: 30}}\n" for name, value in services)


@pytest.fixture
def world(tmp_path: Path) -> Iterator[dict[str, Any]]:
    repo = GitRepo.create(tmp_path / "repo.git", tmp_path / "work")
    repo.commit({"service.yaml": manifest("v1"), "app/server.py": SLOW_BOOT + SERVER}, "v1")
    config, _ = write_config(tmp_path, sources=local_source("reloads"), interval=1)
    daemon = start_daemon(config, tmp_path / "state", env={"DEPLOYER_API_TOKEN": TOKEN})
    try:
        yield {"daemon": daemon, "repo": repo, "state": tmp_path / "state"}
    finally:
        daemon.stop()
        stop_supervisord(tmp_path / "state")


def supervisord_pid(state: Path) -> int:
    return int((state / "supervisor" / "supervisord.pid").read_text().strip())


def programs(state: Path) -> list[dict[str, Any]]:
    """supervisord's own list of its processes."""
    socket = state / "supervisor" / "supervisor.sock"
    proxy = xmlrpc.client.ServerProxy("http://127.0.0.1", transport=SupervisorTransport(None, None,
                                                                                        f"unix://{socket}"))
    return list(proxy.supervisor.getAllProcessInfo())


def server_processes(port: int) -> list[int]:
    """Every process on the host running this service's server on ``port`` (an orphan included)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"server.py" in argv and str(port).encode() in argv:
                found.append(int(entry.name))
    return found


def in_deploy(daemon: Any) -> bool:
    """At least one changing service's attempt has applied its program and waits on its gate."""
    for name in CHANGING:
        attempt = (state_of(daemon, name)["attempts"] or [{}])[0]
        if attempt.get("outcome") == "running" and any(step["name"] == "apply" for step in attempt["steps"]):
            return True
    return False


def test_a_supervisord_reload_mid_pass_loses_and_doubles_nothing(world: dict[str, Any]) -> None:
    daemon, repo, state = world["daemon"], world["repo"], world["state"]
    for name in ("steady", *CHANGING):
        serving(daemon, name, "v1", 90)
    steady = state_of(daemon, "steady")["port"]

    with RequestLoop(steady) as loop:
        repo.commit({"service.yaml": manifest("v2")}, "v2 of three services")
        assert daemon.request_pass(TOKEN).status_code == 202
        wait_for(lambda: in_deploy(daemon), 60, "a deploy waiting on its gate", interval=0.05)
        hup = time.monotonic()
        os.kill(supervisord_pid(state), signal.SIGHUP)
        for name in CHANGING:
            serving(daemon, name, "v2", 90)
        converged = time.monotonic() - hup
        wait_for(lambda: answer(steady) == "v1", 30, "the steady service answering again")

    for name in CHANGING:
        wait_idle_history(daemon, name)
    listed = programs(state)
    names = sorted(info["name"] for info in listed)
    assert len(names) == len(set(names)), f"a program twice: {names}"
    assert names == sorted(("steady", *CHANGING)), names
    assert all(info["statename"] == "RUNNING" for info in listed), [(i["name"], i["statename"]) for i in listed]
    for name in ("steady", *CHANGING):
        service = state_of(daemon, name)
        assert service["running_sha"] == service["desired_sha"], service
        port = service["port"]
        assert len(server_processes(port)) == 1, f"{name}: processes on port {port}: {server_processes(port)}"
    conf_files = sorted(p.name for p in (state / "supervisor" / "programs").glob("*.conf"))
    assert len(conf_files) == 4, conf_files
    failed = sum(loop.failures.values())
    print(f"\nsupervisord SIGHUP mid-pass: converged {converged:.1f}s after the signal; steady service "
          f"{failed} of {loop.sent} requests failed (supervisord restarts every program on a reload)")
