"""The Gitea API down, failing or slow while signed pushes deploy.

Commit statuses are sent apart from the deploy (one background reporter): a push deploys as fast
with Gitea refusing connections, answering 500, or taking 10 s per request (longer than the
client's 5 s timeout) as with Gitea well. ``/healthz`` says that statuses wait and why; once Gitea
is back every deployed commit gets its final status, none is dropped.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import gitea_payloads as gp
from tests.gitea_standin import GiteaStandIn
from tests.helpers import GitRepo, start_daemon, stop_supervisord, wait_for, write_config
from tests.reliability.harness import SERVER, RequestLoop, answer, serving, state_of, wait_idle_history

SECRET = "gitea-down-secret"
OWNER, REPO = "acme", "reported"
SOURCE = f"{OWNER}/{REPO}"
SLOW = 10.0  # seconds a slow Gitea takes to answer: twice the client's timeout
# The request loop calls a sibling the pushes leave alone: without the gateway a redeploy restarts in place.
MANIFEST = """services:
  - name: steady
    path: app
    command: python server.py ${PORT}
    health: {path: /health, timeout: 30}
  - name: reported
    path: app
    command: python server.py ${PORT}
    env: {GREETING: %s}
    health: {path: /health, timeout: 30}
"""


@pytest.fixture
def world(tmp_path: Path) -> Iterator[dict[str, Any]]:
    repo = GitRepo.create(tmp_path / "gitea" / OWNER / f"{REPO}.git", tmp_path / "work")
    gitea = GiteaStandIn()
    gitea.up()
    repo.on_commit = gitea.add_repo(OWNER, REPO, []).shas.append
    gitea_section = (f'[gitea]\nurl = "{gitea.url}"\nclone_base = "file://{tmp_path}/gitea"\n'
                     f'allowed_owners = ["{OWNER}"]\n')
    config, _ = write_config(tmp_path, extra=gitea_section)
    daemon = start_daemon(config, tmp_path / "state",
                          env={"DEPLOYER_WEBHOOK_SECRET": SECRET, "DEPLOYER_GITEA_TOKEN": gitea.token})
    try:
        yield {"daemon": daemon, "repo": repo, "gitea": gitea}
    finally:
        daemon.stop()
        stop_supervisord(tmp_path / "state")
        gitea.stop()


def push(world: dict[str, Any], greeting: str) -> str:
    """Commit a new greeting and deliver the signed webhook, which must be accepted at once."""
    repo, daemon = world["repo"], world["daemon"]
    before = repo.shas[-1] if repo.shas else "0" * 40
    sha = repo.commit({"app/server.py": SERVER, "service.yaml": MANIFEST % greeting}, greeting)
    body = gp.encode(gp.push_payload(OWNER, REPO, "refs/heads/main", before, sha,
                                     f"http://gitea.invalid/{SOURCE}.git", commits=[{"id": sha, "message": greeting}]))
    started = time.monotonic()
    response = daemon.post("/hooks/gitea", body, gp.headers(body, SECRET, delivery=str(uuid.uuid4())))
    assert response.status_code == 202 and time.monotonic() - started < 2, response.text
    return sha


def final_status(gitea: GiteaStandIn, sha: str) -> str | None:
    rows = gitea.statuses(SOURCE, sha)
    return rows[-1]["status"] if rows and rows[-1]["status"] != "pending" else None


def deploy_time(world: dict[str, Any], greeting: str) -> tuple[str, float]:
    started = time.monotonic()
    sha = push(world, greeting)
    serving(world["daemon"], REPO, greeting, 60)
    return sha, time.monotonic() - started


@pytest.mark.parametrize("how", ["refused", "500", "slow"])
def test_a_broken_gitea_api_never_delays_a_deploy_and_statuses_arrive_once_it_is_back(
        world: dict[str, Any], how: str) -> None:
    daemon, gitea = world["daemon"], world["gitea"]
    first, healthy_took = deploy_time(world, "v1")
    wait_for(lambda: final_status(gitea, first) == "success", 30, "v1's status with Gitea well")
    port = state_of(daemon, REPO)["port"]
    serving(daemon, "steady", "hi", 30)

    with RequestLoop(state_of(daemon, "steady")["port"]) as loop:
        broke = time.monotonic()
        if how == "refused":
            gitea.down()
        else:
            gitea.degrade(failing=500 if how == "500" else None, delay=SLOW if how == "slow" else 0.0)
        deployed = [deploy_time(world, greeting) for greeting in ("v2", "v3")]
        health = wait_for(lambda: (found := daemon.get("/healthz")).json()["checks"]["gitea_status"] != "ok"
                          and found, 60, "/healthz to say statuses wait")
        detected = time.monotonic() - broke
        # said, without failing: deployer does its job (a 503 would get it restarted, losing the queue)
        assert health.status_code == 200 and health.json()["status"] == "ok", health.text
        health = health.json()
        assert health["checks"]["gitea_status"].startswith("notice: "), health
        assert "commit status" in health["checks"]["gitea_status"], health
        assert all(value == "ok" for name, value in health["checks"].items() if name != "gitea_status"), health
        if how != "slow":  # a slow Gitea stores what it answers too late; a failing one stores nothing
            assert all(final_status(gitea, sha) is None for sha, _ in deployed)
        outage = time.monotonic() - broke

        if how == "refused":
            gitea.up()
        else:
            gitea.degrade()
        back = time.monotonic()
        for sha, _ in deployed:
            wait_for(lambda sha=sha: final_status(gitea, sha) == "success", 90, f"the status of {sha[:7]}")
        delivered = time.monotonic() - back
        wait_for(lambda: daemon.get("/healthz").json()["checks"]["gitea_status"] == "ok", 30, "/healthz ok again")
    loop.assert_served()

    took = [seconds for _, seconds in deployed]
    assert max(took) < healthy_took + 5, f"deploys took {took} with Gitea {how}, {healthy_took:.1f}s with it well"
    assert answer(port) == "v3"
    wait_idle_history(daemon, REPO)
    print(f"\ngitea {how}: push-to-serving {', '.join(f'{t:.1f}' for t in took)}s (well: {healthy_took:.1f}s), "
          f"healthz said so in {detected:.1f}s, outage {outage:.0f}s, statuses delivered {delivered:.1f}s after "
          f"Gitea came back; loop {loop.sent} requests, 0 failed")
