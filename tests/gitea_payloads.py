"""Gitea push webhook payloads and headers, byte-for-byte as Gitea sends them (for tests).

Mirrors modules/structs/hook.go (PushPayload), services/webhook/deliver.go
(headers, HMAC) and the 1.24+ "Test delivery" fake commit. Standard library only.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode, urlsplit

ZERO_SHA1 = "0" * 40
ZERO_SHA256 = "0" * 64
FAKE_TEST_MESSAGE = "This is a fake commit"
MAX_COMMITS = 5  # [ui] FEED_MAX_COMMIT_NUM


def push_payload(
    owner: str,
    repo: str,
    ref: str,
    before: str,
    after: str,
    clone_url: str,
    *,
    commits: list[dict[str, Any]] | None = None,
    default_branch: str = "main",
    repo_id: int = 1,
    pusher: str | None = None,
    object_format: str = "sha1",
    max_commits: int = MAX_COMMITS,
) -> dict[str, Any]:
    """A PushPayload. ``commits`` are specs, newest first: {id, message, added, modified, removed}.

    Like Gitea, the list is cut to the newest ``max_commits`` while ``total_commits`` keeps the
    full count, and ``head_commit`` is the commit at ``after`` (null when after is zero).
    """
    base = _root_url(clone_url, owner, repo)
    pusher_user = _user(1, pusher or owner, base)
    owner_user = pusher_user if pusher_user["login"] == owner else _user(2, owner, base)
    repository = _repository(repo_id, owner_user, repo, base, clone_url, default_branch, object_format)
    html_url = repository["html_url"]
    now = datetime.now(UTC).replace(microsecond=0)
    full = [_commit(spec, html_url, pusher_user, now - timedelta(minutes=age))
            for age, spec in enumerate(commits or [])]
    head = None
    if after != _zero(object_format):
        head = next((c for c in full if c["id"] == after), None) or _commit(
            {"id": after, "message": "head"}, html_url, pusher_user, now
        )
    return {
        "ref": ref,
        "before": before,
        "after": after,
        "compare_url": _compare_url(base, owner, repo, ref, before, after, default_branch, object_format),
        "commits": full[:max_commits],
        "total_commits": len(full),
        "head_commit": head,
        "repository": repository,
        "pusher": pusher_user,
        "sender": pusher_user,
    }


def fake_test_delivery(
    owner: str, repo: str, clone_url: str, *, default_branch: str = "main", object_format: str = "sha1"
) -> dict[str, Any]:
    """What the web UI's "Test delivery" button sends since Gitea 1.24: zero shas, a fake commit."""
    zero = _zero(object_format)
    payload = push_payload(
        owner, repo, f"refs/heads/{default_branch}", zero, zero, clone_url,
        default_branch=default_branch, object_format=object_format,
    )
    ghost = {"name": "Ghost", "email": "", "username": "ghost"}
    fake = {
        "id": zero,
        "message": FAKE_TEST_MESSAGE,
        "url": f"{payload['repository']['html_url']}/commit/{zero}",
        "author": ghost,
        "committer": dict(ghost),
        "verification": None,
        "timestamp": "0001-01-01T00:00:00Z",
        "added": None,
        "removed": None,
        "modified": None,
    }
    payload.update(commits=[fake], total_commits=1, head_commit=fake, compare_url="")
    return payload


def encode(payload: dict[str, Any]) -> bytes:
    """Go's json.MarshalIndent(p, "", "  "): 2-space indent, UTF-8, HTML characters escaped."""
    text = json.dumps(payload, indent=2, ensure_ascii=False)
    for char, escaped in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"),
                          ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(char, escaped)
    return text.encode("utf-8")


def sign(body_json: bytes, secret: str) -> dict[str, str]:
    """The four signature headers; empty (or a bare prefix) when no secret is set."""
    if not secret:
        return {"X-Gitea-Signature": "", "X-Gogs-Signature": "",
                "X-Hub-Signature": "sha1=", "X-Hub-Signature-256": "sha256="}
    key = secret.encode("utf-8")
    sha256 = hmac.new(key, body_json, hashlib.sha256).hexdigest()
    sha1 = hmac.new(key, body_json, hashlib.sha1).hexdigest()
    return {"X-Gitea-Signature": sha256, "X-Gogs-Signature": sha256,
            "X-Hub-Signature": "sha1=" + sha1, "X-Hub-Signature-256": "sha256=" + sha256}


def headers(
    body_json: bytes,
    secret: str,
    *,
    content_type: str = "json",
    event: str = "push",
    delivery: str | None = None,
    target_type: str = "repository",
) -> dict[str, str]:
    """Every header Gitea sets on a delivery; the HMAC covers the JSON even for form bodies."""
    delivery = delivery or str(uuid.uuid4())
    result = {"Content-Type": "application/json" if content_type == "json"
              else "application/x-www-form-urlencoded"}
    for prefix in ("X-Gitea", "X-Gogs", "X-GitHub"):
        result[f"{prefix}-Delivery"] = delivery
        result[f"{prefix}-Event"] = event
        result[f"{prefix}-Event-Type"] = event
    result["X-Gitea-Hook-Installation-Target-Type"] = target_type
    result["X-GitHub-Hook-Installation-Target-Type"] = target_type
    result.update(sign(body_json, secret))
    return result


