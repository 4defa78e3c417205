"""The status pages in a real headless Chromium, with real data from a real deploy.

One daemon follows a local monorepo (``[[sources]]`` named ``acme/models``, so
commits link to Gitea) holding two services: the example text-classify, with a
secret and an env value full of HTML, and sentiment-next, whose health path
does not exist, so it fails and the overview must say so. Deliveries come as
signed webhooks in Gitea's format. Screenshots go to ``test-output/`` (and the
overview to ``docs/overview.png`` with ``DEPLOYER_UPDATE_SCREENSHOT=1``).

One daemon serves the module, but no test relies on another having run: each first
waits for (or restores) the state it reads, and makes its own deliveries and commits.
"""

from __future__ import annotations

import html
import itertools
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import gitea_payloads as gp
from tests.browser import Browser, find, text_of
from tests.helpers import (
    EXAMPLE,
    ROOT,
    Daemon,
    GitRepo,
    local_source,
    start_daemon,
    stop_supervisord,
    wait_for,
    write_config,
)

OUTPUT = ROOT / "test-output"
DOCS_SHOT = ROOT / "docs" / "overview.png"
WEBHOOK_SECRET = "pages-webhook-secret-9f3a"
HF_TOKEN = "hf_pagesSecretValue_7Qx2"
GITEA = "http://gitea.example:3000"
OWNER, NAME = "acme", "models"
HOSTILE = "<script>alert(1)</script>"
ZERO = "0" * 40
API_TOKEN = "pages-api-token-51c0"
SECRETS = (WEBHOOK_SECRET, HF_TOKEN, API_TOKEN)
VERSIONS = itertools.count(2)  # text-classify's model versions after the first commit's "1.0"


def manifest(version: str) -> str:
    return f"""\
services:
  - name: text-classify
    path: text-classify
    command: python server.py --port ${{PORT}}
    env:
      MODEL_NAME: lexicon-sentiment
      MODEL_VERSION: "{version}"
      RELEASE_NOTE: "{HOSTILE}"
    secrets: [HF_TOKEN]
    health: {{path: /health, timeout: 30}}
    group: text-classification
    demo:
      - {{name: short-review, input: demo/short.json}}
  - name: sentiment-next
    path: sentiment-next
    command: python server.py --port ${{PORT}}
    env: {{MODEL_NAME: lexicon-sentiment-next}}
    health: {{path: /nope, timeout: 3}}
    group: text-classification
"""


@pytest.fixture(scope="module")
def browser() -> Browser:
    return Browser.find()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, browser: Browser) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("pages")
    repo = GitRepo.create(root / "repo.git", root / "work")
    example = repo.copy_tree(EXAMPLE)
    files = {f"{folder}/{path}": data for folder in ("text-classify", "sentiment-next")
             for path, data in example.items() if path != "service.yaml"}
    repo.commit({**files, "service.yaml": manifest("1.0")}, "Add text-classify and sentiment-next")
    state = root / "state"
    (state / "secrets").mkdir(parents=True)
    (state / "secrets" / "HF_TOKEN").write_text(HF_TOKEN + "\n")
    config, _ = write_config(root, sources=local_source(f"{OWNER}/{NAME}"), extra=f'[gitea]\nurl = "{GITEA}"')
    daemon = start_daemon(config, state,
                          env={"DEPLOYER_WEBHOOK_SECRET": WEBHOOK_SECRET, "DEPLOYER_API_TOKEN": API_TOKEN})
    try:
        yield {"root": root, "repo": repo, "daemon": daemon}
    finally:
        daemon.stop()
        stop_supervisord(state)


def settled(daemon: Daemon, sha: str | None = None, timeout: float = 40) -> dict[str, Any]:
    """text-classify serving ``sha`` (default: its desired revision's) healthy (its snapshot is
    taken right after), sentiment-next failed."""
    def check() -> dict[str, Any] | None:
        good, bad = daemon.service("text-classify"), daemon.service("sentiment-next")
        if not good or not bad or not good["healthy"] or good["running_sha"] != (sha or good["desired_sha"]):
            return None
        finished = bad["last_attempt"] and bad["last_attempt"]["outcome"] == "failed"
        return good if finished and good["last_attempt"]["outcome"] == "succeeded" else None

    at = sha[:7] if sha else "its desired revision"
    return wait_for(check, timeout, f"text-classify at {at} and sentiment-next failed")


def push(daemon: Daemon, after: str, *, ref: str = "refs/heads/main", secret: str = WEBHOOK_SECRET,
         repo: str = NAME, before: str = ZERO) -> int:
    payload = gp.push_payload(OWNER, repo, ref, before, after, f"{GITEA}/{OWNER}/{repo}.git",
                              commits=[{"id": after, "message": "update"}])
    body = gp.encode(payload)
    headers = gp.headers(body, secret, delivery=str(uuid.uuid4()))
    return daemon.post("/hooks/gitea", body, headers).status_code


