"""The supervisor runtime against a real embedded supervisord (from PyPI) in a temp dir."""

from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from deployer.errors import ApplyError, RuntimeUnavailable
from deployer.model.actual import ServiceState
from deployer.model.deployment import Deployment
from deployer.model.desired import DesiredService
from deployer.runtimes.supervisor import RenderError, StartFailed, SupervisorRuntime
from tests.conftest import unavailable
from tests.helpers import ROOT, free_port, wait_for

TEMPLATES = ROOT / "templates"
SERVER = textwrap.dedent(
    """\
    import http.server, os
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = f"{os.environ.get('GREETING', '')} pid={os.getpid()}".encode()
            self.send_response(200 if self.path == "/health" else 404)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        def log_message(self, *args):
            pass
    print("serving on", os.environ["PORT"], "with ünïcödé", flush=True)
    http.server.HTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
    """
)


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "server.py").write_text(SERVER)
    return tmp_path


@pytest.fixture
def state_dir() -> Iterator[Path]:
    """Short, so the unix socket path stays under its 108-byte limit; supervisord stopped at the end."""
    if shutil.which("supervisord", path=str(Path(sys.executable).parent)) is None:
        unavailable("supervisord is not installed next to the test interpreter")
    path = Path(tempfile.mkdtemp(prefix="dsv-"))
    yield path
    _stop_supervisord(path)
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def runtime(state_dir: Path) -> SupervisorRuntime:
    runtime = SupervisorRuntime(state_dir, templates_dir=TEMPLATES)
    runtime.ensure_running()
    return runtime


def _stop_supervisord(state_dir: Path) -> None:
    runtime = SupervisorRuntime(state_dir, templates_dir=TEMPLATES)
    pid = _supervisord_pid(state_dir)
    runtime.shutdown(timeout=30)
    if pid is not None and _running(pid):  # only the supervisord this test started, by its pid
        os.kill(pid, signal.SIGTERM)


def _supervisord_pid(state_dir: Path) -> int | None:
    try:
        return int((state_dir / "supervisor" / "supervisord.pid").read_text())
    except (OSError, ValueError):
        return None


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def deployment(workdir: Path, port: int, *, name: str = "web", revision: int = 1, greeting: str = "hello",
               tree: str = "t1", argv: tuple[str, ...] | None = None) -> Deployment:
    desired = DesiredService(name=name, source="acme/models", sha="a" * 40, tree=tree, runtime="supervisor",
                             port=port, env={"GREETING": greeting})
    return Deployment(desired=desired, revision=revision, workdir=workdir,
                      argv=argv or (sys.executable, "server.py"),
                      environment={"GREETING": greeting, "PORT": str(port), "HOST": "127.0.0.1"},
                      secret_env={"API_KEY": "s3cr3t%value"})


def get(port: int) -> str:
    return httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).text


def test_apply_runs_the_program_and_observe_reads_it_back(runtime: SupervisorRuntime, workdir: Path) -> None:
    port = free_port()
    wanted = deployment(workdir, port)
    runtime.apply(wanted)
    assert get(port).startswith("hello pid=")
    seen = runtime.observe()["web"]
    assert (seen.state, seen.spec_hash, seen.revision) == (ServiceState.RUNNING, wanted.desired.spec_hash, 1)
    assert seen.runtime == "supervisor" and seen.pid is not None
    env = Path(f"/proc/{seen.pid}/environ").read_bytes().split(b"\0")
    assert b"API_KEY=s3cr3t%value" in env  # the escaped % reaches the process as one %
    assert not any(entry.startswith(b"DEPLOYER_") for entry in env)


def test_a_change_restarts_with_the_new_revision(runtime: SupervisorRuntime, workdir: Path) -> None:
    port = free_port()
    runtime.apply(deployment(workdir, port))
    before = runtime.observe()["web"]
    changed = deployment(workdir, port, revision=2, greeting="bonjour")
    runtime.apply(changed)
    after = runtime.observe()["web"]
    assert (after.revision, after.spec_hash, after.state) == (2, changed.desired.spec_hash, ServiceState.RUNNING)
    assert after.pid != before.pid
    assert get(port).startswith("bonjour")


