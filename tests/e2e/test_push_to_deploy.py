"""End to end: the daemon under uvicorn on loopback, a real supervisord, real git
repositories, and signed webhooks in Gitea's exact format.

One daemon serves the whole module (a deploy takes seconds); tests run in file
order and each builds on the revision the previous one left serving.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests import gitea_payloads as gp
from tests.gitea_standin import GiteaStandIn
from tests.helpers import (
    EXAMPLE,
    Daemon,
    GitRepo,
    free_port,
    make_wheel,
    start_daemon,
    stop_supervisord,
    wait_for,
)

SECRET = "e2e-webhook-secret"
OWNER, REPO = "acme", "text-classify"
# The payload's clone_url points at an address deployer cannot reach, as Gitea's ROOT_URL
# often does; deployer must clone from [gitea] url instead.
CLONE_URL = f"http://gitea.invalid:3000/{OWNER}/{REPO}.git"
ZERO = "0" * 40


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("e2e")
    repo = GitRepo.create(root / "gitea" / OWNER / f"{REPO}.git", root / "work")
    gitea = GiteaStandIn()
    gitea.up()
    known = gitea.add_repo(OWNER, REPO, [])
    repo.on_commit = known.shas.append
    port = free_port()
    first = 20000 + (port % 1200) * 10  # a port window below the ephemeral range
    config = root / "deployer.toml"
    config.write_text(f"""
