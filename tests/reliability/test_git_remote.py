"""The git remote unreachable or answering garbage: the page says why, the running revision keeps
serving, and the next push deploys as soon as the remote is back (a failed fetch is retried by every
pass, not only at the next poll, which this daemon never reaches: its poll interval is an hour)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import GitRepo, local_source, start_daemon, stop_supervisord, wait_for, write_config
from tests.reliability.harness import RequestLoop, answer, publish, serving, state_of, wait_idle_history

TOKEN = "git-remote-token"


@pytest.fixture
def world(tmp_path: Path) -> Iterator[dict[str, Any]]:
    repo = GitRepo.create(tmp_path / "repo.git", tmp_path / "work")
    publish(repo, "remote-fault", "v1")
    config, _ = write_config(tmp_path, sources=local_source("remote-fault"), interval=1)
    daemon = start_daemon(config, tmp_path / "state", env={"DEPLOYER_API_TOKEN": TOKEN})
    try:
        yield {"daemon": daemon, "repo": repo, "root": tmp_path}
    finally:
        daemon.stop()
        stop_supervisord(tmp_path / "state")


def break_remote(bare: Path, how: str, aside: Path) -> None:
    bare.rename(aside)
    if how == "garbage":  # something answers at the URL, but it is not a repository
        bare.mkdir()
        (bare / "HEAD").write_bytes(b"\x00\xff not a ref \x00")
        (bare / "objects").write_text("not a folder")


@pytest.mark.parametrize("how", ["gone", "garbage"])
def test_a_broken_remote_is_reported_and_the_next_push_deploys_once_it_is_back(world: dict[str, Any],
                                                                                 how: str) -> None:
    daemon, repo, root = world["daemon"], world["repo"], world["root"]
    serving(daemon, "remote-fault", "v1", 60)
    port = state_of(daemon, "remote-fault")["port"]
    aside = root / "aside.git"
    with RequestLoop(port) as loop:
        publish(repo, "remote-fault", "v2")  # pushed to the remote, which then breaks before any fetch
        break_remote(repo.bare, how, aside)
        assert daemon.request_pass(TOKEN).status_code == 202
        page = wait_for(lambda: "cannot fetch" in (text := daemon.get("/").text) and text, 60,
                        "the page to say the source cannot be fetched")
        assert str(aside) not in page
        assert answer(port) == "v1"
    loop.assert_served()

    if how == "garbage":
        shutil.rmtree(repo.bare)
    aside.rename(repo.bare)
    took = serving(daemon, "remote-fault", "v2", 60)
    wait_for(lambda: "cannot fetch" not in daemon.get("/").text, 30, "the page to clear the error")
    wait_idle_history(daemon, "remote-fault")
    assert took < 60
