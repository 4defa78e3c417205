"""End to end, the operator's way: a local repo followed through [[sources]] (the poll
path, no Gitea), the CLI against the running daemon, history, diff, rollback with a
pin that holds across new commits, suspend/resume, and drift healed by the interval.

One daemon serves the module, but no test relies on another having run: each starts
from ``following`` (no pin or suspension, the branch head's version serving) or makes
its own revisions, with model versions unique in the session.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers import (
    EXAMPLE,
    Daemon,
    GitRepo,
    local_source,
    queue_drained,
    start_daemon,
    stop_supervisord,
    wait_for,
    write_config,
)

TOKEN = "operator-api-token"
VERSIONS = itertools.count(2)  # "1.0" is the first commit's


def manifest(version: str) -> str:
    return (EXAMPLE / "service.yaml").read_text().replace('MODEL_VERSION: "1.0"', f'MODEL_VERSION: "{version}"')


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("operator")
    repo = GitRepo.create(root / "repo.git", root / "work")
    files = repo.copy_tree(EXAMPLE)
    files["service.yaml"] = manifest("1.0")
    repo.commit(files, "v1")
    config, _ = write_config(root, sources=local_source("models"))
    daemon = start_daemon(config, root / "state", env={"DEPLOYER_API_TOKEN": TOKEN})
    try:
        yield {"root": root, "repo": repo, "daemon": daemon, "startup": serving(daemon, "1.0")}
    finally:
        daemon.stop()
        stop_supervisord(root / "state")


def cli(world: dict[str, Any], *args: str, token: str | None = TOKEN) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("DEPLOYER_")}
    if token is not None:
        env["DEPLOYER_API_TOKEN"] = token
    return subprocess.run([sys.executable, "-m", "deployer", *args, "--url", world["daemon"].url],
                          cwd=world["root"], env=env, capture_output=True, text=True, timeout=120)


def serving(daemon: Daemon, version: str, timeout: float = 60) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        service = daemon.service("text-classify")
        if not service or not service["healthy"] or not service["port"]:
            return None
        if not service["last_attempt"] or service["last_attempt"]["outcome"] == "running":
            return None
        info = httpx.get(f"http://127.0.0.1:{service['port']}/info", timeout=2).json()
        return service if info["version"] == version else None

    return wait_for(check, timeout, f"text-classify serving version {version}")


def next_version() -> str:
    return f"{next(VERSIONS)}.0"


def head_version(repo: GitRepo) -> str:
    found = re.search(r'MODEL_VERSION: "([^"]+)"', (repo.work / "service.yaml").read_text())
    assert found is not None
    return found.group(1)


def following(world: dict[str, Any]) -> dict[str, Any]:
    """The state most tests start from, made idempotently: no pin or suspension, and the
    version at the branch head serving (a pass is asked for, so it is fetched)."""
    service = world["daemon"].service("text-classify")
    if service and service["override"]:
        for action in ("unpin", "resume"):
            done = cli(world, action, "text-classify")
            assert done.returncode == 0, done.stdout + done.stderr
    done = cli(world, "reconcile", "text-classify")
    assert done.returncode == 0, done.stdout + done.stderr
    queue_drained(world["daemon"])  # that pass, and any asked for before it, is over
    return serving(world["daemon"], head_version(world["repo"]))


def deploy_version(world: dict[str, Any], version: str, message: str) -> tuple[str, dict[str, Any]]:
    """Commit ``version``, ask for a pass, wait until it serves: its commit and the service."""
    following(world)
    sha = world["repo"].commit({"service.yaml": manifest(version)}, message)
    done = cli(world, "reconcile", "text-classify")
    assert done.returncode == 0, done.stdout + done.stderr
    return sha, serving(world["daemon"], version)


def test_startup_poll_deploys_the_local_repo(world: dict[str, Any]) -> None:
    service = world["startup"]  # as the daemon first served it (the fixture waited for that)
    assert service["source"] == "models" and service["running_sha"] == world["repo"].shas[0]
    assert service["last_attempt"]["trigger"] == "startup", service["last_attempt"]


def test_reconcile_history_and_diff(world: dict[str, Any]) -> None:
    repo, daemon = world["repo"], world["daemon"]
    previous = following(world)
    old, version = head_version(repo), next_version()
    sha = repo.commit({"service.yaml": manifest(version)}, f"v{version}: new model version")
    done = cli(world, "reconcile", "text-classify")
    assert done.returncode == 0, done.stderr
    assert "pass requested for models" in done.stdout
    serving(daemon, version)

    history = cli(world, "history", "text-classify")
    assert history.returncode == 0, history.stderr
    lines = history.stdout.splitlines()
    assert lines[0].split() == ["REV", "COMMIT", "AUTHOR", "WHEN", "OUTCOME", "MESSAGE"]
    assert sha[:7] in lines[1] and "succeeded" in lines[1] and f"v{version}: new model version" in lines[1]
    assert previous["running_sha"][:7] in lines[2]

    diff = cli(world, "diff", "text-classify")
    assert diff.returncode == 0, diff.stderr
    assert f"~ env.MODEL_VERSION: {old} -> {version}" in diff.stdout
    as_json = cli(world, "diff", "text-classify", "--json")
    assert any(change["path"] == "env.MODEL_VERSION" for change in json.loads(as_json.stdout)["changes"])

    page = daemon.get("/services/text-classify")
    newest = page.text.split("<h3>Revisions</h3>")[1].split("</li>")[0]  # the timeline, newest first
    assert 'class="running desired"' in newest and "env.MODEL_VERSION" in newest, newest
    assert f"v{version}: new model version" in newest and old in newest


def test_rollback_pins_and_the_pin_holds_across_new_commits(world: dict[str, Any]) -> None:
    repo, daemon = world["repo"], world["daemon"]
    good, bad = next_version(), next_version()
    good_sha, _ = deploy_version(world, good, "a good model version")
    deploy_version(world, bad, "a model version that mislabels reviews")
    done = cli(world, "rollback", "text-classify", "--why", "v2 mislabels reviews")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "succeeded" in done.stdout and "health" in done.stdout  # steps shown as they happen
    service = serving(daemon, good)
    assert service["override"] == "pinned" and service["running_sha"] == good_sha
    assert service["overrides"][0]["who"].count("@") == 1 and service["overrides"][0]["why"] == "v2 mislabels reviews"

    newer = next_version()
    repo.commit({"service.yaml": manifest(newer)}, "a commit the pin holds back")
    assert cli(world, "reconcile").returncode == 0
    queue_drained(daemon)  # the pass it asked for has fetched the commit and decided
    assert httpx.get(f"http://127.0.0.1:{service['port']}/info", timeout=2).json()["version"] == good
    plan = cli(world, "plan")
    assert plan.returncode == 0, plan.stdout  # pinned: nothing pending
    status = cli(world, "status")
    assert "pinned" in status.stdout
    page = daemon.get("/services/text-classify").text
    assert "pinned" in page and "v2 mislabels reviews" in page

    unpinned = cli(world, "unpin", "text-classify")  # follows the pass it asked for: it deploys the head
    assert unpinned.returncode == 0, unpinned.stdout + unpinned.stderr
    assert "succeeded" in unpinned.stdout and "health" in unpinned.stdout, unpinned.stdout
    serving(daemon, newer)


def test_suspend_leaves_the_service_alone_until_resumed(world: dict[str, Any]) -> None:
    repo, daemon = world["repo"], world["daemon"]
    following(world)
    version = head_version(repo)
    suspended = cli(world, "suspend", "text-classify", "--why", "load test")
    assert suspended.returncode == 0, suspended.stdout + suspended.stderr
    assert "text-classify suspended" in suspended.stdout and "noop" in suspended.stdout, suspended.stdout
    newer = next_version()
    repo.commit({"service.yaml": manifest(newer)}, "a commit the suspension leaves alone")
    assert cli(world, "reconcile").returncode == 0
    queue_drained(daemon)  # the pass it asked for has fetched the commit and decided
    service = daemon.service("text-classify")
    assert service is not None and service["override"] == "suspended"
    assert httpx.get(f"http://127.0.0.1:{service['port']}/info", timeout=2).json()["version"] == version
    plan = cli(world, "plan", "--json")
    actions = json.loads(plan.stdout)["actions"]
    assert any("suspended by" in action["reason"] and "would update" in action["reason"] for action in actions)
    page = daemon.get("/services/text-classify").text
    assert "suspended" in page and "load test" in page

    resumed = cli(world, "resume", "text-classify")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "succeeded" in resumed.stdout, resumed.stdout  # the deploy of the commit held back meanwhile
    serving(daemon, newer)
    assert cli(world, "plan").returncode == 0


def test_program_stopped_by_hand_is_healed_and_recorded_as_drift(world: dict[str, Any]) -> None:
    daemon, root = world["daemon"], world["root"]
    before = following(world)
    conf = root / "state" / "supervisor" / "supervisord.conf"
    ctl = Path(sys.executable).parent / "supervisorctl"
    stopped = subprocess.run([str(ctl), "-c", str(conf), "stop", "text-classify"], capture_output=True, text=True)
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    started = time.monotonic()

    def healed() -> dict[str, Any] | None:
        service = daemon.service("text-classify")
        newest = service["attempts"][0] if service else None
        ok = newest and newest["id"] > before["attempts"][0]["id"] and newest["outcome"] == "succeeded"
        return newest if ok and service and service["healthy"] else None

    attempt = wait_for(healed, 30, "the stopped program to be started again")
    print(f"\ndrift healed in {time.monotonic() - started:.2f}s (interval 1s)")
    assert attempt["trigger"] == "drift" and attempt["reason"] == "DriftCorrected"
    assert "DriftCorrected" in daemon.get("/services/text-classify").text


def test_supervisord_sigkilled_is_restarted_and_orphans_reaped(world: dict[str, Any]) -> None:
    import signal

    daemon, root = world["daemon"], world["root"]
    before = following(world)
    version = head_version(world["repo"])
    pid = int((root / "state" / "supervisor" / "supervisord.pid").read_text())
    os.kill(pid, signal.SIGKILL)  # its program keeps running as an orphan holding the port
    started = time.monotonic()

    def back() -> bool:
        new_pid = int((root / "state" / "supervisor" / "supervisord.pid").read_text())
        service = daemon.service("text-classify")
        return new_pid != pid and bool(service and service["healthy"] and service["state"] == "running")

    wait_for(back, 60, "a new supervisord running the service")
    print(f"\nsupervisord SIGKILL healed in {time.monotonic() - started:.2f}s")
    info = httpx.get(f"http://127.0.0.1:{before['port']}/info", timeout=2).json()
    assert info["version"] == version


def test_program_file_deleted_by_hand_is_rewritten(world: dict[str, Any]) -> None:
    daemon, root = world["daemon"], world["root"]
    following(world)
    programs = root / "state" / "supervisor" / "programs"
    program = next(programs.glob("text-classify*.conf"))
    original = program.read_text()
    program.unlink()
    wait_for(lambda: program.exists() and program.read_text() == original, 30, "the program file to come back")
    wait_for(lambda: (s := daemon.service("text-classify")) and s["healthy"], 30, "healthy again")


def test_api_token_is_required_for_actions(world: dict[str, Any]) -> None:
    wrong = cli(world, "suspend", "text-classify", token="not-the-token")
    assert wrong.returncode == 1 and "HTTP 401" in wrong.stderr
    missing = cli(world, "reconcile", token=None)
    assert missing.returncode == 1 and "HTTP 401" in missing.stderr
    unknown = cli(world, "pin", "no-such-service")
    assert unknown.returncode == 1 and "no service named 'no-such-service'" in unknown.stderr
    down = subprocess.run([sys.executable, "-m", "deployer", "status", "--url", "http://127.0.0.1:9"],
                          capture_output=True, text=True, timeout=60)
    assert down.returncode == 1 and "cannot reach the daemon" in down.stderr and "Traceback" not in down.stderr


def test_unknown_names_are_404_whichever_route_meets_them(world: dict[str, Any]) -> None:
    daemon, auth = world["daemon"], {"Authorization": f"Bearer {TOKEN}"}
    unknown = {"error": "no service named 'nope'"}
    for path in ("/api/services/nope", "/api/services/nope/demos"):
        response = daemon.get(path)
        assert (response.status_code, response.json()) == (404, unknown), path
    logs = httpx.get(f"{daemon.url}/api/services/nope/logs", headers=auth, timeout=10)
    assert (logs.status_code, logs.json()) == (404, unknown)
    for path, body in (("/api/services/nope/pin", b"{}"), ("/api/reconcile", b'{"service": "nope"}')):
        response = daemon.post(path, body, auth)
        assert (response.status_code, response.json()) == (404, unknown), path
    diff = daemon.get("/api/services/text-classify/diff?b=999999")
    assert diff.status_code == 404 and "no such revision" in diff.json()["error"]
    # A service that exists but cannot be pinned as asked is a conflict, not a 404.
    bad_pin = daemon.post("/api/services/text-classify/pin", b'{"revision": 999999}', auth)
    assert bad_pin.status_code == 409 and "is not one of its revisions" in bad_pin.json()["error"]


def test_unknown_service_page_is_404(world: dict[str, Any]) -> None:
    missing = world["daemon"].get("/services/nope")
    assert missing.status_code == 404 and "nope" in missing.text


def test_logs_plan_pending_and_validate(world: dict[str, Any]) -> None:
    following(world)
    logs = cli(world, "logs", "text-classify", "--bytes", "2000")
    assert logs.returncode == 0 and "text-classify listening on 127.0.0.1:" in logs.stdout
    assert cli(world, "logs", "nope").returncode == 1

    world["repo"].commit({"service.yaml": manifest(next_version())}, "a new version, not reconciled yet")
    pending = cli(world, "plan", "text-classify")
    assert pending.returncode == 2, pending.stdout + pending.stderr
    assert "update" in pending.stdout and "spec changed" in pending.stdout
    detail = world["daemon"].service("text-classify")
    assert detail is not None and detail["detail"] != "" and "observed_at" in detail

    def local(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "deployer", *args], cwd=world["root"], capture_output=True,
                              text=True, timeout=60)

    valid = local("validate", str(world["repo"].work))
    assert valid.returncode == 0 and "ok (1 service: text-classify)" in valid.stdout
    (world["root"] / "bad.yaml").write_text("name: Bad Name\nport: 1\n")
    invalid = local("validate", str(world["root"] / "bad.yaml"))
    assert invalid.returncode == 1
    assert "bad.yaml:1:7: name:" in invalid.stderr and "bad.yaml:2:7: port:" in invalid.stderr
    schema = subprocess.run([sys.executable, "-m", "deployer", "schema"], capture_output=True, text=True)
    assert schema.returncode == 0 and '"$schema"' in schema.stdout