[server]
listen = "127.0.0.1:{port}"
[gitea]
url = "{gitea.url}"
clone_base = "file://{root / 'gitea'}"
allowed_owners = ["{OWNER}"]
[reconcile]
interval = 2
poll_interval = 3600
[ports]
range = "{first}-{first + 9}"
[paths]
state_dir = "{root / 'state'}"
""")
    daemon = start_daemon(config, root / "state",
                          env={"DEPLOYER_WEBHOOK_SECRET": SECRET, "DEPLOYER_GITEA_TOKEN": gitea.token})
    try:
        yield {"root": root, "repo": repo, "daemon": daemon, "gitea": gitea}
    finally:
        daemon.stop()
        stop_supervisord(root / "state")
        gitea.stop()


def push(daemon: Daemon, repo: GitRepo, before: str, after: str, *, content_type: str = "json",
         ref: str = "refs/heads/main", secret: str = SECRET, event: str = "push") -> httpx.Response:
    payload = gp.push_payload(OWNER, REPO, ref, before, after, CLONE_URL,
                              commits=[{"id": after, "message": "update"}] if after != ZERO else [])
    body = gp.encode(payload)
    headers = gp.headers(body, secret, content_type=content_type, event=event, delivery=str(uuid.uuid4()))
    return daemon.post("/hooks/gitea", gp.wire_body(body, content_type), headers)


def deployed(daemon: Daemon, sha: str, timeout: float = 60) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        service = daemon.service("text-classify")
        if service and service["running_sha"] == sha and service["healthy"] and \
                service["last_attempt"] and service["last_attempt"]["outcome"] != "running":
            return service
        return None

    return wait_for(check, timeout, f"text-classify running {sha[:7]} and healthy")


def last_attempt_after(daemon: Daemon, previous_id: int, timeout: float = 60) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        service = daemon.service("text-classify")
        attempts = service["attempts"] if service else []
        newest = attempts[0] if attempts else None
        if newest and newest["id"] > previous_id and newest["outcome"] != "running":
            return newest
        return None

    return wait_for(check, timeout, "a new finished attempt")


def info(port: int) -> dict[str, Any]:
    response = httpx.get(f"http://127.0.0.1:{port}/info", timeout=5)
    response.raise_for_status()
    return response.json()  # type: ignore[no-any-return]


def test_signed_push_deploys_the_example_service(world: dict[str, Any]) -> None:
    daemon, repo = world["daemon"], world["repo"]
    sha = repo.commit(repo.copy_tree(EXAMPLE), "example service")

    started = time.monotonic()
    response = push(daemon, repo, ZERO, sha)
    acked = time.monotonic() - started
    assert response.status_code == 202, response.text
    assert response.json()["result"] == "accepted"
    assert acked < 1.0, f"webhook took {acked:.3f}s to answer"

    service = deployed(daemon, sha)
    print(f"\npush-to-healthy (first deploy, empty requirements): {time.monotonic() - started:.2f}s")
    assert service["state"] == "running" and service["desired_sha"] == sha
    assert service["source"] == f"{OWNER}/{REPO}" and service["runtime"] == "supervisor"
    port = service["port"]
    predict = httpx.post(f"http://127.0.0.1:{port}/predict", json={"text": "excellent, I love it"}, timeout=5)
    assert predict.status_code == 200 and predict.json()["label"] == "positive"

    attempt = service["attempts"][0]
    assert attempt["outcome"] == "succeeded" and attempt["reason"] == "ReconciliationSucceeded"
    assert [step["name"] for step in attempt["steps"]] == ["checkout", "build", "apply", "health", "demo"]
    assert all(step["ok"] for step in attempt["steps"])
    revision = service["revisions"][0]
    assert revision["sha"] == sha and revision["author"].startswith("Ada Dev")
    world["port"], world["good_sha"] = port, sha


def test_code_only_push_redeploys_without_reinstalling(world: dict[str, Any]) -> None:
    daemon, repo = world["daemon"], world["repo"]
    server = (repo.work / "server.py").read_text().replace('"labels": list(LABELS),',
                                                            '"labels": list(LABELS), "build": "two",')
    sha = repo.commit({"server.py": server}, "code only: report the build in /info")
    started = time.monotonic()
    assert push(daemon, repo, world["good_sha"], sha, content_type="form").status_code == 202
    service = deployed(daemon, sha)
    print(f"\npush-to-healthy (code-only change): {time.monotonic() - started:.2f}s")

    build = next(step for step in service["attempts"][0]["steps"] if step["name"] == "build")
    assert build["output"].startswith("reused environment"), build
    assert service["port"] == world["port"], "auto port must be sticky across redeploys"
    assert info(world["port"])["build"] == "two"
    world["good_sha"] = sha


def test_requirements_change_builds_a_new_environment(world: dict[str, Any]) -> None:
    daemon, repo = world["daemon"], world["repo"]
    make_wheel(repo.work / "wheels", "tinylexicon", "0.1", "BONUS = {'superb': 2.5}\n")
    server = (repo.work / "server.py").read_text().replace(
        "STARTED = time.time()", "from tinylexicon import BONUS\nLEXICON.update(BONUS)\nSTARTED = time.time()")
    sha = repo.commit({
        "requirements.txt": "--no-index\n--find-links wheels\ntinylexicon==0.1\n",
        "server.py": server,
    }, "use the tinylexicon package")
    started = time.monotonic()
    assert push(daemon, repo, world["good_sha"], sha).status_code == 202
    service = deployed(daemon, sha, timeout=180)
    print(f"\npush-to-healthy (requirements change): {time.monotonic() - started:.2f}s")

    build = next(step for step in service["attempts"][0]["steps"] if step["name"] == "build")
    assert not build["output"].startswith("reused"), build
    predict = httpx.post(f"http://127.0.0.1:{world['port']}/predict", json={"text": "superb"}, timeout=5)
    assert predict.json()["label"] == "positive"
    world["good_sha"] = sha


def test_broken_manifest_keeps_the_previous_revision_serving(world: dict[str, Any]) -> None:
    daemon, repo = world["daemon"], world["repo"]
    before = daemon.service("text-classify")
    assert before is not None
    sha = repo.commit({"service.yaml": "name: text-classify\ncommand: python server.py\nport: 80\nbogus: 1\n"},
                      "broken manifest")
    assert push(daemon, repo, world["good_sha"], sha).status_code == 202
    attempt = last_attempt_after(daemon, before["attempts"][0]["id"])
    assert attempt["outcome"] == "failed" and attempt["reason"] == "ManifestInvalid"
    assert "service.yaml:3:7: port: must be between" in attempt["message"], attempt["message"]
    assert "unknown key 'bogus'" in attempt["message"]
    service = daemon.service("text-classify")
    assert service is not None and service["running_sha"] == world["good_sha"]
    assert httpx.get(f"http://127.0.0.1:{world['port']}/health", timeout=5).status_code == 200
    # Put the manifest back (no webhook: the next test's push deploys the branch head).
    repo.commit({"service.yaml": (EXAMPLE / "service.yaml").read_text()}, "fix manifest")


def test_unhealthy_revision_is_rolled_back(world: dict[str, Any]) -> None:
    daemon, repo = world["daemon"], world["repo"]
    before = daemon.service("text-classify")
    assert before is not None
    manifest = (EXAMPLE / "service.yaml").read_text().replace("path: /health\n  timeout: 30",
                                                              "path: /healthz\n  timeout: 3")
    sha = repo.commit({"service.yaml": manifest}, "health path that never answers 200")
    assert push(daemon, repo, repo.shas[-2], sha).status_code == 202
    attempt = last_attempt_after(daemon, before["attempts"][0]["id"])
    assert attempt["outcome"] == "rolled_back", attempt
    assert attempt["reason"] == "HealthCheckFailed"
    assert attempt["rolled_back_to"] == before["running_revision"]
    names = [step["name"] for step in attempt["steps"]]
    assert "health" in names and names[-2:] == ["rollback-health", "rollback-demo"]
    service = daemon.service("text-classify")
    assert service is not None and service["healthy"] and service["running_revision"] == before["running_revision"]
    assert info(world["port"])["build"] == "two"

    # The periodic reconcile must not re-apply the commit that failed.
    time.sleep(5)
    again = daemon.service("text-classify")
    assert again is not None and again["attempts"][0]["id"] == attempt["id"]


@pytest.mark.parametrize(
    ("case", "status"),
    [("bad-signature", 401), ("no-signature", 401), ("oversize", 413), ("malformed", 400),
     ("wrong-event", 400), ("unknown-owner", 403)],
)
def test_bad_deliveries_are_refused_and_change_nothing(world: dict[str, Any], case: str, status: int) -> None:
    daemon, repo = world["daemon"], world["repo"]
    before = daemon.service("text-classify")
    payload = gp.push_payload(OWNER, REPO, "refs/heads/main", repo.shas[-2], repo.shas[-1], CLONE_URL)
    if case == "unknown-owner":
        payload = gp.push_payload("mallory", REPO, "refs/heads/main", repo.shas[-2], repo.shas[-1],
                                  f"http://gitea.invalid:3000/mallory/{REPO}.git")
    body = gp.encode(payload)
    headers = gp.headers(body, SECRET, event="issues" if case == "wrong-event" else "push")
    if case == "bad-signature":
        headers = gp.headers(body, "not-the-secret")
    elif case == "no-signature":
        headers = {key: value for key, value in headers.items() if "Signature" not in key}
    elif case == "oversize":
        body = b"{" + b" " * (1024 * 1024 + 10) + b"}"
    elif case == "malformed":
        body = b'{"ref": "refs/heads/main", "after": '
        headers = gp.headers(body, SECRET)
    response = daemon.post("/hooks/gitea", body, headers)
    assert response.status_code == status, response.text
    assert response.json()["result"] == "rejected"
    time.sleep(0.3)
    after = daemon.service("text-classify")
    assert before is not None and after is not None
    assert after["attempts"][0]["id"] == before["attempts"][0]["id"]


@pytest.mark.parametrize(
    ("case", "expect"),
    [("test-delivery", "test delivery"), ("tag", "tag"), ("other-branch", "not followed"), ("replay", "")],
)
def test_ignored_and_duplicate_deliveries_deploy_nothing(world: dict[str, Any], case: str, expect: str) -> None:
    daemon, repo = world["daemon"], world["repo"]
    before = daemon.service("text-classify")
    assert before is not None
    if case == "test-delivery":  # Gitea 1.24+: all-zero shas and a fake commit
        payload = gp.push_payload(OWNER, REPO, "refs/heads/main", repo.shas[-1], repo.shas[-1], CLONE_URL,
                                  commits=[{"id": repo.shas[-1], "message": "This is a fake commit"}])
        payload.update(before=ZERO, after=ZERO)
        payload["commits"][0]["id"] = ZERO
        body = gp.encode(payload)
        response = daemon.post("/hooks/gitea", body, gp.headers(body, SECRET))
    elif case == "tag":
        response = push(daemon, repo, ZERO, repo.shas[-1], ref="refs/tags/v1")
    elif case == "other-branch":
        response = push(daemon, repo, ZERO, repo.shas[-1], ref="refs/heads/dev")
    else:
        first = push(daemon, repo, repo.shas[-3], repo.shas[-2])
        assert first.status_code in (200, 202)
        response = push(daemon, repo, repo.shas[-3], repo.shas[-2])  # a replay: new delivery id, same push
        assert response.json()["result"] == "duplicate", response.text
    assert response.status_code == 200, response.text
    assert expect in response.json()["detail"]
    time.sleep(0.5)
    after = daemon.service("text-classify")
    assert after is not None and after["running_sha"] == before["running_sha"]


def final_status(gitea: GiteaStandIn, sha: str, timeout: float = 30) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        rows = gitea.statuses(f"{OWNER}/{REPO}", sha)
        return rows[-1] if rows and rows[-1]["status"] != "pending" else None

    return wait_for(check, timeout, f"a final commit status on {sha[:7]}")


def test_commit_statuses_reach_gitea(world: dict[str, Any]) -> None:
    gitea, repo = world["gitea"], world["repo"]
    first = gitea.statuses(f"{OWNER}/{REPO}", repo.shas[0])
    assert [row["status"] for row in first][:1] == ["pending"] and first[-1]["status"] == "success"
    assert first[-1]["context"] == "deployer/text-classify"
    assert first[-1]["target_url"].endswith("/services/text-classify")
    assert first[-1]["description"].startswith("ReconciliationSucceeded")
    broken = final_status(gitea, repo.shas[3])  # the broken manifest
    assert broken["status"] == "failure" and broken["description"].startswith("ManifestInvalid")
    unhealthy = final_status(gitea, repo.shas[5])
    assert unhealthy["status"] == "failure" and unhealthy["description"].startswith("HealthCheckFailed")
    posts = gitea.requests("POST")
    assert posts and all(SECRET not in str(seen) for seen in posts)


def test_gitea_outage_never_blocks_a_deploy(world: dict[str, Any]) -> None:
    gitea, repo, daemon = world["gitea"], world["repo"], world["daemon"]
    gitea.down()
    try:
        server = (repo.work / "server.py").read_text().replace('"build": "two"', '"build": "three"')
        manifest = (EXAMPLE / "service.yaml").read_text()
        sha = repo.commit({"server.py": server, "service.yaml": manifest}, "deploy while gitea is down")
        started = time.monotonic()
        assert push(daemon, repo, repo.shas[-2], sha).status_code == 202
        deployed(daemon, sha)
        print(f"\npush-to-healthy with gitea down: {time.monotonic() - started:.2f}s")
        assert info(world["port"])["build"] == "three"
    finally:
        gitea.up()
    assert final_status(gitea, sha, timeout=60)["status"] == "success"


def test_status_page_and_health(world: dict[str, Any]) -> None:
    daemon = world["daemon"]
    page = daemon.get("/")
    assert page.status_code == 200 and "text-classify" in page.text
    assert SECRET not in page.text
    health = daemon.get("/healthz").json()
    assert health["status"] == "ok" and set(health["checks"]) >= {"store", "scheduler", "supervisor"}
    listing = daemon.get("/api/services").json()
    assert {"name", "source", "runtime", "state", "healthy", "port", "desired_sha", "running_sha",
            "last_attempt", "override"} <= set(listing[0])
    assert SECRET not in daemon.log()


def test_metrics_pass_promtool(world: dict[str, Any]) -> None:
    import shutil
    import subprocess

    from tests.conftest import unavailable

    text = world["daemon"].get("/metrics").text
    assert 'deployer_attempts_total{outcome="succeeded",service="text-classify"}' in text
    assert 'deployer_rollbacks_total{service="text-classify"} 1.0' in text
    assert 'deployer_webhooks_total{result="rejected"}' in text
    assert 'deployer_service_healthy{service="text-classify"} 1.0' in text
    assert "deployer_reconcile_pass_duration_seconds_bucket" in text
    promtool = shutil.which("promtool")
    if promtool is None:
        unavailable("promtool not installed: apt-get install prometheus")
    checked = subprocess.run([str(promtool), "check", "metrics"], input=text, capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
