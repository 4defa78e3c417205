"""Test helpers: real git repositories, a tiny offline wheel, a daemon under uvicorn."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import itertools
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self, TypeVar

import httpx

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "manifests" / "examples" / "text-classify"
T = TypeVar("T")


def git(cwd: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "Ada Dev", "GIT_AUTHOR_EMAIL": "ada@example.com",
           "GIT_COMMITTER_NAME": "Ada Dev", "GIT_COMMITTER_EMAIL": "ada@example.com"}
    done = subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True)
    return done.stdout.strip()


@dataclass
class GitRepo:
    """A bare repository (what Gitea would hold) and a work clone to commit from."""

    bare: Path
    work: Path
    branch: str = "main"
    shas: list[str] = field(default_factory=list)
    on_commit: Callable[[str], None] | None = None  # e.g. tell a Gitea stand-in the commit exists

    @classmethod
    def create(cls, bare: Path, work: Path) -> GitRepo:
        bare.mkdir(parents=True)
        git(bare, "init", "--quiet", "--bare", "--initial-branch=main")
        work.mkdir(parents=True)
        git(work, "init", "--quiet", "--initial-branch=main")
        git(work, "remote", "add", "origin", str(bare))
        return cls(bare=bare, work=work)

    def commit(self, files: dict[str, str | bytes | None], message: str, *, push: bool = True) -> str:
        for name, content in files.items():
            path = self.work / name
            if content is None:
                path.unlink()
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, bytes):
                path.write_bytes(content)
            else:
                path.write_text(content)
        git(self.work, "add", "-A")
        git(self.work, "commit", "--quiet", "-m", message)
        sha = git(self.work, "rev-parse", "HEAD")
        if push:
            git(self.work, "push", "--quiet", "origin", f"HEAD:{self.branch}")
        self.shas.append(sha)
        if self.on_commit is not None:
            self.on_commit(sha)
        return sha

    def copy_tree(self, source: Path) -> dict[str, str | bytes | None]:
        return {str(path.relative_to(source)): path.read_bytes()
                for path in sorted(source.rglob("*")) if path.is_file() and "__pycache__" not in path.parts}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


_WINDOWS = itertools.count(random.randrange(300))


def port_window() -> int:
    """The first of 10 ports for a test daemon's services (or its gateway's slots).

    Below the kernel's ephemeral range (32768+), so an outgoing connection never holds a port a
    test service is about to bind; in a band of 3,000 ports of this xdist worker's own, so daemons
    of concurrent workers never share a window; each call takes the next window of the band.
    """
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
    band = 20000 + (int(worker) % 4 if worker.isdigit() else 0) * 3000
    return band + (next(_WINDOWS) % 300) * 10


def wait_for(check: Callable[[], T | None], timeout: float, what: str, interval: float = 0.1) -> T:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = check()
        except AssertionError:
            raise  # a definite failure (e.g. the daemon exited): no point waiting
        except Exception as exc:  # keep polling; report the last error on timeout
            last = exc
            value = None
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}" + (f" (last error: {last})" if last else ""))


def metric(text: str, name: str, **labels: str) -> float | None:
    """The value of sample ``name`` with exactly ``labels`` in a Prometheus exposition (None if absent)."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    return None