def wire_body(body_json: bytes, content_type: str) -> bytes:
    """The bytes on the wire: the JSON itself, or ``payload=<url-encoded JSON>`` for form."""
    if content_type == "form":
        return urlencode({"payload": body_json.decode("utf-8")}).encode("ascii")
    return body_json


# ---------------------------------------------------------------- shapes


def _zero(object_format: str) -> str:
    return ZERO_SHA256 if object_format == "sha256" else ZERO_SHA1


def _root_url(clone_url: str, owner: str, repo: str) -> str:
    """Gitea's ROOT_URL (with trailing '/'), from a clone URL; any other URL gets its origin."""
    suffix = f"/{owner}/{repo}.git"
    if clone_url.endswith(suffix):
        return clone_url[: -len(suffix)] + "/"
    parts = urlsplit(clone_url)
    return f"{parts.scheme or 'http'}://{parts.netloc or 'gitea.invalid'}/"


def _compare_url(base: str, owner: str, repo: str, ref: str, before: str, after: str,
                 default_branch: str, object_format: str) -> str:
    if before != _zero(object_format) or after == _zero(object_format):
        return f"{base}{owner}/{repo}/compare/{before}...{after}"
    old = default_branch if ref != f"refs/heads/{default_branch}" else ""
    return f"{base}{owner}/{repo}/compare/{old}...{after}" if old else ""


def _user(user_id: int, login: str, base: str) -> dict[str, Any]:
    """api.User as in webhooks: placeholder e-mail, "username" alias of "login"."""
    return {
        "id": user_id, "login": login, "login_name": "", "source_id": 0, "full_name": login.title(),
        "email": f"{user_id}+{login.lower()}@noreply.{urlsplit(base).hostname or 'localhost'}",
        "avatar_url": f"{base}avatars/{hashlib.md5(login.encode()).hexdigest()}",
        "html_url": f"{base}{login}", "language": "", "is_admin": False,
        "last_login": "0001-01-01T00:00:00Z", "created": "2024-01-01T00:00:00Z", "restricted": False,
        "active": False, "prohibit_login": False, "location": "", "website": "", "description": "",
        "visibility": "public", "followers_count": 0, "following_count": 0, "starred_repos_count": 0,
        "username": login,
    }


def _repository(repo_id: int, owner: dict[str, Any], repo: str, base: str, clone_url: str,
                default_branch: str, object_format: str) -> dict[str, Any]:
    login = owner["login"]
    api_url = f"{base}api/v1/repos/{login}/{repo}"
    host = urlsplit(base).hostname or "localhost"
    return {
        "id": repo_id, "owner": owner, "name": repo, "full_name": f"{login}/{repo}", "description": "",
        "empty": False, "private": False, "fork": False, "template": False, "mirror": False, "size": 0,
        "language": "", "languages_url": f"{api_url}/languages", "html_url": f"{base}{login}/{repo}",
        "url": api_url, "link": "", "ssh_url": f"git@{host}:{login}/{repo}.git", "clone_url": clone_url,
        "original_url": "", "website": "", "stars_count": 0, "forks_count": 0, "watchers_count": 1,
        "open_issues_count": 0, "open_pr_counter": 0, "release_counter": 0,
        "default_branch": default_branch, "archived": False, "created_at": "2024-01-01T00:00:00Z",
        "updated_at": "2024-01-01T00:00:00Z", "archived_at": "1970-01-01T00:00:00Z",
        "permissions": {"admin": True, "push": True, "pull": True}, "has_issues": True, "has_wiki": True,
        "has_pull_requests": True, "has_projects": True, "has_releases": True, "has_packages": True,
        "has_actions": True, "avatar_url": "", "internal": False, "mirror_interval": "",
        "object_format_name": object_format, "mirror_updated": "0001-01-01T00:00:00Z",
        "topics": [], "licenses": [],
    }


def _commit(spec: dict[str, Any], html_url: str, pusher: dict[str, Any], when: datetime) -> dict[str, Any]:
    """PayloadCommit; git keeps the message's trailing newline and Gitea passes it through."""
    author = {"name": spec.get("author_name", pusher["full_name"]),
              "email": spec.get("author_email", f"{pusher['login']}@example.com"),
              "username": spec.get("author_username", pusher["login"])}
    message = spec.get("message", "update")
    return {
        "id": spec["id"],
        "message": message if message.endswith("\n") else message + "\n",
        "url": f"{html_url}/commit/{spec['id']}",
        "author": author,
        "committer": dict(author),
        "verification": None,
        "timestamp": spec.get("timestamp", when.isoformat().replace("+00:00", "Z")),
        "added": list(spec.get("added", [])),
        "removed": list(spec.get("removed", [])),
        "modified": list(spec.get("modified", [])),
    }
