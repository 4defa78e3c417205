"""Drift against a real embedded supervisord: each way the world changes behind deployer's
back is observed truthfully and healed by the call the planner would make."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil
import pytest

from deployer.errors import RuntimeUnavailable
from deployer.model.actual import ActualService, ServiceState
from deployer.model.deployment import Deployment
from deployer.model.plan import ActionKind, plan
from deployer.runtimes.supervisor import StartFailed, SupervisorRuntime
from tests.conftest import unavailable
from tests.helpers import free_port, wait_for
from tests.integration.test_supervisor import SERVER, TEMPLATES, deployment, get

BIN = Path(sys.executable).parent


@dataclass
class World:
    """One test's state dir and workdir, and every process it started outside supervisord."""

    state_dir: Path
    workdir: Path
    foreign: list[subprocess.Popen[bytes]] = field(default_factory=list)
    supervisords: set[int] = field(default_factory=set)

    def runtime(self, **kwargs: float) -> SupervisorRuntime:
        return SupervisorRuntime(self.state_dir, templates_dir=TEMPLATES, **kwargs)

    @property
    def home(self) -> Path:
        return self.state_dir / "supervisor"

    def supervisord_pid(self) -> int:
        pid = int((self.home / "supervisord.pid").read_text())
        self.supervisords.add(pid)
        return pid

    def supervisorctl(self, *args: str) -> str:
        done = subprocess.run([str(BIN / "supervisorctl"), "-c", str(self.home / "supervisord.conf"), *args],
                              capture_output=True, text=True, timeout=30, check=False)
        return done.stdout + done.stderr

    def listen_elsewhere(self, port: int) -> subprocess.Popen[bytes]:
        """A process outside deployer on ``port``, in the same directory but with another command."""
        process = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
                                   cwd=self.workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.foreign.append(process)
        wait_for(lambda: httpx.get(f"http://127.0.0.1:{port}/", timeout=1).status_code == 200, 10, "http.server")
        return process


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    if shutil.which("supervisord", path=str(BIN)) is None:
        unavailable("supervisord is not installed next to the test interpreter")
    (tmp_path / "server.py").write_text(SERVER)
    state_dir = Path(tempfile.mkdtemp(prefix="dsd-"))  # short: unix socket paths are limited
    here = World(state_dir, tmp_path)
    try:
        yield here
    finally:
        _clean_up(here)
        shutil.rmtree(state_dir, ignore_errors=True)


def _clean_up(world: World) -> None:
    """Every supervisord of this test, then whatever of its programs or orphans is left, then foreign ones."""
    with contextlib.suppress(OSError, ValueError):  # never started, or gone with its pid file
        world.supervisord_pid()
    for pid in world.supervisords:
        _signal(pid, signal.SIGCONT)  # a test may have frozen it
        _signal(pid, signal.SIGTERM)  # stops its programs cleanly
    _wait_gone(world.supervisords, 20)
    for pid in world.supervisords:
        _signal(pid, signal.SIGKILL)
    leftovers = _processes_of(world)
    for process in leftovers:
        _signal(process.pid, signal.SIGKILL)
    _wait_gone({process.pid for process in leftovers}, 10)
    for process in world.foreign:
        process.kill()
        process.wait(10)


def _processes_of(world: World) -> list[psutil.Process]:
    """Processes running in the test's workdir or started by one of its supervisords."""
    socket_url = f"unix://{world.home / 'supervisor.sock'}"
    found = []
    for process in psutil.process_iter():
        try:
            if process.pid != os.getpid() and (
                Path(process.cwd()).is_relative_to(world.workdir)
                or process.environ().get("SUPERVISOR_SERVER_URL") == socket_url
            ):
                found.append(process)
        except psutil.Error:
            continue
    return found


def _signal(pid: int, signum: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)