def as_committed(world: dict[str, Any]) -> dict[str, Any]:
    """Both services as the branch has them and no override: text-classify healthy, sentiment-next failed."""
    daemon = world["daemon"]
    if (daemon.service("sentiment-next") or {}).get("override"):
        done = daemon.post("/api/services/sentiment-next/resume", b"{}", {"Authorization": f"Bearer {API_TOKEN}"})
        assert done.status_code == 202, done.text
    return settled(daemon)


def announced_commit(world: dict[str, Any]) -> str:
    """A new commit that changes no service, pushed and announced: an accepted delivery that deploys nothing."""
    repo = world["repo"]
    before = repo.shas[-1]
    sha = repo.commit({"NOTES.md": f"{uuid.uuid4()}\n"}, "notes")
    assert push(world["daemon"], sha, before=before) == 202
    return sha


def model_version(repo: GitRepo) -> str:
    found = re.search(r'MODEL_VERSION: "([^"]+)"', (repo.work / "service.yaml").read_text())
    assert found is not None
    return found.group(1)


def assert_clean(dom: str) -> None:
    """No secret anywhere, and no script element: the pages work with JavaScript off."""
    for secret in SECRETS:
        assert secret not in dom
    assert "<script" not in dom.lower()


def shot(browser: Browser, url: str, name: str, **options: Any) -> Path:
    return browser.screenshot(url, OUTPUT / f"{name}.png", **options)


def test_overview_shows_both_services_and_the_failing_banner(world: dict[str, Any], browser: Browser) -> None:
    daemon = world["daemon"]
    as_committed(world)
    dom = browser.dump_dom(daemon.url + "/")
    assert_clean(dom)
    banner = text_of(find(r'<div class="banner bad" role="alert" id="failing">(.*?)</div>', dom))
    assert banner.startswith("1 service failing sentiment-next — HealthCheckFailed:"), banner
    assert "text-classify" not in banner
    good = text_of(find(r'<tr id="svc-text-classify"[^>]*>(.*?)</tr>', dom))
    assert good.startswith("text-classify acme/models · supervisor healthy running · healthy"), good
    assert "succeeded ReconciliationSucceeded" in good
    bad = text_of(find(r'<tr id="svc-sentiment-next"[^>]*>(.*?)</tr>', dom))
    assert bad.startswith("sentiment-next acme/models · supervisor failing") and "failed HealthCheckFailed" in bad
    assert re.search(r'<time datetime="[^"]+" title="\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC">\d+s ago</time>', dom)

    for scheme in ("light", "dark"):
        shot(browser, daemon.url + "/", f"overview-{scheme}", scheme=scheme)
        shot(browser, daemon.url + "/", f"overview-phone-{scheme}", width=390, height=844, scheme=scheme)


def test_service_page_shows_the_diff_steps_logs_and_info(world: dict[str, Any], browser: Browser) -> None:
    daemon, repo = world["daemon"], world["repo"]
    previous = as_committed(world)["running_sha"]
    old, new = model_version(repo), f"{next(VERSIONS)}.0"
    before = repo.shas[-1]
    sha = repo.commit({"service.yaml": manifest(new)}, f"text-classify: model {new}")
    assert push(daemon, sha, before=before) == 202
    settled(daemon, sha)
    url = daemon.url + "/services/text-classify"
    dom = browser.dump_dom(url)
    assert_clean(dom)
    assert HOSTILE not in dom and html.escape(HOSTILE, quote=False) in dom  # shown, as text

    newest = find(r'<li id="rev-\d+" class="running desired">(.*?)</li>', dom)  # marked as both
    assert f"text-classify: model {new}" in newest
    diff = [text_of(row).split() for row in re.findall(r'<tr class="\w+">(.*?)</tr>', newest, re.S)]
    assert diff == [["~", "env.MODEL_VERSION", old, new]]  # only what changed, old and new

    attempt = find(r'<details class="attempt" id="attempt-\d+" open="">(.*?)</details>', dom)
    assert "succeeded" in attempt and "webhook" in attempt
    steps = re.findall(r'<td data-label="step"[^>]*>✓ ([a-z-]+)</td>\s*<td data-label="took"[^>]*>.*?'
                       r' (\d+\.\d\ds)</td>', attempt, re.S)
    assert [name for name, _ in steps][:2] == ["checkout", "build"] and "health" in dict(steps), steps

    logs = find(r'<pre class="logs">(.*?)</pre>', dom)
    assert "text-classify listening on 127.0.0.1:" in logs and '"GET /health HTTP/1.1" 200' in logs
    info = html.unescape(find(r'<pre class="info">(.*?)</pre>', dom))
    assert f'"version": "{new}"' in info and '"model": "lexicon-sentiment"' in info

    table = find(r'<table class="stack statuses">(.*?)</table>', dom)
    statuses = {text_of(row).split(" rev ")[0]: text_of(row) for row in re.findall(r"<tr>(<td.*?)</tr>", table, re.S)}
    for commit in (sha, previous):
        assert "success ReconciliationSucceeded" in statuses.get(commit[:7], ""), statuses
    for scheme in ("light", "dark"):
        shot(browser, url, f"service-{scheme}", height=1400, scheme=scheme)
    shot(browser, url, "service-phone-light", width=390, height=2800)

    failing = browser.dump_dom(daemon.url + "/services/sentiment-next")
    assert '<div class="banner bad" role="alert"><strong>failing</strong>HealthCheckFailed' in failing
    assert "failure" in failing  # as reported to Gitea
    shot(browser, daemon.url + "/services/sentiment-next", "service-failing-light", height=1000)


