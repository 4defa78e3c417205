"""Webhook parsing and signature checks against payloads shaped exactly like Gitea's."""

from __future__ import annotations

import json
from urllib.parse import quote

import pytest

from deployer.gitea import (
    PushEvent,
    WebhookError,
    classify,
    extract_payload,
    parse_push,
    verify_signature,
)
from tests.gitea_payloads import (
    ZERO_SHA1,
    ZERO_SHA256,
    encode,
    fake_test_delivery,
    headers,
    push_payload,
    wire_body,
)

SECRET = "s3cret"
CLONE = "http://gitea.local:3000/acme/web.git"
OLD = "1" * 40
NEW = "3" * 40


def body(ref: str = "refs/heads/main", before: str = OLD, after: str = NEW) -> bytes:
    commit = {"id": after, "message": "Fix deploy", "modified": ["service.yaml"]}
    commits = [] if after == ZERO_SHA1 else [commit]
    return encode(push_payload("acme", "web", ref, before, after, CLONE, commits=commits))


def event(ref: str = "refs/heads/main", before: str = OLD, after: str = NEW) -> PushEvent:
    return parse_push(body(ref, before, after))


# ---------------------------------------------------------------- signatures


@pytest.mark.parametrize("content_type", ["json", "form"])
def test_signature_over_the_json_for_both_encodings(content_type: str) -> None:
    json_body = body()
    sent = headers(json_body, SECRET, content_type=content_type)
    payload = extract_payload(wire_body(json_body, content_type), sent["Content-Type"])
    assert payload == json_body
    assert verify_signature(payload, sent, SECRET)


def test_form_body_itself_is_not_what_is_signed() -> None:
    json_body = body()
    sent = headers(json_body, SECRET, content_type="form")
    assert not verify_signature(wire_body(json_body, "form"), sent, SECRET)


def test_form_payload_with_special_characters_round_trips() -> None:
    payload = push_payload("acme", "web", "refs/heads/main", OLD, NEW, CLONE,
                           commits=[{"id": NEW, "message": "a+b & c=d <tag> 100% ünï"}])
    json_body = encode(payload)
    assert b"\\u0026" in json_body and b"\\u003c" in json_body  # Go escapes HTML characters
    sent = headers(json_body, SECRET, content_type="form")
    extracted = extract_payload(wire_body(json_body, "form"), sent["Content-Type"])
    assert extracted == json_body
    assert verify_signature(extracted, sent, SECRET)


def test_wrong_secret_is_refused() -> None:
    json_body = body()
    assert not verify_signature(json_body, headers(json_body, "other"), SECRET)


def test_tampered_body_is_refused() -> None:
    json_body = body()
    sent = headers(json_body, SECRET)
    assert not verify_signature(json_body.replace(NEW.encode(), ("4" * 40).encode()), sent, SECRET)


def test_unsigned_delivery_is_refused() -> None:
    json_body = body()
    unsigned = headers(json_body, "")  # Gitea with no secret: empty header, bare "sha256="
    assert unsigned["X-Gitea-Signature"] == "" and unsigned["X-Hub-Signature-256"] == "sha256="
    assert not verify_signature(json_body, unsigned, SECRET)


def test_missing_signature_headers_are_refused() -> None:
    json_body = body()
    sent = {k: v for k, v in headers(json_body, SECRET).items() if "Signature" not in k}
    assert not verify_signature(json_body, sent, SECRET)


def test_no_configured_secret_refuses_everything() -> None:
    json_body = body()
    assert not verify_signature(json_body, headers(json_body, ""), "")
    assert not verify_signature(json_body, headers(json_body, SECRET), "")


def test_x_hub_signature_256_is_the_fallback() -> None:
    json_body = body()
    sent = headers(json_body, SECRET)
    sent["X-Gitea-Signature"] = ""
    assert verify_signature(json_body, sent, SECRET)
    sent["X-Hub-Signature-256"] = "sha256=" + "0" * 64
    assert not verify_signature(json_body, sent, SECRET)


def test_header_names_are_case_insensitive() -> None:
    json_body = body()
    lower = {k.lower(): v for k, v in headers(json_body, SECRET).items()}
    assert verify_signature(json_body, lower, SECRET)


def test_non_ascii_signature_does_not_crash() -> None:
    json_body = body()
    assert not verify_signature(json_body, {"X-Gitea-Signature": "ä" * 64}, SECRET)


def test_all_gitea_headers_are_present() -> None:
    sent = headers(body(), SECRET, delivery="d-1")
    for name in ("X-Gitea-Delivery", "X-Gitea-Event", "X-Gitea-Event-Type", "X-Gitea-Signature",
                 "X-Gitea-Hook-Installation-Target-Type", "X-Gogs-Delivery", "X-Gogs-Event",
                 "X-Gogs-Event-Type", "X-Gogs-Signature", "X-Hub-Signature", "X-Hub-Signature-256",
                 "X-GitHub-Delivery", "X-GitHub-Event", "X-GitHub-Event-Type",
                 "X-GitHub-Hook-Installation-Target-Type", "Content-Type"):
        assert name in sent, name
    assert sent["X-Gitea-Delivery"] == sent["X-GitHub-Delivery"] == "d-1"
    assert sent["X-Gitea-Signature"] == sent["X-Hub-Signature-256"].removeprefix("sha256=")