def make_wheel(directory: Path, name: str, version: str, module_source: str) -> Path:
    """A minimal pure-Python wheel, so a requirements change installs with no network."""
    directory.mkdir(parents=True, exist_ok=True)
    dist = f"{name}-{version}.dist-info"
    files = {
        f"{name}.py": module_source.encode(),
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode(),
        f"{dist}/WHEEL": b"Wheel-Version: 1.0\nGenerator: deployer-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record_lines = []
    for path, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record_lines.append(f"{path},sha256={digest},{len(data)}")
    record_lines.append(f"{dist}/RECORD,,")
    files[f"{dist}/RECORD"] = ("\n".join(record_lines) + "\n").encode()
    wheel = directory / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, data in files.items():
            archive.writestr(path, data)
    return wheel


@dataclass
class Daemon:
    """``deployer serve`` as a real process under uvicorn on loopback."""

    url: str
    state_dir: Path
    process: subprocess.Popen[bytes]
    log_path: Path

    def get(self, path: str) -> httpx.Response:
        return httpx.get(self.url + path, timeout=10)

    def post(self, path: str, content: bytes, headers: dict[str, str]) -> httpx.Response:
        return httpx.post(self.url + path, content=content, headers=headers, timeout=10)

    def local_token(self) -> str:
        """The API token ``serve`` made for this host (no token configured)."""
        return (self.state_dir / "api-token").read_text().strip()

    def request_pass(self, token: str | None = None) -> httpx.Response:
        """``POST /api/reconcile`` with the given token, else the one made for this host."""
        auth = {"Authorization": f"Bearer {token or self.local_token()}"}
        return httpx.post(self.url + "/api/reconcile", json={}, headers=auth, timeout=10)

    def service(self, name: str) -> dict[str, Any] | None:
        response = self.get(f"/api/services/{name}")
        return response.json() if response.status_code == 200 else None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


def passes(daemon: Daemon, source: str) -> int:
    """Reconcile passes of ``source`` finished so far (the count of the pass-duration histogram)."""
    found = metric(daemon.get("/metrics").text, "deployer_reconcile_pass_duration_seconds_count", source=source)
    return int(found or 0)


def more_passes(daemon: Daemon, source: str, count: int = 2, timeout: float = 60) -> None:
    """Wait until ``count`` more passes of ``source`` have finished (periodic ones, say, that must change nothing)."""
    seen = passes(daemon, source)
    wait_for(lambda: passes(daemon, source) >= seen + count, timeout, f"{count} more reconcile passes of {source}")


def queue_drained(daemon: Daemon, timeout: float = 60) -> None:
    """Wait until the work queue is empty: every pass requested before this call has finished.

    Requests are queued before the request that made them is answered, so once an input
    was acknowledged this is the positive marker that any pass it caused is over; a test
    asserting that the input changed nothing waits for it instead of sleeping.
    """
    def empty() -> bool:
        return metric(daemon.get("/metrics").text, "deployer_queue_depth") == 0

    wait_for(empty, timeout, "the daemon's work queue to drain")


def start_daemon(config: Path, state_dir: Path, env: dict[str, str] | None = None, timeout: float = 90) -> Daemon:
    """``deployer serve`` started and answering ``/healthz``; one that never does is stopped with what it started
    (on a loaded machine start-up can take tens of seconds: the default allows for it)."""
    listen = _listen_of(config)
    log_path = state_dir.parent / "daemon.log"
    state_dir.mkdir(parents=True, exist_ok=True)
    handle = log_path.open("ab")
    process = subprocess.Popen(
        [sys.executable, "-m", "deployer", "serve", "--config", str(config)],
        cwd=config.parent, env={**os.environ, **(env or {})}, stdout=handle, stderr=subprocess.STDOUT,
    )
    daemon = Daemon(url=f"http://{listen}", state_dir=state_dir, process=process, log_path=log_path)

    def up() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"daemon exited with {process.returncode}:\n{daemon.log()}")
        return daemon.get("/healthz").status_code == 200

    try:
        wait_for(up, timeout, "the daemon's /healthz")
    except BaseException:
        daemon.stop()  # a daemon left running would start supervisord again after the test stopped it
        stop_supervisord(state_dir)
        _stop_nginx(state_dir)
        raise
    return daemon


def _stop_nginx(state_dir: Path) -> None:
    """The embedded gateway's nginx, if the daemon started one (it outlives the daemon by design)."""
    with contextlib.suppress(OSError, ValueError):
        os.kill(int((state_dir / "gateway" / "nginx.pid").read_text().strip()), signal.SIGQUIT)


def stop_supervisord(state_dir: Path) -> None:
    """Stop the embedded supervisord (and with it every program) left by a daemon."""
    pidfile = state_dir / "supervisor" / "supervisord.pid"
    try:
        pid = int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    os.kill(pid, signal.SIGKILL)


def _listen_of(config: Path) -> str:
    import tomllib

    return str(tomllib.loads(config.read_text())["server"]["listen"])


def write_config(root: Path, *, sources: str = "", extra: str = "", interval: float = 1,
                 poll_interval: float = 3600) -> tuple[Path, int]:
    """A deployer.toml for a test daemon: its own listen port, state dir and a port window.

    The window sits below the kernel's ephemeral range (32768+), so an outgoing
    connection never happens to hold a port a test service is about to bind.
    """
    port = free_port()
    first = port_window()
    config = root / "deployer.toml"
    config.write_text(f"""
[server]
listen = "127.0.0.1:{port}"
{extra}
{sources}
[reconcile]
interval = {interval}
poll_interval = {poll_interval}
[ports]
range = "{first}-{first + 9}"
[paths]
state_dir = "{root / 'state'}"
""")
    return config, port


def local_source(name: str, url: str = "repo.git") -> str:
    return f'[[sources]]\nurl = "{url}"\nname = "{name}"\n'


class Background:
    """A loop on a thread of its own for the length of a ``with`` block (``_run`` watches ``_stop``)."""

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=type(self).__name__, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        raise NotImplementedError
