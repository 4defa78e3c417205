"""A PostgreSQL cluster of a test's own, on its own port, that the test may stop and start.

Debian's PostgreSQL binaries (``initdb``, ``pg_ctl``) run as the ``postgres`` user on a
data directory made for the test; the shared server on 127.0.0.1:5432 is never touched.
Skips (fails in CI) where the binaries or the user are missing.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import unavailable
from tests.helpers import free_port


@dataclass
class Cluster:
    data: Path
    port: int
    bin_dir: Path

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        options = (f"-c listen_addresses=127.0.0.1 -c port={self.port} -c unix_socket_directories={self.data} "
                   "-c fsync=off -c full_page_writes=off -c synchronous_commit=off")
        self._pg_ctl("start", "-w", "-t", "60", "-l", str(self.data / "server.log"), "-o", options)

    def stop(self) -> None:
        self._pg_ctl("stop", "-w", "-t", "60", "-m", "fast")

    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    def _pg_ctl(self, *args: str) -> None:
        _as_postgres(str(self.bin_dir / "pg_ctl"), "-D", str(self.data), *args)


def _as_postgres(*command: str) -> None:
    prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    done = subprocess.run([*prefix, *command], capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:2])} failed: {done.stdout}{done.stderr}")


@contextmanager
def own_cluster() -> Iterator[Cluster]:
    """A new, running cluster (trust auth on loopback), stopped and deleted afterwards."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        unavailable("PostgreSQL's initdb is not installed (Debian package postgresql)")
    try:
        owner = pwd.getpwnam("postgres")
    except KeyError:
        unavailable("no postgres user to run a cluster of the test's own")
    bin_dir = Path(found[-1]).parent
    data = Path(tempfile.mkdtemp(prefix="deployer-pg-"))  # not under pytest's 0700 tmp: postgres must reach it
    os.chown(data, owner.pw_uid, owner.pw_gid)
    data.chmod(0o700)
    cluster = Cluster(data=data, port=free_port(), bin_dir=bin_dir)
    try:
        _as_postgres(str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8",
                     "--no-instructions")
        cluster.start()
        yield cluster
    finally:
        if cluster.running():
            with suppress(RuntimeError):
                cluster.stop()
        shutil.rmtree(data, ignore_errors=True)