# ---------------------------------------------------------------- extraction


def test_form_without_payload_field_is_an_error() -> None:
    with pytest.raises(WebhookError, match="payload"):
        extract_payload(b"other=1", "application/x-www-form-urlencoded")


def test_content_type_parameters_are_ignored() -> None:
    json_body = body()
    assert extract_payload(json_body, "application/json; charset=utf-8") == json_body
    form = b"payload=" + quote(json_body.decode()).encode()
    assert extract_payload(form, "application/x-www-form-urlencoded; charset=utf-8") == json_body


def test_unknown_content_type_is_an_error() -> None:
    with pytest.raises(WebhookError, match="unsupported content type 'text/plain'"):
        extract_payload(b"{}", "text/plain")


# ---------------------------------------------------------------- parsing


def test_parse_push_reads_every_field() -> None:
    parsed = event()
    assert parsed == PushEvent(
        full_name="acme/web", repo_id=1, owner="acme", name="web", clone_url=CLONE,
        html_url="http://gitea.local:3000/acme/web", default_branch="main", ref="refs/heads/main",
        before=OLD, after=NEW, pusher="acme", message="Fix deploy\n",
    )
    assert parsed.branch == "main"


def test_after_is_deployed_not_the_first_listed_commit() -> None:
    commits = [{"id": f"{i:x}" * 40} for i in range(9, 2, -1)]  # 7 commits, newest first
    payload = push_payload("acme", "web", "refs/heads/main", OLD, commits[0]["id"], CLONE, commits=commits)
    assert len(payload["commits"]) == 5 and payload["total_commits"] == 7
    assert parse_push(encode(payload)).after == "9" * 40


def test_malformed_json() -> None:
    with pytest.raises(WebhookError, match=r"^malformed JSON: "):
        parse_push(b"{not json")
    with pytest.raises(WebhookError, match=r"^malformed JSON: "):
        parse_push(b"[1, 2]")


def test_missing_field_is_named() -> None:
    data = json.loads(body())
    del data["repository"]["full_name"]
    with pytest.raises(WebhookError, match=r"^missing field repository\.full_name$"):
        parse_push(json.dumps(data).encode())


def test_sha_fields_must_be_hex() -> None:
    data = json.loads(body())
    data["after"] = "--upload-pack=evil"
    with pytest.raises(WebhookError, match="field after is not a 40- or 64-hex commit id"):
        parse_push(json.dumps(data).encode())


def test_tag_deletion_has_no_head_commit() -> None:
    parsed = event(ref="refs/tags/v1", after=ZERO_SHA1)
    assert parsed.message == "" and parsed.branch is None


# ---------------------------------------------------------------- classify (WEBHOOKS.md 1.7, 1.8)


def test_branch_update_is_deployed() -> None:
    assert classify(event(), "main") is None


def test_new_branch_push_is_deployed() -> None:
    # A first push to the followed branch has before = zeros but a real after.
    assert classify(event(before=ZERO_SHA1), "main") is None


def test_other_branch_is_ignored() -> None:
    assert classify(event(ref="refs/heads/dev"), "main") == "branch 'dev' is not followed (following 'main')"


def test_tag_push_is_ignored() -> None:
    assert classify(event(ref="refs/tags/v1.2", before=ZERO_SHA1), "main") == "tag push"


def test_tag_deletion_is_ignored() -> None:
    assert classify(event(ref="refs/tags/v1.2", after=ZERO_SHA1), "main") == "tag push"


@pytest.mark.parametrize("object_format", ["sha1", "sha256"])
def test_ui_test_delivery_is_ignored(object_format: str) -> None:
    payload = fake_test_delivery("acme", "web", CLONE, object_format=object_format)
    zero = ZERO_SHA256 if object_format == "sha256" else ZERO_SHA1
    assert payload["before"] == payload["after"] == zero
    assert payload["commits"][0]["message"] == "This is a fake commit"
    assert payload["commits"][0]["added"] is None
    assert classify(parse_push(encode(payload)), "main") == "test delivery (zero sha)"


def test_api_test_delivery_is_ignored() -> None:
    assert classify(event(before=NEW, after=NEW), "main") == "test delivery (before == after)"


def test_branch_deletion_is_ignored() -> None:
    # Gitea sends only `delete` for this; a push with a zero `after` must still never deploy.
    assert classify(event(after=ZERO_SHA1), "main") == "branch deleted"


def test_non_branch_ref_is_ignored() -> None:
    assert classify(event(ref="refs/pull/3/head"), "main") == "ref 'refs/pull/3/head' is not a branch"


def test_sha256_repository_push_is_deployed() -> None:
    payload = push_payload("acme", "web", "refs/heads/main", "a" * 64, "b" * 64, CLONE,
                           object_format="sha256")
    assert classify(parse_push(encode(payload)), "main") is None