def test_a_code_only_change_still_restarts(runtime: SupervisorRuntime, workdir: Path) -> None:
    """supervisord sees identical settings (only the header differs), yet new code must run."""
    port = free_port()
    runtime.apply(deployment(workdir, port, tree="t1"))
    before = runtime.observe()["web"]
    runtime.apply(deployment(workdir, port, tree="t2", revision=2))
    after = runtime.observe()["web"]
    assert after.revision == 2 and after.pid != before.pid


def test_a_program_that_exits_at_once_fails_with_its_output(runtime: SupervisorRuntime, workdir: Path) -> None:
    crash = (sys.executable, "-c", "import sys; print('boom: missing model file'); sys.exit(3)")
    started = time.monotonic()
    with pytest.raises(StartFailed, match="FATAL") as caught:
        runtime.apply(deployment(workdir, free_port(), name="crash", argv=crash))
    assert time.monotonic() - started < 12
    assert isinstance(caught.value, ApplyError) and caught.value.reason == "ApplyFailed"
    assert "boom: missing model file" in str(caught.value) and "boom" in caught.value.output
    assert runtime.observe()["crash"].state is ServiceState.FAILED
    assert runtime.inspect("crash") == runtime.observe()["crash"]  # one service, as the listing sees it


def test_stop_start_and_remove_are_idempotent(runtime: SupervisorRuntime, workdir: Path) -> None:
    port = free_port()
    runtime.apply(deployment(workdir, port))
    assert runtime.inspect("web") == runtime.observe()["web"]
    runtime.stop("web")
    runtime.stop("web")
    assert runtime.observe()["web"].state is ServiceState.STOPPED
    assert runtime.inspect("web") == runtime.observe()["web"]
    runtime.start("web")
    runtime.start("web")
    assert runtime.observe()["web"].state is ServiceState.RUNNING
    runtime.remove("web")
    runtime.remove("web")
    assert "web" not in runtime.observe()
    assert runtime.inspect("web") is None
    assert not (runtime.include_dir / "web.conf").exists()
    with pytest.raises(httpx.ConnectError):
        get(port)
    with pytest.raises(ApplyError, match="not installed"):
        runtime.start("web")


def test_a_new_runtime_reconnects_to_the_same_supervisord(state_dir: Path, workdir: Path) -> None:
    port = free_port()
    first = SupervisorRuntime(state_dir, templates_dir=TEMPLATES)
    first.check()  # embedded: starts supervisord
    runtime_pid = _supervisord_pid(state_dir)
    first.apply(deployment(workdir, port))
    before = first.observe()["web"]

    second = SupervisorRuntime(state_dir, templates_dir=TEMPLATES)  # the deployer restarted
    second.ensure_running()
    assert _supervisord_pid(state_dir) == runtime_pid
    after = second.observe()["web"]
    assert (after.state, after.pid, after.spec_hash, after.revision) == (
        ServiceState.RUNNING, before.pid, before.spec_hash, before.revision)
    assert get(port).startswith("hello")


