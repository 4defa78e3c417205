"""The state dir's filesystem full: a clear failure, the running revision keeps serving, and the
change deploys by itself once space returns.

The state dir (mirrors, checkouts, environments, program files and the SQLite database) lives on a
small tmpfs the test mounts; a filler file takes every free byte before a push arrives.
"""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import unavailable
from tests.helpers import GitRepo, local_source, start_daemon, stop_supervisord, wait_for, write_config
from tests.reliability.harness import (
    RequestLoop,
    answer,
    publish,
    serving,
    state_of,
    wait_idle_history,
)

TOKEN = "disk-full-token"


def fill(folder: Path) -> Path:
    """Take every free byte of the filesystem holding ``folder``; the filler file is returned."""
    filler = folder / "filler"
    block = b"\0" * (1 << 20)
    with filler.open("wb", buffering=0) as out:
        for size in (1 << 20, 1 << 12, 1):
            try:
                while True:
                    out.write(block[:size])
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
    return filler


@pytest.fixture
def world(tmp_path: Path) -> Iterator[dict[str, Any]]:
    state = tmp_path / "state"
    state.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(state)],
                             capture_output=True, text=True, check=False)
    if mounted.returncode != 0:
        unavailable(f"cannot mount a tmpfs for the state dir: {mounted.stderr.strip()}")
    repo = GitRepo.create(tmp_path / "repo.git", tmp_path / "work")
    publish(repo, "disky", "v1")
    config, _ = write_config(tmp_path, sources=local_source("disky"), interval=1)
    daemon = None
    try:
        daemon = start_daemon(config, state, env={"DEPLOYER_API_TOKEN": TOKEN})
        yield {"daemon": daemon, "repo": repo, "state": state}
    finally:
        if daemon is not None:
            daemon.stop()
        stop_supervisord(state)
        with contextlib.suppress(OSError):
            (state / "filler").unlink()
        subprocess.run(["umount", "-l", str(state)], check=False)


def test_a_full_state_dir_fails_clearly_keeps_serving_and_recovers(world: dict[str, Any]) -> None:
    daemon, repo, state = world["daemon"], world["repo"], world["state"]
    serving(daemon, "disky", "v1", 60)
    wait_idle_history(daemon, "disky")  # the first attempt's end is written before the disk fills
    port = state_of(daemon, "disky")["port"]
    with RequestLoop(port) as loop:
        filler = fill(state)
        publish(repo, "disky", "v2", **{"weights.bin": os.urandom(256 * 1024)})
        assert daemon.request_pass(TOKEN).status_code == 202

        def full(text: str) -> bool:
            return "disk is full" in text or "No space left on device" in text

        health = wait_for(lambda: (found := daemon.get("/healthz")).status_code == 503 and found.json(), 60,
                          "/healthz to fail")
        assert "KiB free" in health["checks"]["disk"], health
        wait_for(lambda: full(daemon.get("/").text), 60, "the page to say the disk is full")
        assert answer(port) == "v1"
    loop.assert_served()  # through the fault; the redeploy after it restarts in place (no gateway here)

    filler.unlink()
    took = serving(daemon, "disky", "v2", 60)  # no poll is due: the failed fetch is retried by every pass
    wait_idle_history(daemon, "disky")
    assert took < 60


SLOW_BOOT = "import time\ntime.sleep(3)  # loading the model\n"


def test_a_disk_that_fills_during_a_gate_leaves_the_healthy_revision_running(world: dict[str, Any]) -> None:
    """The gate passes but the end of the attempt cannot be written: the store failed, not the revision,
    so nothing is rolled back or stopped; once space returns the history is completed."""
    daemon, repo, state = world["daemon"], world["repo"], world["state"]
    serving(daemon, "disky", "v1", 60)
    wait_idle_history(daemon, "disky")
    publish(repo, "disky", "v2", **{"boot.py": SLOW_BOOT})
    repo.commit({"server.py": SLOW_BOOT + (repo.work / "server.py").read_text()}, "v2 boots slowly")
    assert daemon.request_pass(TOKEN).status_code == 202

    def gating() -> bool:
        attempt = (state_of(daemon, "disky")["attempts"] or [{}])[0]
        return attempt.get("outcome") == "running" and any(step["name"] == "apply" for step in attempt["steps"])

    wait_for(gating, 60, "the v2 deploy waiting on its health gate", interval=0.05)
    filler = fill(state)
    port = state_of(daemon, "disky")["port"]
    wait_for(lambda: answer(port) == "v2", 30, "v2 answering after its gate")
    with RequestLoop(port) as loop:  # not stopped or rolled back for a failed write
        wait_for(lambda: loop.sent >= 40, 30, "40 requests to v2")
    loop.assert_served()
    filler.unlink()
    wait_idle_history(daemon, "disky")
    assert answer(port) == "v2"