def running(pid: int) -> bool:
    """A zombie counts as gone: nobody may reap an orphan's corpse here."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _wait_gone(pids: set[int], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while any(running(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)


def running_as(runtime: SupervisorRuntime, wanted: Deployment, *, timeout: float = 15) -> ActualService:
    """Wait until observe reports ``wanted`` running with its own hash and revision."""
    def up() -> ActualService | None:
        seen = runtime.observe().get(wanted.name)
        ok = seen is not None and seen.state is ServiceState.RUNNING and seen.spec_hash == wanted.desired.spec_hash
        return seen if ok and seen is not None and seen.revision == wanted.revision else None

    return wait_for(up, timeout, f"{wanted.name} running at revision {wanted.revision}")


def next_action(wanted: Deployment, seen: ActualService) -> ActionKind:
    return plan({wanted.name: wanted.desired}, {wanted.name: seen}, {wanted.name}).actions[0].kind


def serving(port: int, timeout: float = 10) -> str:
    return wait_for(lambda: get(port), timeout, f"an answer on port {port}")


def test_an_edited_program_file_is_drift_and_apply_rewrites_it(world: World) -> None:
    runtime, port = world.runtime(), free_port()
    runtime.ensure_running()
    wanted = deployment(world.workdir, port)
    runtime.apply(wanted)
    path = runtime.include_dir / "web.conf"
    written = path.read_text()
    path.write_text(written.replace("startretries=3", "startretries=9"))  # the header line is untouched

    seen = runtime.observe()["web"]
    assert (seen.state, seen.spec_hash, seen.revision) == (ServiceState.RUNNING, None, 1)
    assert "program file edited by hand" in seen.detail
    assert next_action(wanted, seen) is ActionKind.UPDATE

    runtime.apply(wanted)
    assert path.read_text() == written
    assert next_action(wanted, running_as(runtime, wanted)) is ActionKind.NOOP
    assert serving(port).startswith("hello")


def test_a_deleted_program_file_is_drift_and_apply_restores_it(world: World) -> None:
    runtime, port = world.runtime(), free_port()
    runtime.ensure_running()
    wanted = deployment(world.workdir, port)
    runtime.apply(wanted)
    before = runtime.observe()["web"]
    (runtime.include_dir / "web.conf").unlink()

    seen = runtime.observe()["web"]
    assert (seen.state, seen.spec_hash, seen.pid) == (ServiceState.RUNNING, None, before.pid)
    assert "program file missing" in seen.detail
    assert next_action(wanted, seen) is ActionKind.UPDATE

    runtime.apply(wanted)
    after = running_as(runtime, wanted)
    assert (runtime.include_dir / "web.conf").exists() and after.pid != before.pid
    assert serving(port).startswith("hello")


def test_stop_and_remove_through_supervisorctl_are_healed_by_start(world: World) -> None:
    runtime, port = world.runtime(), free_port()
    runtime.ensure_running()
    wanted = deployment(world.workdir, port)
    runtime.apply(wanted)

    assert "stopped" in world.supervisorctl("stop", "web")
    seen = runtime.observe()["web"]
    assert (seen.state, seen.spec_hash) == (ServiceState.STOPPED, wanted.desired.spec_hash)
    assert next_action(wanted, seen) is ActionKind.START
    runtime.start("web")
    assert serving(port).startswith("hello")

    world.supervisorctl("stop", "web")
    assert "removed process group" in world.supervisorctl("remove", "web")
    seen = runtime.observe()["web"]
    assert (seen.state, seen.spec_hash, seen.pid) == (ServiceState.STOPPED, wanted.desired.spec_hash, None)
    assert "not loaded" in seen.detail
    assert next_action(wanted, seen) is ActionKind.START
    runtime.start("web")
    running_as(runtime, wanted)
    assert serving(port).startswith("hello")


def test_a_killed_process_is_restarted_by_supervisord(world: World) -> None:
    runtime, port = world.runtime(), free_port()
    runtime.ensure_running()
    wanted = deployment(world.workdir, port)
    runtime.apply(wanted)
    before = runtime.observe()["web"]
    assert before.pid is not None

    killed = time.monotonic()
    os.kill(before.pid, signal.SIGKILL)
    wait_for(lambda: (runtime.observe()["web"].pid or before.pid) != before.pid, 5, "a new pid")
    assert serving(port, 5).startswith("hello")
    print(f"\nkilled program -> serving again: {time.monotonic() - killed:.2f}s")
    assert running_as(runtime, wanted).pid != before.pid


def test_a_cleanly_restarted_supervisord_brings_the_programs_back(world: World) -> None:
    runtime, port = world.runtime(), free_port()
    runtime.check()
    wanted = deployment(world.workdir, port)
    runtime.apply(wanted)
    old = world.supervisord_pid()

    os.kill(old, signal.SIGTERM)
    _wait_gone({old}, 20)
    with pytest.raises(httpx.ConnectError):
        get(port)
    restarted = time.monotonic()
    fresh = world.runtime()
    fresh.check()
    assert world.supervisord_pid() != old
    seen = running_as(fresh, wanted)
    assert serving(port).startswith("hello")
    print(f"\nclean supervisord restart -> serving: {time.monotonic() - restarted:.2f}s")
    assert psutil.Process(seen.pid).ppid() == world.supervisord_pid()


def test_orphans_of_a_sigkilled_supervisord_are_reaped_and_a_foreign_holder_is_left(world: World) -> None:
    runtime, web_port, api_port = world.runtime(), free_port(), free_port()
    runtime.check()
    web = deployment(world.workdir, web_port)
    runtime.apply(web)
    runtime.apply(deployment(world.workdir, api_port, name="api"))
    runtime.stop("api")
    foreign = world.listen_elsewhere(api_port)  # managed-looking port, same directory, other command
    orphan = runtime.observe()["web"].pid
    assert orphan is not None

    os.kill(world.supervisord_pid(), signal.SIGKILL)
    assert serving(web_port).startswith("hello")  # the orphan still holds its port
    restarted = time.monotonic()
    fresh = world.runtime(start_timeout=20)
    fresh.check()
    assert not running(orphan)
    seen = running_as(fresh, web)
    assert serving(web_port).startswith("hello") and seen.pid != orphan
    print(f"\nsupervisord SIGKILL -> orphan reaped, serving again: {time.monotonic() - restarted:.2f}s")
    assert psutil.Process(seen.pid).ppid() == world.supervisord_pid()

    detail = wait_for(lambda: fresh.observe()["api"].detail, 5, "api's detail")
    assert f"port {api_port} held by pid {foreign.pid} (python" in detail and "outside deployer" in detail
    with pytest.raises(StartFailed, match=f"pid {foreign.pid}") as caught:
        fresh.start("api")
    assert caught.value.reason == "PortConflict"
    assert foreign.poll() is None and running(foreign.pid)


def test_a_start_that_fails_on_a_port_held_by_a_leftover_reaps_it_and_retries(world: World) -> None:
    runtime, port = world.runtime(), free_port()
    runtime.check()
    wanted = deployment(world.workdir, port)
    runtime.apply(wanted)
    orphan = runtime.observe()["web"].pid
    assert orphan is not None
    os.kill(world.supervisord_pid(), signal.SIGKILL)
    # A supervisord started by someone else (no reaping first): its copy of web cannot bind.
    config = runtime.embedded_supervisord.paths.config_file
    subprocess.run([str(BIN / "supervisord"), "-c", str(config)], check=True, timeout=30, capture_output=True)
    wait_for(lambda: runtime.observe()["web"].state is ServiceState.STARTING, 10, "the duplicate")
    assert "left over from an earlier supervisord" in runtime.observe()["web"].detail

    started = time.monotonic()
    runtime.start("web")  # FATAL with "Address already in use" -> reap -> start again
    print(f"\nstart() through FATAL, reap and retry: {time.monotonic() - started:.2f}s")
    assert not running(orphan)
    seen = running_as(runtime, wanted)
    assert psutil.Process(seen.pid).ppid() == world.supervisord_pid()
    assert serving(port).startswith("hello")


def test_a_hung_supervisord_times_out_instead_of_blocking(world: World) -> None:
    runtime, port = world.runtime(rpc_timeout=1.0), free_port()
    runtime.check()
    runtime.apply(deployment(world.workdir, port))
    pid = world.supervisord_pid()
    os.kill(pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        hung = r"did not answer (getAllProcessInfo|deployer\.listProcesses) within 1s"
        with pytest.raises(RuntimeUnavailable, match=hung):
            runtime.observe()
        with pytest.raises(RuntimeUnavailable, match=f"pid {pid}.*not starting a second one"):
            runtime.check()
        assert time.monotonic() - started < 6
        assert world.supervisord_pid() == pid
    finally:
        os.kill(pid, signal.SIGCONT)
    assert runtime.observe()["web"].state is ServiceState.RUNNING