def test_services_survive_the_deployer_process_exiting(state_dir: Path, workdir: Path) -> None:
    port = free_port()
    script = textwrap.dedent(
        f"""\
        import sys
        from pathlib import Path
        from deployer.model.deployment import Deployment
        from deployer.model.desired import DesiredService
        from deployer.runtimes.supervisor import SupervisorRuntime
        runtime = SupervisorRuntime(Path({str(state_dir)!r}), templates_dir=Path({str(TEMPLATES)!r}))
        runtime.check()
        desired = DesiredService(name="web", source="s", sha="a" * 40, tree="t", runtime="supervisor", port={port})
        runtime.apply(Deployment(desired=desired, revision=1, workdir=Path({str(workdir)!r}),
                                 argv=(sys.executable, "server.py"), environment={{"PORT": "{port}"}}))
        """
    )
    subprocess.run([sys.executable, "-c", script], cwd=ROOT, check=True, timeout=60,
                   env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert "pid=" in wait_for(lambda: get(port), 10, "the service after the deployer exited")
    assert SupervisorRuntime(state_dir, templates_dir=TEMPLATES).observe()["web"].state is ServiceState.RUNNING


def test_logs_tail_the_output_even_across_a_cut_character(runtime: SupervisorRuntime, workdir: Path) -> None:
    runtime.apply(deployment(workdir, free_port()))
    text = wait_for(lambda: runtime.logs("web"), 5, "output in the log")
    assert "with ünïcödé" in text
    for size in range(1, 12):  # some of these windows start inside a two-byte character
        tail = runtime.logs("web", size)
        assert text.endswith(tail.lstrip("\ufffd")) and len(tail.encode()) <= size
    runtime.remove("web")
    assert "ünïcödé" in runtime.logs("web")  # the log file outlives the program


def test_an_injection_is_refused_before_anything_is_written(runtime: SupervisorRuntime, workdir: Path) -> None:
    evil = deployment(workdir, free_port(), greeting="x\n[program:evil]\ncommand=/bin/sh")
    with pytest.raises(RenderError, match="environment GREETING"):
        runtime.apply(evil)
    assert list(runtime.include_dir.iterdir()) == []
    assert runtime.observe() == {}


def test_a_program_file_without_a_process_reads_stopped_and_starts(runtime: SupervisorRuntime, workdir: Path) -> None:
    port = free_port()
    runtime.apply(deployment(workdir, port))
    text = (runtime.include_dir / "web.conf").read_text()
    runtime.remove("web")
    (runtime.include_dir / "web.conf").write_text(text)  # as if an apply was interrupted before loading
    seen = runtime.observe()["web"]
    assert seen.state is ServiceState.STOPPED and seen.revision == 1
    runtime.start("web")
    assert runtime.observe()["web"].state is ServiceState.RUNNING
    assert get(port).startswith("hello")


def test_an_unreachable_supervisord_is_runtime_unavailable(tmp_path: Path) -> None:
    external = SupervisorRuntime(tmp_path, socket=str(tmp_path / "nobody.sock"), templates_dir=TEMPLATES)
    with pytest.raises(RuntimeUnavailable, match="not answering"):
        external.check()
    with pytest.raises(RuntimeUnavailable):
        external.observe()


def test_a_pass_lists_processes_through_deployers_compact_listing(runtime: SupervisorRuntime, workdir: Path) -> None:
    """The embedded supervisord loads deployer's listing; it says what getAllProcessInfo says."""
    runtime.apply(deployment(workdir, free_port()))
    compact = {info["name"]: info for info in json.loads(runtime.rpc.call("deployer.listProcesses"))}
    full = {info["name"]: info for info in runtime.rpc.call("getAllProcessInfo")}
    assert compact.keys() == full.keys() == {"web"}
    assert all(compact["web"][key] == full["web"][key] for key in ("group", "statename", "pid", "stdout_logfile"))
    seen = runtime.observe()["web"]
    assert (seen.state, seen.pid) == (ServiceState.RUNNING, full["web"]["pid"])


def test_a_supervisord_without_the_listing_is_still_observed(
        state_dir: Path, workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One started by an older deployer (no extension in its config) answers getAllProcessInfo instead."""
    from deployer.runtimes.supervisor import embedded

    plain = functools.partial(embedded.supervisord_conf, extension=False)
    monkeypatch.setattr(embedded, "supervisord_conf", lambda **paths: plain(**{**paths, "extension": False}))
    runtime = SupervisorRuntime(state_dir, templates_dir=TEMPLATES)
    runtime.ensure_running()
    with pytest.raises(ApplyError, match="listProcesses"):
        runtime.rpc.call("deployer.listProcesses")
    runtime.apply(deployment(workdir, free_port()))
    assert runtime.observe()["web"].state is ServiceState.RUNNING
