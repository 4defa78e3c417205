"""A Docker engine of the test's own, to restart at will: the machine's dockerd is shared by other
tests and the swarm, and must never be stopped.

Its own data root, exec root (and with it its own containerd), pid file, unix socket and bridge
(``--iptables=false``: published ports go through the userland proxy, which loopback needs no
rule for). Everything is under one short temp folder (a unix socket path holds at most 107 bytes).
"""

from __future__ import annotations

import contextlib
import secrets
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import docker
import docker.errors

from tests.conftest import unavailable
from tests.helpers import wait_for


class PrivateEngine:
    def __init__(self) -> None:
        if shutil.which("dockerd") is None or shutil.which("ip") is None:
            unavailable("dockerd and ip (iproute2) are needed to run a private Docker engine")
        self.home = Path(tempfile.mkdtemp(prefix="dk", dir="/tmp"))
        self.socket = self.home / "docker.sock"
        self.bridge = f"dkr{secrets.token_hex(3)}"  # an interface name holds at most 15 characters
        self.process: subprocess.Popen[bytes] | None = None
        self._subnet = f"10.{200 + secrets.randbelow(50)}.{secrets.randbelow(250)}"

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    def api(self) -> Any:
        return docker.APIClient(base_url=self.url, version="auto", timeout=30)

    def create_bridge(self) -> None:
        made = subprocess.run(["ip", "link", "add", self.bridge, "type", "bridge"], capture_output=True, text=True,
                              check=False)
        if made.returncode != 0:
            unavailable(f"cannot make a network bridge for a private dockerd: {made.stderr.strip()}")
        subprocess.run(["ip", "addr", "add", f"{self._subnet}.1/24", "dev", self.bridge], check=True)
        subprocess.run(["ip", "link", "set", self.bridge, "up"], check=True)

    def start(self, timeout: float = 60) -> float:
        """Start dockerd and wait until it answers; the seconds it took."""
        started = time.monotonic()
        (self.home / "docker.pid").unlink(missing_ok=True)  # left by a dockerd killed hard, it refuses to start
        log = (self.home / "dockerd.log").open("ab")
        self.process = subprocess.Popen(
            ["dockerd", "--data-root", str(self.home / "data"), "--exec-root", str(self.home / "exec"),
             "--pidfile", str(self.home / "docker.pid"), "-H", self.url, "--bridge", self.bridge,
             "--iptables=false", "--ip-masq=false", "--storage-driver=vfs"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        wait_for(self.answers, timeout, "the private dockerd to answer")
        return time.monotonic() - started

    def answers(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise AssertionError(f"the private dockerd exited: {self.log()[-2000:]}")
        with contextlib.suppress(docker.errors.DockerException, OSError):
            client = self.api()
            try:
                return bool(client.ping())
            finally:
                client.close()
        return False

    def stop(self, timeout: float = 60) -> None:
        """SIGTERM, as ``systemctl restart docker`` does: running containers are stopped with the engine."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)

    def log(self) -> str:
        path = self.home / "dockerd.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def remove(self) -> None:
        """The engine, its containers, its mounts (dockerd bind-mounts its data root), bridge and folder."""
        with contextlib.suppress(docker.errors.DockerException, OSError, AssertionError):
            if self.answers():
                client = self.api()
                for container in client.containers(all=True):
                    client.remove_container(container["Id"], force=True)
                client.close()
        self.stop()
        mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()
                  if line.split()[1].startswith(str(self.home))]
        for mount in sorted(mounts, key=len, reverse=True):
            subprocess.run(["umount", "-l", mount], capture_output=True, check=False)
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True, check=False)
        shutil.rmtree(self.home, ignore_errors=True)
