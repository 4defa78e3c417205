"""Onboarding a Gitea without clicking: a connection check, and deployer's push webhook made or repaired.

``check`` reaches ``[gitea] url``, authenticates with the token and reads each followed owner and
repository, one line each with what failed and how to fix it. ``ensure_hook`` finds deployer's hook
on a repository or an organisation by its target URL and makes it what deployer needs: type gitea,
JSON, the webhook secret, push events only, the branch filter, active.

The secret: Gitea never returns it, and its edit API cannot change it (WEBHOOKS.md §3.6). So
deployer remembers, per hook, a fingerprint of the secret it set and the hook's ``updated_at``
(``HookMemory``: a 0600 file under the state dir). A hook untouched since then is left alone, so a
second run changes nothing. A hook edited by hand (any edit moves ``updated_at``), never set by
this deployer, or set with another secret cannot be trusted to hold the secret: it is deleted and
created again (its delivery history in Gitea goes with it) — a wrong secret would otherwise fail
every delivery silently. A hook whose secret is trusted but whose fields differ is edited in place.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from deployer.errors import DeployerError
from deployer.gitea.client import GiteaClient, GiteaError, GiteaRejected
from deployer.host import write_atomic

EVENTS = ("push",)


@dataclass(frozen=True)
class HookSpec:
    """The hook deployer needs: where Gitea sends pushes, signed with ``secret``, for ``branch_filter``."""

    url: str
    secret: str
    branch_filter: str
    content_type: str = "json"
    events: tuple[str, ...] = EVENTS

    def body(self) -> dict[str, Any]:
        return {"type": "gitea", "active": True, "events": list(self.events), "branch_filter": self.branch_filter,
                "config": {"url": self.url, "content_type": self.content_type, "secret": self.secret}}

    def edit(self) -> dict[str, Any]:
        """A PATCH body: Gitea replaces events and branch_filter even when omitted, so both are sent."""
        return {"active": True, "events": list(self.events), "branch_filter": self.branch_filter,
                "config": {"url": self.url, "content_type": self.content_type}}

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(f"deployer-gitea-hook:{self.secret}".encode()).hexdigest()


@dataclass(frozen=True)
class HookChange:
    """What ``ensure_hook`` did (or, dry, would do) on one scope: ``none``, ``create``, ``edit`` or ``recreate``."""

    scope: str
    action: str
    reasons: tuple[str, ...] = ()
    hook_id: int | None = None
    duplicates: tuple[int, ...] = ()

    def describe(self, *, dry_run: bool) -> str:
        if self.action == "none":
            return f"{self.scope}: hook {self.hook_id} is as deployer needs it; nothing to change"
        verb = {"create": "create", "edit": "edit", "recreate": "delete and create again"}[self.action]
        done = {"create": "created", "edit": "edited", "recreate": "deleted and created again"}[self.action]
        what = f"would {verb}" if dry_run else done
        duplicates = ", ".join(map(str, self.duplicates))
        extra = f"; {'would delete' if dry_run else 'deleted'} duplicate hook(s) {duplicates}" if duplicates else ""
        why = f" ({'; '.join(self.reasons)})" if self.reasons else ""
        return f"{self.scope}: {what} the push hook{f' {self.hook_id}' if self.hook_id else ''}{why}{extra}"


class HookMemory:
    """Per hook, the secret fingerprint deployer set and the ``updated_at`` Gitea answered then."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def get(self, scope: str, hook_id: int) -> Mapping[str, str] | None:
        found = self._read().get(f"{scope}#{hook_id}")
        return found if isinstance(found, dict) else None

    def put(self, scope: str, hook: Mapping[str, Any], spec: HookSpec) -> None:
        data = self._read()
        data[f"{scope}#{hook['id']}"] = {"secret": spec.fingerprint, "updated_at": str(hook.get("updated_at", ""))}
        self._write(data)

    def drop(self, scope: str, hook_id: int) -> None:
        data = self._read()
        if data.pop(f"{scope}#{hook_id}", None) is not None:
            self._write(data)

    def _read(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def _write(self, data: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(self.path, json.dumps(data, indent=2, sort_keys=True) + "\n", mode=0o600)


def plan_hook(scope: str, hooks: Sequence[Mapping[str, Any]], spec: HookSpec,
              remembered: Mapping[str, str] | None) -> HookChange:
    """Pure: which of ``hooks`` is deployer's (by target URL), and what makes it right."""
    ours = [hook for hook in hooks if _same_url(_config(hook).get("url", ""), spec.url)]
    if not ours:
        return HookChange(scope, "create", ("no hook sends pushes to deployer yet",))
    hook, duplicates = ours[0], tuple(int(extra["id"]) for extra in ours[1:])
    differences = _differences(hook, spec)
    trusted = remembered is not None and remembered.get("secret") == spec.fingerprint \
        and remembered.get("updated_at") == str(hook.get("updated_at", ""))
    if not trusted:
        why = ("not set by this deployer, so its secret is unknown" if remembered is None else
               "the secret changed in deployer's config" if remembered.get("secret") != spec.fingerprint else
               f"edited by hand at {hook.get('updated_at')}, so its secret cannot be trusted")
        # the secret can only be set by creating the hook (the edit API ignores it)
        return HookChange(scope, "recreate", (why, *differences), int(hook["id"]), duplicates)
    if differences:
        return HookChange(scope, "edit", tuple(differences), int(hook["id"]), duplicates)
    return HookChange(scope, "none", (), int(hook["id"]), duplicates)


def ensure_hook(client: GiteaClient, scope: str, spec: HookSpec, memory: HookMemory, *,
                dry_run: bool = False) -> HookChange:
    """Make deployer's push hook on ``scope`` right (``repos/OWNER/NAME`` or ``orgs/ORG``); idempotent."""
    hooks = client.hooks(scope)
    change = plan_hook(scope, hooks, spec, _remembered(memory, scope, hooks, spec))
    if dry_run:
        return change
    for duplicate in change.duplicates:
        client.delete_hook(scope, duplicate)
        memory.drop(scope, duplicate)
    if change.action == "recreate" and change.hook_id is not None:
        client.delete_hook(scope, change.hook_id)
        memory.drop(scope, change.hook_id)
    if change.action in ("create", "recreate"):
        created = client.create_hook(scope, spec.body())
        memory.put(scope, created, spec)
        return HookChange(scope, change.action, change.reasons, int(created["id"]), change.duplicates)
    if change.action == "edit" and change.hook_id is not None:
        memory.put(scope, client.edit_hook(scope, change.hook_id, spec.edit()), spec)
    return change


def _remembered(memory: HookMemory, scope: str, hooks: Sequence[Mapping[str, Any]],
                spec: HookSpec) -> Mapping[str, str] | None:
    ours = [hook for hook in hooks if _same_url(_config(hook).get("url", ""), spec.url)]
    return memory.get(scope, int(ours[0]["id"])) if ours else None


def _config(hook: Mapping[str, Any]) -> Mapping[str, Any]:
    config = hook.get("config")
    return config if isinstance(config, dict) else {}


def _same_url(a: object, b: str) -> bool:
    return str(a).strip().rstrip("/") == b.strip().rstrip("/")


def _differences(hook: Mapping[str, Any], spec: HookSpec) -> list[str]:
    found = []
    if hook.get("type") != "gitea":
        found.append(f"type {hook.get('type')!r} -> 'gitea'")
    if _config(hook).get("content_type") != spec.content_type:
        found.append(f"content type {_config(hook).get('content_type')!r} -> {spec.content_type!r}")
    events = sorted(str(event) for event in hook.get("events") or [])
    if events != sorted(spec.events):
        found.append(f"events {events} -> {sorted(spec.events)}")
    if (hook.get("branch_filter") or "") != spec.branch_filter:
        found.append(f"branch filter {hook.get('branch_filter')!r} -> {spec.branch_filter!r}")
    if hook.get("active") is not True:
        found.append("inactive -> active")
    return found


# -- the connection check ---------------------------------------------------------------


@dataclass(frozen=True)
class CheckLine:
    ok: bool
    what: str
    detail: str
    note: bool = False  # advice, not a failure


@dataclass(frozen=True)
class CheckTargets:
    repos: Sequence[str] = ()
    owners: Sequence[str] = ()
    hook_url: str = ""


def check(client: GiteaClient, targets: CheckTargets) -> list[CheckLine]:
    """Gitea reachable, its version; the token's user; each owner and repository readable; a delivery hint."""
    try:
        lines = [CheckLine(True, "gitea", f"version {client.version()} at {client.url}")]
    except DeployerError as exc:
        return [CheckLine(False, "gitea", str(exc))]
    try:
        user = client.user()
        lines.append(CheckLine(True, "token", f"authenticates as {user.get('login', '?')}"))
    except DeployerError as exc:
        return [*lines, CheckLine(False, "token", str(exc))]
    lines += [_owner_line(client, owner) for owner in targets.owners]
    lines += [_repo_line(client, repo) for repo in targets.repos]
    if not targets.owners and not targets.repos:
        lines.append(CheckLine(True, "sources", "no Gitea repository is followed yet ([[sources]] or "
                                                "[gitea] allowed_owners)", note=True))
    hint = delivery_hint(targets.hook_url)
    if hint:
        lines.append(CheckLine(True, "webhooks", hint, note=True))
    return lines


def _owner_line(client: GiteaClient, owner: str) -> CheckLine:
    try:
        found = client.owner(owner)
    except (GiteaError, GiteaRejected) as exc:
        return CheckLine(False, f"owner {owner}", _not_found(exc, "no such user or organisation"))
    kind = "organisation" if found.get("type") == "organization" or found.get("is_org") else "user or organisation"
    return CheckLine(True, f"owner {owner}", f"exists ({kind})")


def _repo_line(client: GiteaClient, repo: str) -> CheckLine:
    try:
        found = client.repository(repo)
    except (GiteaError, GiteaRejected) as exc:
        return CheckLine(False, repo, _not_found(exc, "no such repository"))
    raw = found.get("permissions")
    permissions: dict[str, Any] = raw if isinstance(raw, dict) else {}
    if permissions and not permissions.get("pull"):
        return CheckLine(False, repo, "exists, but the token cannot read it")
    admin = "" if permissions.get("admin") else "; the token is not its admin, so `deployer gitea hook` cannot " \
                                                "manage its webhook"
    return CheckLine(True, repo, f"readable, default branch {found.get('default_branch', '?')}{admin}")


def _not_found(exc: DeployerError, what: str) -> str:
    if getattr(exc, "status_code", None) == 404:
        return f"{what}, or the token cannot see it (404)"
    return str(exc)


def delivery_hint(hook_url: str) -> str:
    """Gitea delivers to loopback or private addresses only when its ALLOWED_HOST_LIST says so (WEBHOOKS.md §1.5)."""
    host = urlsplit(hook_url).hostname or ""
    if not host:
        return ""
    try:
        address = ipaddress.ip_address(host)
        loopback, private = address.is_loopback, address.is_private
    except ValueError:
        loopback, private = host == "localhost", False
    if loopback or private:
        kind = "loopback" if loopback else "private"
        return (f"webhooks go to {hook_url}, a {kind} address: Gitea refuses it unless its app.ini has "
                f"[webhook] ALLOWED_HOST_LIST = external,{kind} (set [server] public_url to the address "
                "Gitea should use)")
    return f"webhooks go to {hook_url}"
