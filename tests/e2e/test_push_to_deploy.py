"""End to end: the daemon under uvicorn on loopback, a real supervisord, real git
repositories, and signed webhooks in Gitea's exact format.

One daemon serves the whole module (a deploy takes seconds), but no test relies on
another having run: each first establishes the state it needs (``serving_example``
puts the example service back at the branch head, idempotently, and waits until it
serves) and then changes it. A test that asserts that something did *not* happen
first waits for a marker that the daemon has dealt with its input (the delivery's
audit row, a drained work queue, further finished passes).
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
    git,
    make_wheel,
    metric,
    more_passes,
    queue_drained,
    start_daemon,
    stop_supervisord,
    wait_for,
    write_config,
)

SECRET = "e2e-webhook-secret"
OWNER, REPO = "acme", "text-classify"
SOURCE = f"{OWNER}/{REPO}"
# The payload's clone_url points at an address deployer cannot reach, as Gitea's ROOT_URL
# often does; deployer must clone from [gitea] url instead.
CLONE_URL = f"http://gitea.invalid:3000/{OWNER}/{REPO}.git"
ZERO = "0" * 40
BROKEN_MANIFEST = "name: text-classify\ncommand: python server.py\nport: 80\nbogus: 1\n"
Files = dict[str, str | bytes | None]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("e2e")
    repo = GitRepo.create(root / "gitea" / OWNER / f"{REPO}.git", root / "work")
    gitea = GiteaStandIn()
    gitea.up()
    known = gitea.add_repo(OWNER, REPO, [])
    repo.on_commit = known.shas.append
    gitea_section = (f'[gitea]\nurl = "{gitea.url}"\nclone_base = "file://{root}/gitea"\n'
                     f'allowed_owners = ["{OWNER}"]\n')
    config, _ = write_config(root, extra=gitea_section)
    daemon = start_daemon(config, root / "state",
                          env={"DEPLOYER_WEBHOOK_SECRET": SECRET, "DEPLOYER_GITEA_TOKEN": gitea.token})
    try:
        yield {"root": root, "repo": repo, "daemon": daemon, "gitea": gitea}
    finally:
        daemon.stop()
        stop_supervisord(root / "state")
        gitea.stop()


# -- pushing ------------------------------------------------------------------


def push(daemon: Daemon, repo: GitRepo, before: str, after: str, *, content_type: str = "json",
         ref: str = "refs/heads/main", secret: str = SECRET, event: str = "push",
         delivery: str | None = None) -> httpx.Response:
    payload = gp.push_payload(OWNER, REPO, ref, before, after, CLONE_URL,
                              commits=[{"id": after, "message": "update"}] if after != ZERO else [])
    body = gp.encode(payload)
    headers = gp.headers(body, secret, content_type=content_type, event=event, delivery=delivery or str(uuid.uuid4()))
    return daemon.post("/hooks/gitea", gp.wire_body(body, content_type), headers)


def head(repo: GitRepo) -> str:
    return repo.shas[-1] if repo.shas else ZERO


def commit_and_push(world: dict[str, Any], files: Files, message: str, content_type: str = "json") -> str:
    """Commit, push to the branch, and deliver the webhook, which must be accepted."""
    repo = world["repo"]
    before = head(repo)
    sha = repo.commit(files, message)
    response = push(world["daemon"], repo, before, sha, content_type=content_type)
    assert response.status_code == 202, response.text
    return sha


def commit_unannounced(world: dict[str, Any]) -> str:
    """A new revision on the branch that no webhook announces: only a pass that fetches would deploy it.

    A test that asserts "this delivery deploys nothing" commits one first, so that a
    delivery that wrongly asked for a pass would deploy it and fail the test.
    """
    return world["repo"].commit({"NOTE": f"unannounced {uuid.uuid4()}\n"}, "not announced by any webhook")


def example_tree(repo: GitRepo, note: str | None = None) -> Files:
    """The example service exactly (every other tracked file removed), plus a NOTE file if given."""
    files: Files = {name: None for name in git(repo.work, "ls-files").splitlines()}
    files.update(repo.copy_tree(EXAMPLE))
    if note is not None:
        files["NOTE"] = note
    return files


def _differs(repo: GitRepo, files: Files) -> bool:
    for name, content in files.items():
        path = repo.work / name
        if content is None:
            if path.exists():
                return True
        elif not path.is_file() or path.read_bytes() != (content.encode() if isinstance(content, str) else content):
            return True
    return False


def serving_example(world: dict[str, Any], note: str | None = None) -> dict[str, Any]:
    """The example service (with ``note``, a new revision) at the branch head, served healthy; returns it.

    Idempotent: it commits only when the head differs and waits by content, for the
    running commit's tree to be the head's, because a commit that restores what an
    earlier revision held is rightly not deployed again. It returns once the work queue
    has drained, so no pass its webhook asked for is still to come.
    """
    daemon, repo = world["daemon"], world["repo"]
    files = example_tree(repo, note)
    before = head(repo)
    if before == ZERO or _differs(repo, files):
        repo.commit(files, "the example service" + (f" ({note})" if note else ""))
    sha = head(repo)
    response = push(daemon, repo, before if before != sha else ZERO, sha)  # before == after is a test delivery
    assert response.json()["result"] in ("accepted", "duplicate"), response.text
    tree = git(repo.work, "rev-parse", "HEAD^{tree}")

    def check() -> dict[str, Any] | None:
        service = daemon.service("text-classify")
        if not service or not service["healthy"] or not service["running_sha"] or not service["last_attempt"]:
            return None
        if service["last_attempt"]["outcome"] == "running":
            return None
        return service if git(repo.work, "rev-parse", f"{service['running_sha']}^{{tree}}") == tree else None

    wait_for(check, 90, "the example service at the branch head, healthy")
    queue_drained(daemon)
    service = daemon.service("text-classify")
    assert service is not None
    return service


# -- waiting ------------------------------------------------------------------


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


def newest_attempt_id(daemon: Daemon) -> int:
    service = daemon.service("text-classify")
    assert service is not None and service["attempts"], service
    return int(service["attempts"][0]["id"])


def audited(daemon: Daemon, delivery: str) -> str | None:
    """The result the webhook audit recorded for ``delivery``; None until its row is written."""
    page = daemon.get("/deliveries?live=0").text
    row = next((row for row in page.split("<tr id=")[1:] if f'title="{delivery}"' in row), None)
    if row is None:
        return None
    return next((result for result in ("accepted", "duplicate", "ignored", "rejected") if f">{result}<" in row), None)


def processed(daemon: Daemon, delivery: str, result: str) -> None:
    """The positive marker before asserting that a delivery changed nothing: it is in the
    audit with ``result``, and every pass requested until then has finished."""
    wait_for(lambda: audited(daemon, delivery) == result, 30, f"delivery {delivery[:8]} audited as {result}")
    queue_drained(daemon)


def push_unhealthy(world: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """Push a revision whose health check never passes; its finished attempt. The model
    version is new each time: a spec that failed once is held, not tried again."""
    daemon = world["daemon"]
    queue_drained(daemon)
    previous = newest_attempt_id(daemon)
    manifest = (EXAMPLE / "service.yaml").read_text().replace(
        "path: /health\n  timeout: 30", "path: /healthz\n  timeout: 3").replace(
        'MODEL_VERSION: "1.0"', f'MODEL_VERSION: "unhealthy-{uuid.uuid4().hex[:8]}"')
    sha = commit_and_push(world, {"service.yaml": manifest}, "health path that never answers 200")
    return sha, last_attempt_after(daemon, previous)


def info(port: int) -> dict[str, Any]:
    response = httpx.get(f"http://127.0.0.1:{port}/info", timeout=5)
    response.raise_for_status()
    return response.json()  # type: ignore[no-any-return]


def final_status(gitea: GiteaStandIn, sha: str, timeout: float = 30) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        rows = gitea.statuses(SOURCE, sha)
        return rows[-1] if rows and rows[-1]["status"] != "pending" else None

    return wait_for(check, timeout, f"a final commit status on {sha[:7]}")


def with_build(repo: GitRepo, build: str) -> str:
    """server.py reporting ``build`` in /info: a code-only change."""
    server = (repo.work / "server.py").read_text()
    changed = server.replace('"labels": list(LABELS),', f'"labels": list(LABELS), "build": "{build}",')
    assert changed != server, "server.py no longer has the line this test edits"
    return changed


# -- the tests ----------------------------------------------------------------


def test_signed_push_deploys_the_example_service(world: dict[str, Any]) -> None:
    daemon, repo = world["daemon"], world["repo"]
    before = head(repo)
    # A NOTE file makes this a new revision whatever ran before; the service is the example's.
    sha = repo.commit(example_tree(repo, note=f"deployed by a signed push {uuid.uuid4()}\n"), "example service")

    started = time.monotonic()
    response = push(daemon, repo, before, sha)
    acked = time.monotonic() - started
    assert response.status_code == 202, response.text
    assert response.json()["result"] == "accepted"
    assert acked < 1.0, f"webhook took {acked:.3f}s to answer"

    service = deployed(daemon, sha)
    print(f"\npush-to-healthy (example service, empty requirements): {time.monotonic() - started:.2f}s")
    assert service["state"] == "running" and service["desired_sha"] == sha
    assert service["source"] == SOURCE and service["runtime"] == "supervisor"
    port = service["port"]
    predict = httpx.post(f"http://127.0.0.1:{port}/predict", json={"text": "excellent, I love it"}, timeout=5)
    assert predict.status_code == 200 and predict.json()["label"] == "positive"

    attempt = service["attempts"][0]
    assert attempt["outcome"] == "succeeded" and attempt["reason"] == "ReconciliationSucceeded"
    assert [step["name"] for step in attempt["steps"]] == ["checkout", "build", "apply", "health", "demo"]
    assert all(step["ok"] for step in attempt["steps"])
    revision = service["revisions"][0]
    assert revision["sha"] == sha and revision["author"].startswith("Ada Dev")


def test_code_only_push_redeploys_without_reinstalling(world: dict[str, Any]) -> None:
    daemon, repo = world["daemon"], world["repo"]
    before = serving_example(world)
    build = f"code-only-{uuid.uuid4().hex[:8]}"
    started = time.monotonic()
    sha = commit_and_push(world, {"server.py": with_build(repo, build)}, "code only: report the build in /info",
                          content_type="form")
    service = deployed(daemon, sha)
    print(f"\npush-to-healthy (code-only change): {time.monotonic() - started:.2f}s")

    step = next(step for step in service["attempts"][0]["steps"] if step["name"] == "build")
    assert "\nreused environment " in step["output"], step
    assert service["port"] == before["port"], "auto port must be sticky across redeploys"
    assert info(service["port"])["build"] == build


def test_requirements_change_builds_a_new_environment(world: dict[str, Any]) -> None:
    daemon, repo = world["daemon"], world["repo"]
    before = serving_example(world)
    version = f"0.1.{uuid.uuid4().int % 10**6}"  # requirements no earlier run of this test has built
    make_wheel(repo.work / "wheels", "tinylexicon", version, "BONUS = {'superb': 2.5}\n")
    server = (repo.work / "server.py").read_text().replace(
        "STARTED = time.time()", "from tinylexicon import BONUS\nLEXICON.update(BONUS)\nSTARTED = time.time()")
    started = time.monotonic()
    sha = commit_and_push(world, {
        "requirements.txt": f"--no-index\n--find-links wheels\ntinylexicon=={version}\n",
        "server.py": server,
    }, "use the tinylexicon package")
    service = deployed(daemon, sha, timeout=180)
    print(f"\npush-to-healthy (requirements change): {time.monotonic() - started:.2f}s")

    build = next(step for step in service["attempts"][0]["steps"] if step["name"] == "build")
    assert build["output"].startswith("dependencies from requirements.txt;"), build
    assert "reused environment" not in build["output"], build
    predict = httpx.post(f"http://127.0.0.1:{before['port']}/predict", json={"text": "superb"}, timeout=5)
    assert predict.json()["label"] == "positive"


def test_broken_manifest_keeps_the_previous_revision_serving(world: dict[str, Any]) -> None:
    daemon = world["daemon"]
    good = serving_example(world)
    commit_and_push(world, {"service.yaml": BROKEN_MANIFEST}, "broken manifest")
    attempt = last_attempt_after(daemon, good["attempts"][0]["id"])
    assert attempt["outcome"] == "failed" and attempt["reason"] == "ManifestInvalid"
    assert "service.yaml:3:7: port: must be between" in attempt["message"], attempt["message"]
    assert "unknown key 'bogus'" in attempt["message"]
    service = daemon.service("text-classify")
    assert service is not None and service["running_sha"] == good["running_sha"]
    assert httpx.get(f"http://127.0.0.1:{good['port']}/health", timeout=5).status_code == 200


def test_unhealthy_revision_is_rolled_back(world: dict[str, Any]) -> None:
    daemon = world["daemon"]
    before = serving_example(world)
    version = info(before["port"])["version"]
    _, attempt = push_unhealthy(world)
    assert attempt["outcome"] == "rolled_back", attempt
    assert attempt["reason"] == "HealthCheckFailed"
    assert attempt["rolled_back_to"] == before["running_revision"]
    names = [step["name"] for step in attempt["steps"]]
    assert "health" in names and names[-2:] == ["rollback-health", "rollback-demo"]
    service = daemon.service("text-classify")
    assert service is not None and service["healthy"] and service["running_revision"] == before["running_revision"]
    assert info(before["port"])["version"] == version  # the old process answers, not the unhealthy one

    # The periodic reconcile must not re-apply the commit that failed: let two passes finish, then look.
    more_passes(daemon, SOURCE)
    again = daemon.service("text-classify")
    assert again is not None and again["attempts"][0]["id"] == attempt["id"]


@pytest.mark.parametrize(
    ("case", "status"),
    [("bad-signature", 401), ("no-signature", 401), ("oversize", 413), ("malformed", 400),
     ("wrong-event", 400), ("unknown-owner", 403)],
)
def test_bad_deliveries_are_refused_and_change_nothing(world: dict[str, Any], case: str, status: int) -> None:
    daemon = world["daemon"]
    before = serving_example(world)
    pending = commit_unannounced(world)
    delivery = str(uuid.uuid4())
    payload = gp.push_payload(OWNER, REPO, "refs/heads/main", before["running_sha"], pending, CLONE_URL)
    if case == "unknown-owner":
        payload = gp.push_payload("mallory", REPO, "refs/heads/main", before["running_sha"], pending,
                                  f"http://gitea.invalid:3000/mallory/{REPO}.git")
    body = gp.encode(payload)
    headers = gp.headers(body, SECRET, event="issues" if case == "wrong-event" else "push", delivery=delivery)
    if case == "bad-signature":
        headers = gp.headers(body, "not-the-secret", delivery=delivery)
    elif case == "no-signature":
        headers = {key: value for key, value in headers.items() if "Signature" not in key}
    elif case == "oversize":
        body = b"{" + b" " * (1024 * 1024 + 10) + b"}"
    elif case == "malformed":
        body = b'{"ref": "refs/heads/main", "after": '
        headers = gp.headers(body, SECRET, delivery=delivery)
    response = daemon.post("/hooks/gitea", body, headers)
    assert response.status_code == status, response.text
    assert response.json()["result"] == "rejected"
    processed(daemon, delivery, "rejected")
    after = daemon.service("text-classify")
    assert after is not None and after["running_sha"] == before["running_sha"]
    assert after["attempts"][0]["id"] == before["attempts"][0]["id"]


@pytest.mark.parametrize(
    ("case", "expect"),
    [("test-delivery", "test delivery"), ("tag", "tag"), ("other-branch", "not followed"),
     ("replay", "already accepted")],
)
def test_ignored_and_duplicate_deliveries_deploy_nothing(world: dict[str, Any], case: str, expect: str) -> None:
    daemon, repo = world["daemon"], world["repo"]
    before = serving_example(world)
    pending = commit_unannounced(world)
    delivery = str(uuid.uuid4())
    if case == "test-delivery":  # Gitea 1.24+: all-zero shas and a fake commit
        payload = gp.push_payload(OWNER, REPO, "refs/heads/main", pending, pending, CLONE_URL,
                                  commits=[{"id": pending, "message": "This is a fake commit"}])
        payload.update(before=ZERO, after=ZERO)
        payload["commits"][0]["id"] = ZERO
        body = gp.encode(payload)
        response = daemon.post("/hooks/gitea", body, gp.headers(body, SECRET, delivery=delivery))
    elif case == "tag":
        response = push(daemon, repo, ZERO, pending, ref="refs/tags/v1", delivery=delivery)
    elif case == "other-branch":
        response = push(daemon, repo, ZERO, pending, ref="refs/heads/dev", delivery=delivery)
    else:
        announced = before["running_sha"]
        first = push(daemon, repo, announced, pending)
        assert first.json()["result"] == "accepted", first.text
        before = deployed(daemon, pending)
        queue_drained(daemon)
        commit_unannounced(world)
        response = push(daemon, repo, announced, pending, delivery=delivery)  # a replay: new delivery id, same push
    result = "duplicate" if case == "replay" else "ignored"
    assert response.status_code == 200, response.text
    assert response.json()["result"] == result and expect in response.json()["detail"], response.text
    processed(daemon, delivery, result)
    after = daemon.service("text-classify")
    assert after is not None and after["running_sha"] == before["running_sha"]
    assert after["attempts"][0]["id"] == before["attempts"][0]["id"]


def test_commit_statuses_reach_gitea(world: dict[str, Any]) -> None:
    gitea = world["gitea"]
    good = serving_example(world, note=f"a fresh deploy to report {uuid.uuid4()}\n")
    success = final_status(gitea, good["running_sha"])
    assert gitea.statuses(SOURCE, good["running_sha"])[0]["status"] == "pending" and success["status"] == "success"
    assert success["context"] == "deployer/text-classify"
    assert success["target_url"].endswith("/services/text-classify")
    assert success["description"].startswith("ReconciliationSucceeded")

    broken = final_status(gitea, commit_and_push(world, {"service.yaml": BROKEN_MANIFEST}, "broken manifest"))
    assert broken["status"] == "failure" and broken["description"].startswith("ManifestInvalid")
    unhealthy = final_status(gitea, push_unhealthy(world)[0])
    assert unhealthy["status"] == "failure" and unhealthy["description"].startswith("HealthCheckFailed")
    posts = gitea.requests("POST")
    assert posts and all(SECRET not in str(seen) for seen in posts)


def test_gitea_outage_never_blocks_a_deploy(world: dict[str, Any]) -> None:
    gitea, repo, daemon = world["gitea"], world["repo"], world["daemon"]
    before = serving_example(world)
    build = f"outage-{uuid.uuid4().hex[:8]}"
    gitea.down()
    try:
        started = time.monotonic()
        sha = commit_and_push(world, {"server.py": with_build(repo, build)}, "deploy while gitea is down")
        deployed(daemon, sha)
        print(f"\npush-to-healthy with gitea down: {time.monotonic() - started:.2f}s")
        assert info(before["port"])["build"] == build
    finally:
        gitea.up()
    assert final_status(gitea, sha, timeout=60)["status"] == "success"


def test_status_page_and_health(world: dict[str, Any]) -> None:
    daemon = world["daemon"]
    serving_example(world)
    page = daemon.get("/")
    assert page.status_code == 200 and "text-classify" in page.text
    assert SECRET not in page.text
    assert "last delivery" in page.text and "polled only" not in page.text  # the source's webhook delivers
    health = daemon.get("/healthz").json()
    assert health["status"] == "ok" and set(health["checks"]) >= {"store", "scheduler", "supervisor"}
    listing = daemon.get("/api/services").json()
    assert {"name", "source", "runtime", "state", "healthy", "port", "desired_sha", "running_sha",
            "last_attempt", "override"} <= set(listing[0])
    assert SECRET not in daemon.log()


def test_metrics_count_and_pass_promtool(world: dict[str, Any]) -> None:
    import shutil
    import subprocess

    from tests.conftest import unavailable

    daemon = world["daemon"]
    serving_example(world)
    before = daemon.get("/metrics").text
    rejected = push(daemon, world["repo"], ZERO, head(world["repo"]), secret="not-the-secret")
    assert rejected.status_code == 401
    assert push_unhealthy(world)[1]["outcome"] == "rolled_back"
    queue_drained(daemon)  # the attempt is stored a moment before it is counted
    wait_for(lambda: metric(daemon.get("/metrics").text, "deployer_service_healthy", service="text-classify") == 1,
             30, "text-classify healthy again in the metrics")

    text = daemon.get("/metrics").text

    def grew(name: str, **labels: str) -> float:
        return (metric(text, name, **labels) or 0) - (metric(before, name, **labels) or 0)

    assert grew("deployer_rollbacks_total", service="text-classify") == 1  # counted once per rollback
    assert grew("deployer_webhooks_total", result="rejected") == 1
    assert (metric(text, "deployer_attempts_total", outcome="succeeded", service="text-classify") or 0) >= 1
    assert "deployer_reconcile_pass_duration_seconds_bucket" in text
    promtool = shutil.which("promtool")
    if promtool is None:
        unavailable("promtool not installed: apt-get install prometheus")
    checked = subprocess.run([str(promtool), "check", "metrics"], input=text, capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
