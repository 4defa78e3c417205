"""The CLI works on the daemon's own host with no set-up: with no API token configured,
``deployer serve`` makes one (0600, in the state dir) and the CLI finds it there."""

from __future__ import annotations

import stat
import subprocess
import sys
from pathlib import Path

import httpx

from tests.helpers import EXAMPLE, GitRepo, local_source, start_daemon, stop_supervisord, write_config


def test_reconcile_and_logs_work_with_no_token_configured(tmp_path: Path) -> None:
    repo = GitRepo.create(tmp_path / "repo.git", tmp_path / "work")
    repo.commit(repo.copy_tree(EXAMPLE), "v1")
    config, _ = write_config(tmp_path, sources=local_source("models"))
    daemon = start_daemon(config, tmp_path / "state")
    try:
        token_file = tmp_path / "state" / "api-token"
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        assert httpx.post(daemon.url + "/api/reconcile", json={}, timeout=10).status_code == 401  # others still need it
        done = subprocess.run([sys.executable, "-m", "deployer", "reconcile", "--config", str(config)],
                              capture_output=True, text=True, timeout=120, cwd=tmp_path)
        assert done.returncode == 0, done.stdout + done.stderr
        token = token_file.read_text().strip()
        assert token not in daemon.log()
        # A restarted daemon keeps the same token (a CLI started before the restart keeps working).
        daemon.stop()
        daemon = start_daemon(config, tmp_path / "state")
        assert token_file.read_text().strip() == token
    finally:
        daemon.stop()
        stop_supervisord(tmp_path / "state")
