"""Gitea push webhooks as pure functions: payload extraction, signature check, parsing, filtering.

No I/O and no web framework: the receiver (``deployer.web.webhook``) hands in bytes and
headers and gets values or ``WebhookError`` back. Facts about Gitea's format: shared gitea/WEBHOOKS.md.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

from deployer.safety import SOURCE_NAME_RULE, is_full_sha, is_source_name, is_zero_sha, strip_credentials, unsafe_remote

_FORM = "application/x-www-form-urlencoded"
MAX_REF = 1000
_NOT_IN_REF = re.compile("[\x00-\x20\x7f\ud800-\udfff]")
_JSON = "application/json"


class WebhookError(ValueError):
    """The delivery cannot be understood; ``str()`` says why (answered with 400)."""


@dataclass(frozen=True)
class PushEvent:
    """The parts of a Gitea push payload the deployer acts on."""

    full_name: str  # "owner/name"
    repo_id: int
    owner: str
    name: str
    clone_url: str
    html_url: str
    default_branch: str
    ref: str  # full ref: refs/heads/main, refs/tags/v1
    before: str
    after: str  # the commit to deploy; never commits[0]
    pusher: str
    message: str  # head commit's message, "" when there is none (tag deletion)

    @property
    def branch(self) -> str | None:
        return self.ref.removeprefix("refs/heads/") if self.ref.startswith("refs/heads/") else None


def verify_signature(payload: bytes, headers: Mapping[str, str], secret: str) -> bool:
    """True when the HMAC-SHA256 of ``payload`` (the JSON, also for form bodies) matches.

    ``X-Gitea-Signature`` is bare hex; ``X-Hub-Signature-256`` ("sha256=…") is the fallback.
    No secret, or a missing or empty signature, is always False.
    """
    if not secret:
        return False
    got = _header(headers, "X-Gitea-Signature").strip()
    if not got:
        got = _header(headers, "X-Hub-Signature-256").strip().removeprefix("sha256=")
    if not got:
        return False
    want = hmac.new(secret.encode("utf-8"), payload, hashlib.sha256).hexdigest()
    # bytes, because compare_digest refuses non-ASCII str and a header may hold anything
    return hmac.compare_digest(got.lower().encode("utf-8", "replace"), want.encode("ascii"))


def extract_payload(raw_body: bytes, content_type: str) -> bytes:
    """The signed JSON: the body itself, or the URL-decoded ``payload`` field of a form body."""
    media_type = content_type.split(";", 1)[0].strip().lower()
    if media_type == _JSON:
        return raw_body
    if media_type != _FORM:
        raise WebhookError(f"unsupported content type {media_type or '(none)'!r}; use json or form")
    try:
        fields = parse_qs(raw_body.decode("utf-8"), keep_blank_values=True, strict_parsing=False)
    except UnicodeDecodeError:
        raise WebhookError("form body is not valid UTF-8") from None
    values = fields.get("payload", [])
    if len(values) != 1:
        raise WebhookError("form body must have exactly one 'payload' field")
    return values[0].encode("utf-8")


def parse_push(payload: bytes) -> PushEvent:
    """A ``PushEvent`` from the payload JSON; ``WebhookError`` names the first missing field."""
    try:
        data = json.loads(payload)
    except (ValueError, UnicodeDecodeError) as exc:
        raise WebhookError(f"malformed JSON: {exc}") from None
    except RecursionError:
        raise WebhookError("malformed JSON: nested too deeply") from None
    if not isinstance(data, dict):
        raise WebhookError("malformed JSON: the payload is not an object")
    head = data.get("head_commit")
    return PushEvent(
        full_name=_repository_identity(data),
        repo_id=_int(data, "repository.id"),
        owner=_text(data, "repository.owner.login"),
        name=_text(data, "repository.name"),
        clone_url=_text(data, "repository.clone_url"),
        html_url=_text(data, "repository.html_url", required=False),
        default_branch=_text(data, "repository.default_branch", required=False) or "main",
        ref=_ref(data),
        before=_sha(data, "before"),
        after=_sha(data, "after"),
        pusher=_text(data, "pusher.login", required=False),
        message=_text(head, "message", required=False) if isinstance(head, dict) else "",
    )


def _repository_identity(data: Any) -> str:
    """``owner/name``, checked once: the full name must be the owner's login and the repository's name.

    Everything downstream (the allowed-owner check, the source's name, its folders and clone
    URL) uses this one value, so a payload cannot pass the owner check as one repository and
    be followed as another. A name deployer cannot follow is refused here, before anything is written.
    """
    full_name = _text(data, "repository.full_name")
    owner, name = _text(data, "repository.owner.login"), _text(data, "repository.name")
    if full_name != f"{owner}/{name}":
        raise WebhookError(f"repository.full_name {full_name[:120]!r} is not repository.owner.login/"
                           f"repository.name ({owner[:60]!r}/{name[:60]!r})")
    if not is_source_name(full_name):
        raise WebhookError(f"repository {full_name[:120]!r} cannot be followed: {SOURCE_NAME_RULE}")
    return full_name


def clone_url(full_name: str, payload_url: str, base_url: str) -> str:
    """Where the repository ``full_name`` (its one validated identity) is cloned from.

    With a configured Gitea (``[gitea] clone_base`` or ``url``: ``base_url``) the URL is built
    from the identity and the payload's ``clone_url`` is not used at all. Without one, the
    payload's URL is taken only when it is this very repository's (``…/owner/name.git``) on an
    http(s) host that is not this machine or a link-local (metadata) address: a signed payload
    must not make deployer clone a local repository or reach a host-internal service.
    """
    if base_url:
        return f"{base_url.rstrip('/')}/{full_name}.git"
    shown = strip_credentials(payload_url)[:200]
    problem = unsafe_remote(payload_url)
    if problem is not None:
        raise WebhookError(f"repository.clone_url {shown!r} is not cloned: {problem}; set [gitea] url "
                           "(or clone_base) to clone from the configured Gitea")
    if not payload_url.endswith(f"/{full_name}.git"):
        raise WebhookError(f"repository.clone_url {shown!r} is not the clone URL of {full_name} "
                           f"(…/{full_name}.git)")
    return payload_url


def classify(event: PushEvent, branch: str) -> str | None:
    """None when the push should be deployed, otherwise why it is ignored."""
    if is_zero_sha(event.before) and is_zero_sha(event.after):
        return "test delivery (zero sha)"  # Gitea 1.24+ "Test delivery" button: a fake commit
    if event.before == event.after:
        return "test delivery (before == after)"  # older button, and the API hook test
    if event.ref.startswith("refs/tags/"):
        return "tag push"
    if event.branch is None:
        return f"ref '{event.ref}' is not a branch"
    if event.branch != branch:
        return f"branch '{event.branch}' is not followed (following '{branch}')"
    if is_zero_sha(event.after):
        return "branch deleted"
    return None


def _header(headers: Mapping[str, str], name: str) -> str:
    """Case-insensitive lookup, for plain dicts as well as Starlette's ``Headers``."""
    value = headers.get(name)
    if value is None:
        wanted = name.lower()
        value = next((v for k, v in headers.items() if k.lower() == wanted), "")
    return value


def _field(data: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(data, dict) or part not in data:
            return None
        data = data[part]
    return data


def _text(data: Any, dotted: str, *, required: bool = True) -> str:
    value = _field(data, dotted)
    if isinstance(value, str) and (value or not required):
        return value
    if value is None and not required:
        return ""
    raise WebhookError(f"missing field {dotted}" if value in (None, "") else f"field {dotted} is not text")


def _int(data: Any, dotted: str) -> int:
    value = _field(data, dotted)
    if value is None:
        raise WebhookError(f"missing field {dotted}")
    if not isinstance(value, int) or isinstance(value, bool):
        raise WebhookError(f"field {dotted} is not a number")
    return value


def _ref(data: Any) -> str:
    """The pushed ref; a control character, a space or a lone surrogate is no git ref (git refuses them too)."""
    value = _text(data, "ref")
    if len(value) > MAX_REF or _NOT_IN_REF.search(value):
        raise WebhookError(f"field ref is not a git ref name (control characters, spaces or over {MAX_REF} "
                           "characters)")
    return value


def _sha(data: Any, dotted: str) -> str:
    value = _text(data, dotted)
    if not is_full_sha(value):
        raise WebhookError(f"field {dotted} is not a 40- or 64-hex commit id")
    return value