def test_deliveries_page_shows_each_result_and_why(world: dict[str, Any], browser: Browser) -> None:
    daemon, repo = world["daemon"], world["repo"]
    as_committed(world)
    before = repo.shas[-1]
    sha = announced_commit(world)  # accepted
    assert push(daemon, sha, before=before) == 200  # same push again: duplicate
    assert push(daemon, sha, ref="refs/heads/feature") == 200  # another branch: ignored
    assert push(daemon, sha, ref="refs/tags/v2") == 200  # a tag: ignored
    assert push(daemon, sha, secret="not-the-secret") == 401  # rejected
    assert push(daemon, sha, repo="unknown") == 403  # rejected: not a source
    wait_for(lambda: f"{OWNER}/unknown" in daemon.get("/deliveries?live=0").text, 10, "the last delivery audited")
    dom = browser.dump_dom(daemon.url + "/deliveries")
    assert_clean(dom)
    assert "X-Gitea-Signature" not in dom.replace("(X-Gitea-Signature)", "")
    results = [text_of(row) for row in re.findall(r'<tr id="delivery-\d+">(.*?)</tr>', dom, re.S)][:6]  # this test's
    found = [find(r"(accepted|duplicate|ignored|rejected)", row) for row in results]
    assert found == ["rejected", "rejected", "ignored", "ignored", "duplicate", "accepted"], results
    assert "missing or wrong signature" in results[1] and "not a configured source" in results[0]
    assert "tag" in results[2] and "feature" in results[3] and "already accepted" in results[4]
    assert f"pass requested for source {OWNER}/{NAME}" in results[5]
    for scheme in ("light", "dark"):
        shot(browser, daemon.url + "/deliveries", f"deliveries-{scheme}", height=700, scheme=scheme)


def test_overview_shows_overrides(world: dict[str, Any], browser: Browser) -> None:
    daemon = world["daemon"]
    as_committed(world)
    body = b'{"who": "ops@acme", "why": "model under investigation"}'
    done = daemon.post("/api/services/sentiment-next/suspend", body, {"Authorization": f"Bearer {API_TOKEN}"})
    assert done.status_code == 202, done.text
    dom = browser.dump_dom(daemon.url + "/")
    assert_clean(dom)
    row = find(r'<tr id="svc-sentiment-next"[^>]*>(.*?)</tr>', dom)
    assert "suspended by ops@acme" in text_of(row) and 'title="model under investigation"' in row
    assert "sentiment-next" in find(r'id="failing">(.*?)</div>', dom)  # suspending does not hide a failure
    readme = shot(browser, daemon.url + "/", "overview-readme", height=640)  # links, an override, a failure
    if os.environ.get("DEPLOYER_UPDATE_SCREENSHOT") == "1":
        DOCS_SHOT.parent.mkdir(exist_ok=True)
        shutil.copyfile(readme, DOCS_SHOT)


def test_live_refresh_pauses_and_unknown_services_are_404(world: dict[str, Any]) -> None:
    daemon = world["daemon"]
    settled(daemon)
    assert '<meta http-equiv="refresh" content="10">' in daemon.get("/deliveries").text
    paused = daemon.get("/services/text-classify?live=0").text
    assert 'http-equiv="refresh"' not in paused and "resume live updates" in paused
    missing = daemon.get("/services/no-such-service")
    assert missing.status_code == 404 and "No service named" in missing.text


def test_commits_link_to_gitea(world: dict[str, Any], browser: Browser) -> None:
    """A source named owner/repo is that Gitea repository: its commits link to [gitea] url."""
    daemon, repo = world["daemon"], world["repo"]

    def link(sha: str) -> str:
        return f'href="{GITEA}/{OWNER}/{NAME}/commit/{sha}"'

    running = settled(daemon)["running_sha"]
    overview = browser.dump_dom(daemon.url + "/")
    row = re.search(r'<tr id="svc-text-classify".*?</tr>', overview, re.S)
    assert row and link(running) in row.group(0), "WebDeps.gitea_url must be the [gitea] url (deployer/app.py)"
    service = browser.dump_dom(daemon.url + "/services/text-classify")
    assert link(running) in service and link(repo.shas[0]) in service  # the first revision, in the timeline
    delivered = announced_commit(world)
    wait_for(lambda: link(delivered) in daemon.get("/deliveries?live=0").text, 10, "the delivery in the audit")
    assert link(delivered) in browser.dump_dom(daemon.url + "/deliveries")
