"""Calls to managed services never go through the daemon's proxy, and pages never run git.

One daemon with ``HTTP_PROXY``/``HTTPS_PROXY``/``ALL_PROXY`` pointing at a closed port: the
health gate, ``/info`` expectations and demo inputs all reach the service on loopback anyway.
Then the mirror and every checkout are deleted: the service page and the showcase still show
the demo input (kept under the state dir when the demo ran), so no page depends on git.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import (
    EXAMPLE,
    GitRepo,
    free_port,
    local_source,
    start_daemon,
    stop_supervisord,
    wait_for,
    write_config,
)

MANIFEST = """name: text-classify
command: python server.py --port ${PORT}
health: {path: /health, timeout: 30}
info: {path: /info, expect: {name: text-classify}}
demo:
  - {name: short-review, input: demo/short.json, json_keys: [label]}
"""


@pytest.fixture
def world(tmp_path: Path) -> Iterator[dict[str, Any]]:
    repo = GitRepo.create(tmp_path / "repo.git", tmp_path / "work")
    tree = repo.copy_tree(EXAMPLE)
    tree["service.yaml"] = MANIFEST
    repo.commit(tree, "example with a demo")
    config, _ = write_config(tmp_path, sources=local_source("models"))
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens: a request sent through it fails
    proxies = {key: dead for key in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy",
                                      "all_proxy")}
    daemon = start_daemon(config, tmp_path / "state", env={**proxies, "NO_PROXY": "", "no_proxy": ""})
    world = {"root": tmp_path, "repo": repo, "daemon": daemon}
    try:
        yield world
    finally:
        world["daemon"].stop()  # the test starts a second daemon: that one is stopped
        stop_supervisord(tmp_path / "state")


def test_gate_info_and_demos_ignore_the_proxy_and_pages_never_need_git(world: dict[str, Any]) -> None:
    daemon, root = world["daemon"], world["root"]
    service = wait_for(lambda: (s := daemon.service("text-classify")) and s["last_attempt"]
                       and s["last_attempt"]["outcome"] != "running" and s, 90, "the first attempt to end")
    steps = {step["name"]: step for step in service["attempts"][0]["steps"]}
    assert service["last_attempt"]["outcome"] == "succeeded", steps
    assert {"health", "info", "demo"} <= set(steps) and all(step["ok"] for step in steps.values())
    assert "short-review: HTTP 200" in steps["demo"]["output"]

    daemon.stop()  # no pass may recreate what is deleted below, and the repository goes away too
    world["repo"].bare.rename(root / "gone.git")
    shutil.rmtree(root / "state" / "mirrors")
    shutil.rmtree(root / "state" / "checkouts")
    world["daemon"] = daemon = start_daemon(root / "deployer.toml", root / "state")
    short = (EXAMPLE / "demo" / "short.json").read_text()
    first_words = short.split('"')[3][:20]  # the review text, as the page shows it (escaped JSON preview)
    for path in ("/services/text-classify", "/services/text-classify/showcase"):
        page = daemon.get(path)
        assert page.status_code == 200
        assert first_words in page.text, f"{path} lost the demo input"
    revision = service["running_revision"]
    raw = daemon.get(f"/services/text-classify/demo-input/{revision}/short-review")
    assert raw.status_code == 200 and raw.content == (EXAMPLE / "demo" / "short.json").read_bytes()
