"""``deployer gitea check`` and ``deployer gitea hook`` as an operator runs them, against the Gitea
API stand-in: a good answer, a wrong token (401), a missing repository (404), nothing listening, a
name that does not resolve; a hook created once and left alone the second time, repaired after a
hand edit of its secret or events (Gitea never shows the secret), on a repository or an organisation.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from deployer.gitea import HookSpec
from deployer.gitea.onboard import plan_hook
from tests.gitea_standin import GiteaStandIn
from tests.helpers import free_port, wait_for

SECRET = "hook-secret-for-tests-3c1f"  # a test credential, not a secret


def config(root: Path, gitea: GiteaStandIn, *repos: str, owners: tuple[str, ...] = ()) -> Path:
    sources = "".join(f'[[sources]]\nurl = "{gitea.url}/{repo}.git"\n' for repo in repos)
    owners_line = f"allowed_owners = {list(owners)!r}\n".replace("'", '"') if owners else ""
    path = root / "deployer.toml"
    path.write_text(f"""
[server]
listen = "127.0.0.1:{free_port()}"
[gitea]
url = "{gitea.url}"
{owners_line}
{sources}
[paths]
state_dir = "{root / 'state'}"
""")
    return path


def cli(path: Path, *args: str, token: str | None = None,
        secret: str | None = SECRET) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("DEPLOYER_")}
    if token is not None:
        env["DEPLOYER_GITEA_TOKEN"] = token
    if secret is not None:
        env["DEPLOYER_WEBHOOK_SECRET"] = secret
    return subprocess.run([sys.executable, "-m", "deployer", "gitea", *args, "--config", str(path)],
                          cwd=path.parent, env=env, capture_output=True, text=True, timeout=60)


def test_check_with_a_good_gitea_prints_version_user_and_each_repository(tmp_path: Path, gitea: GiteaStandIn) -> None:
    gitea.add_repo("acme", "models", ["a" * 40], branches={"main": "a" * 40})
    gitea.add_org("acme")
    done = cli(config(tmp_path, gitea, "acme/models", owners=("acme",)), "check", token=gitea.token)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "ok    gitea: version 1.26.0" in done.stdout
    assert "ok    token: authenticates as deployer-bot" in done.stdout
    assert "ok    owner acme: exists" in done.stdout
    assert "ok    acme/models: readable, default branch main" in done.stdout
    assert "ALLOWED_HOST_LIST = external,loopback" in done.stdout  # the daemon listens on loopback
    assert gitea.token not in done.stdout + done.stderr


def test_check_names_a_wrong_token_401(tmp_path: Path, gitea: GiteaStandIn) -> None:
    gitea.add_repo("acme", "models", ["a" * 40])
    done = cli(config(tmp_path, gitea, "acme/models"), "check", token="not-the-token")
    assert done.returncode == 1
    assert "FAIL  token: gitea GET /user: 401, the token is missing, wrong or expired" in done.stdout, done.stdout
    assert "not-the-token" not in done.stdout + done.stderr


def test_check_names_a_missing_repository_404(tmp_path: Path, gitea: GiteaStandIn) -> None:
    gitea.add_repo("acme", "models", ["a" * 40])
    done = cli(config(tmp_path, gitea, "acme/models", "acme/gone"), "check", "--repo", "acme/other",
               token=gitea.token)
    assert done.returncode == 1, done.stdout
    assert "ok    acme/models: readable" in done.stdout
    assert "FAIL  acme/gone: no such repository, or the token cannot see it (404)" in done.stdout
    assert "FAIL  acme/other: no such repository" in done.stdout


def test_check_says_why_gitea_cannot_be_reached(tmp_path: Path, gitea: GiteaStandIn) -> None:
    path = config(tmp_path, gitea)
    gitea.down()
    done = cli(path, "check", token=gitea.token)
    assert done.returncode == 1 and "FAIL  gitea: gitea unreachable at" in done.stdout
    assert "nothing listens there" in done.stdout, done.stdout
    path.write_text(path.read_text().replace(gitea.url, "http://gitea.invalid"))
    done = cli(path, "check", token=gitea.token)
    assert done.returncode == 1 and "does not resolve" in done.stdout, done.stdout


def test_hook_twice_is_a_no_op_the_second_time(tmp_path: Path, gitea: GiteaStandIn) -> None:
    gitea.add_repo("acme", "models", ["a" * 40])
    path = config(tmp_path, gitea, "acme/models")
    dry = cli(path, "hook", "acme/models", "--dry-run", token=gitea.token)
    assert dry.returncode == 0 and "would create" in dry.stdout and gitea.hooks("repos/acme/models") == []

    first = cli(path, "hook", "acme/models", token=gitea.token)
    assert first.returncode == 0 and "created the push hook" in first.stdout, first.stdout + first.stderr
    [hook] = gitea.hooks("repos/acme/models")
    assert hook["secret"] == SECRET and hook["events"] == ["push"] and hook["active"] is True
    assert hook["content_type"] == "json" and hook["branch_filter"] == "main" and hook["type"] == "gitea"
    assert hook["url"].endswith("/hooks/gitea")
    assert (tmp_path / "state" / "gitea-hooks.json").stat().st_mode & 0o777 == 0o600
    assert SECRET not in (tmp_path / "state" / "gitea-hooks.json").read_text()

    writes = len(gitea.requests("POST")) + len(gitea.requests("PATCH")) + len(gitea.requests("DELETE"))
    second = cli(path, "hook", "acme/models", token=gitea.token)
    assert second.returncode == 0 and "nothing to change" in second.stdout, second.stdout
    assert len(gitea.requests("POST")) + len(gitea.requests("PATCH")) + len(gitea.requests("DELETE")) == writes
    assert gitea.hooks("repos/acme/models") == [hook]


@pytest.mark.parametrize("changes", [{"secret": "typed-by-hand"}, {"events": ["push", "create"]},
                                     {"active": False}, {"content_type": "form"}, {"branch_filter": "*"}])
def test_hook_repairs_a_hook_changed_by_hand(tmp_path: Path, gitea: GiteaStandIn, changes: dict[str, object]) -> None:
    gitea.add_repo("acme", "models", ["a" * 40])
    path = config(tmp_path, gitea, "acme/models")
    assert cli(path, "hook", "acme/models", token=gitea.token).returncode == 0
    [hook] = gitea.hooks("repos/acme/models")
    # Gitea's updated_at has one-second resolution: a person's edit lands in a later second
    wait_for(lambda: gitea.hooks("repos/acme/models")[0]["updated_at"] < _now_stamp(), 3, "the next second",
             interval=0.05)
    gitea.edit_hook_by_hand("repos/acme/models", hook["id"], **changes)

    repaired = cli(path, "hook", "acme/models", token=gitea.token)
    assert repaired.returncode == 0 and "deleted and created again" in repaired.stdout, repaired.stdout
    assert "edited by hand" in repaired.stdout
    [fixed] = gitea.hooks("repos/acme/models")
    assert fixed["secret"] == SECRET and fixed["events"] == ["push"] and fixed["active"] is True
    assert fixed["content_type"] == "json" and fixed["branch_filter"] == "main"
    again = cli(path, "hook", "acme/models", token=gitea.token)
    assert "nothing to change" in again.stdout, again.stdout


def test_a_hook_this_deployer_never_set_is_made_again_once(tmp_path: Path, gitea: GiteaStandIn) -> None:
    gitea.add_repo("acme", "models", ["a" * 40])
    path = config(tmp_path, gitea, "acme/models")
    assert cli(path, "hook", "acme/models", token=gitea.token).returncode == 0
    (tmp_path / "state" / "gitea-hooks.json").unlink()  # another host, or the state dir was lost
    done = cli(path, "hook", "acme/models", token=gitea.token)
    assert "not set by this deployer" in done.stdout and len(gitea.hooks("repos/acme/models")) == 1
    assert "nothing to change" in cli(path, "hook", "acme/models", token=gitea.token).stdout


def test_hook_on_an_organisation_and_clear_refusals(tmp_path: Path, gitea: GiteaStandIn) -> None:
    gitea.add_org("acme")
    path = config(tmp_path, gitea)
    done = cli(path, "hook", "--owner", "acme", token=gitea.token)
    assert done.returncode == 0 and "orgs/acme: created" in done.stdout, done.stdout + done.stderr
    assert [hook["secret"] for hook in gitea.hooks("orgs/acme")] == [SECRET]

    missing = cli(path, "hook", "--owner", "nobody", token=gitea.token)
    assert missing.returncode == 1 and "no organisation 'nobody'" in missing.stderr, missing.stderr
    gitea.add_repo("acme", "models", ["a" * 40])
    gitea.add_token("reader-token-1", "reader", admin=False)
    forbidden = cli(path, "hook", "acme/models", token="reader-token-1")
    assert forbidden.returncode == 1 and "403" in forbidden.stderr, forbidden.stderr
    unsigned = cli(path, "hook", "acme/models", token=gitea.token, secret=None)
    assert unsigned.returncode == 1 and "no webhook secret" in unsigned.stderr
    usage = cli(path, "hook", token=gitea.token)
    assert usage.returncode == 2


def test_plan_hook_decides_by_url_fingerprint_and_updated_at() -> None:
    spec = HookSpec("http://deployer:8700/hooks/gitea", "s3cret", "main")
    good = {"id": 7, "type": "gitea", "config": {"url": spec.url + "/", "content_type": "json"}, "events": ["push"],
            "branch_filter": "main", "active": True, "updated_at": "2026-11-30T10:00:00Z"}
    remembered = {"secret": spec.fingerprint, "updated_at": "2026-11-30T10:00:00Z"}
    other = {**good, "id": 3, "config": {"url": "http://elsewhere/hook", "content_type": "json"}}
    assert plan_hook("repos/a/b", [other, good], spec, remembered).action == "none"
    assert plan_hook("repos/a/b", [other], spec, None).action == "create"
    assert plan_hook("repos/a/b", [good], spec, {**remembered, "updated_at": "x"}).action == "recreate"
    assert plan_hook("repos/a/b", [good], HookSpec(spec.url, "rotated", "main"), remembered).action == "recreate"
    assert plan_hook("repos/a/b", [good, {**good, "id": 9}], spec, remembered).duplicates == (9,)


def _now_stamp() -> str:
    from datetime import UTC, datetime

    return datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")
