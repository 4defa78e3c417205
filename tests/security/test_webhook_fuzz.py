"""Webhook fuzzing with hypothesis against the daemon's app in-process, over a real (SQLite) store.

Three kinds of delivery: anything at all, unsigned or wrongly signed (headers, content types,
encodings, sizes, nesting); validly signed pushes with hostile fields (unicode and NUL in
refs, non-hex shas, forged repository names, ``clone_url`` at local files, loopback and
link-local addresses); and validly signed arbitrary JSON. What must hold for every one:
never a 5xx; without a valid signature no change of state (followed sources, requested
passes, accepted deliveries); and no source ever followed from a URL other than the
followed source's or one built from the push's identity on the host the push named.

Bounded: ``DEPLOYER_FUZZ_EXAMPLES`` examples per test (default 200); set it higher for a long run.
"""

from __future__ import annotations

import json
import os
import string
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlencode

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests import gitea_payloads as gp
from tests.security.inprocess import SECRET, App, running_app
from tests.security.tally import count

EXAMPLES = int(os.environ.get("DEPLOYER_FUZZ_EXAMPLES", "200"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                       HealthCheck.data_too_large])
FOLLOWED = ("acme/followed", "file:///srv/git/acme/followed.git")  # a [[sources]] entry: may be local
GOOD_HOSTS = ("http://gitea.example", "https://git.example.org:3000/sub", "http://10.1.2.3:3000")
HOSTILE_URLS = (
    "/srv/git/{full}.git", "file:///srv/git/{full}.git", "file://localhost/etc/{full}.git", "../../{full}.git",
    "ext::sh -c id% >/tmp/x/{full}.git", "ssh://-oProxyCommand=id/{full}.git",
    "http://169.254.169.254/{full}.git", "http://[fe80::1%25eth0]/{full}.git", "http://127.0.0.1:3000/{full}.git",
    "http://127.1/{full}.git", "http://0x7f000001/{full}.git", "http://2130706433/{full}.git",
    "http://[::1]/{full}.git", "http://[::ffff:169.254.169.254]/{full}.git", "http://localhost./{full}.git",
    "http://metadata.google.internal/{full}.git", "http://0.0.0.0/{full}.git", "http://user:pw@gitea.example/{full}.git",
    "http://gitea.example/{full}.git?x=1", "http://gitea.example/other/repo.git",
)
# What breaks things: NUL, lone surrogates, controls, bidi overrides, separators, quotes, git's ref syntax.
DANGER = st.one_of(st.sampled_from(["\x00", "\ud800", "\udfff"]),  # the ones that broke a store or an answer
                   st.sampled_from([*"\u202e\u2028\n\r\t \x7f%\\'\"<&", "..", "//", "@{", "~"]))
ANY_TEXT = st.lists(st.one_of(DANGER, st.characters(exclude_categories=())), max_size=30).map("".join)


def spiked(base: str) -> st.SearchStrategy[str]:
    """``base`` with one dangerous character or sequence put in somewhere."""
    return st.tuples(st.integers(0, len(base)), DANGER).map(lambda cut: base[:cut[0]] + cut[1] + base[cut[0]:])


OWNERS = st.one_of(spiked("acme"), st.sampled_from(["acme", "ACME", "Acme", "evil", "acme ", "", "ac/me", "..",
                                                    "-acme", "ácme"]))
NAMES = st.one_of(spiked("models"), st.sampled_from(["models", "_private", ".profile", "x.git", "-rf", "..", ".",
                                                     "a/b", "mödels", "x" * 101, ""]),
                  st.text(alphabet=string.ascii_letters + string.digits + "._-", min_size=1, max_size=12))
REFS = st.one_of(spiked("refs/heads/main"), st.sampled_from(["refs/heads/dev", "refs/tags/v1", "main", "",
                                                             "refs/heads/" + "x" * 300]),
                 ANY_TEXT.map(lambda text: "refs/heads/" + text), ANY_TEXT)
HEX = st.text(alphabet="0123456789abcdef", min_size=40, max_size=40)
SHAS = st.one_of(HEX, st.sampled_from(["0" * 40, "0" * 64, "A" * 40, "g" * 40, "a" * 39, "a" * 65, "", "HEAD",
                                       "--upload-pack=id", "a" * 40 + "\n"]),
                 st.text(max_size=70))
JSON_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=20))
JSON_VALUES = st.recursive(JSON_SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                                  st.dictionaries(st.text(max_size=8), inner,
                                                                                  max_size=4)), max_leaves=20)


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[App]:
    extra = f'[gitea]\nallowed_owners = ["acme"]\n[[sources]]\nname = "{FOLLOWED[0]}"\nurl = "{FOLLOWED[1]}"\n'
    with running_app(tmp_path_factory.mktemp("fuzz"), extra=extra) as app:
        yield app


def accepted(app: App) -> int:
    return len(app.daemon.store.deliveries.recent_accepted(100_000))


def assert_only_allowed_sources(app: App) -> None:
    """Every followed source is the configured one, or an identity's URL on a host a push named."""
    for name, url in app.state()[0]:
        if (name, url) == FOLLOWED:
            continue
        assert any(url == f"{host}/{name}.git" for host in GOOD_HOSTS), (name, url)


def send(app: App, body: bytes, headers: list[tuple[bytes, bytes]]) -> Any:
    response = app.client.post("/hooks/gitea", content=body, headers=headers)
    count("webhook", response.status_code)
    assert response.status_code < 500, (response.status_code, response.text[:300])
    return response


def signed_headers(payload: bytes, *, event: bytes = b"push", content_type: bytes = b"application/json",
                   secret: str = SECRET) -> list[tuple[bytes, bytes]]:
    plain = gp.headers(payload, secret, event=event.decode("latin-1"))
    plain["Content-Type"] = content_type.decode("latin-1")
    return [(key.encode("latin-1"), value.encode("latin-1")) for key, value in plain.items()]


# -- anything, unsigned or wrongly signed ------------------------------------------------------------

HEADER_VALUES = st.one_of(st.binary(max_size=80).map(lambda raw: raw.replace(b"\r", b"").replace(b"\n", b"")),
                          st.sampled_from([b"", b"push", b"sha256=", b"0" * 64, b"application/json",
                                           b"application/x-www-form-urlencoded", b"text/plain; charset=utf-7",
                                           b"application/json; charset=latin-1", b"multipart/form-data"]))
HEADER_NAMES = st.sampled_from([b"content-type", b"x-gitea-event", b"x-gitea-signature", b"x-hub-signature-256",
                                b"x-gogs-event", b"x-github-event", b"x-gitea-delivery", b"content-length",
                                b"content-encoding", b"transfer-encoding"])
BODIES = st.one_of(
    st.binary(max_size=2048),
    JSON_VALUES.map(lambda value: json.dumps(value).encode()),
    st.integers(min_value=1, max_value=5000).map(lambda depth: b"[" * depth + b"]" * depth),
    st.integers(min_value=1, max_value=3).map(lambda megabytes: b"{" + b" " * (megabytes * 1024 * 1024) + b"}"),
    st.text(max_size=200).map(lambda text: urlencode({"payload": text}).encode()),
)


@FUZZ
@given(body=BODIES, headers=st.lists(st.tuples(HEADER_NAMES, HEADER_VALUES), max_size=6),
       forge=st.sampled_from(["none", "wrong-secret", "other-body", "garbage"]))
def test_without_a_valid_signature_nothing_changes_and_nothing_fails(
        app: App, body: bytes, headers: list[tuple[bytes, bytes]], forge: str) -> None:
    before, accepted_before = app.state(), accepted(app)
    if forge == "wrong-secret":
        headers = signed_headers(body, secret="not-the-secret") + headers
    elif forge == "other-body":
        headers = signed_headers(body + b" ") + headers
    elif forge == "garbage":
        headers = [(b"x-gitea-signature", b"\xff" * 64), *headers]
    headers = [(name, value) for name, value in headers if name != b"content-length"]
    response = send(app, body, headers)
    assert response.status_code >= 400, response.text  # refused: too large, not signed, not understood
    assert app.state() == before
    assert accepted(app) == accepted_before


# -- signed pushes with hostile fields ---------------------------------------------------------------

@st.composite
def hostile_pushes(draw: st.DrawFn) -> tuple[dict[str, Any], str]:
    """A push that would be accepted, with one to three of its fields made hostile (so each one is reached)."""
    owner, name = draw(st.sampled_from(["acme", "Acme"])), draw(st.sampled_from(["models", "_private", ".profile"]))
    host = draw(st.sampled_from(GOOD_HOSTS))
    payload = gp.push_payload(owner, name, "refs/heads/main", draw(HEX), draw(HEX), f"{host}/{owner}/{name}.git")
    repository = payload["repository"]
    kinds = st.sampled_from(["ref", "before", "after", "owner", "name", "full_name", "clone_url", "identity", "type"])
    changes = draw(st.lists(kinds, min_size=1, max_size=3))
    for change in sorted(changes, key=lambda kind: kind == "type"):  # last: it may replace what others edit
        full = repository["full_name"]
        match change:
            case "ref":
                payload["ref"] = draw(REFS)
            case "before" | "after":
                payload[change] = draw(SHAS)
            case "owner":
                repository["owner"]["login"] = draw(OWNERS)
            case "name":
                repository["name"] = draw(NAMES)
            case "full_name":
                repository["full_name"] = draw(st.sampled_from(["evil/x", "acme/../../etc", "acme/x/y", "",
                                                                "ACME/models", f"{full}\x00", f"{full} "]))
            case "clone_url":
                repository["clone_url"] = draw(st.one_of(
                    st.sampled_from(HOSTILE_URLS).map(lambda template, full=full: template.format(full=full)),
                    st.text(max_size=60)))
            case "identity":  # a consistent identity of another owner or with a hostile name
                owner, name = draw(OWNERS), draw(NAMES)
                repository["owner"]["login"], repository["name"] = owner, name
                repository["full_name"] = f"{owner}/{name}"
                repository["clone_url"] = f"{host}/{owner}/{name}.git"
            case "type":  # a field of another type, nested, or null
                field = draw(st.sampled_from(["repository", "repository.owner", "ref", "after", "head_commit",
                                              "repository.id", "commits", "repository.full_name", "pusher"]))
                parent, _, key = field.rpartition(".")
                (repository if parent == "repository" else payload)[key] = draw(JSON_VALUES)
    # ASCII escapes carry every code point (lone surrogates too); raw UTF-8 and form bodies are Gitea's own.
    return payload, draw(st.sampled_from(["json", "form", "ascii-json", "ascii-json", "ascii-json"]))


@FUZZ
@given(case=hostile_pushes(), event=st.sampled_from([b"push", b"push", b"create", b"PUSH", b""]))
def test_signed_hostile_pushes_never_fail_and_never_follow_a_url_outside_the_rule(
        app: App, case: tuple[dict[str, Any], str], event: bytes) -> None:
    payload, encoding = case
    signed = json.dumps(payload).encode() if encoding == "ascii-json" else \
        json.dumps(payload, ensure_ascii=False).encode("utf-8", "surrogatepass")
    if encoding == "form" and not _utf8(signed):
        return  # a form field is text; such bytes cannot be a form payload at all
    body = gp.wire_body(signed, "form") if encoding == "form" else signed
    content_type = b"application/x-www-form-urlencoded" if encoding == "form" else b"application/json"
    send(app, body, signed_headers(signed, event=event, content_type=content_type))
    assert_only_allowed_sources(app)
    for name, url in app.state()[0]:
        assert (name, url) == FOLLOWED or not any(url == template.format(full=name) for template in HOSTILE_URLS)


@FUZZ
@given(value=JSON_VALUES)
def test_signed_arbitrary_json_never_fails(app: App, value: Any) -> None:
    signed = json.dumps(value).encode()
    send(app, signed, signed_headers(signed))
    assert_only_allowed_sources(app)


def test_the_fuzzed_app_still_takes_a_good_push(app: App) -> None:
    """The suite ran against a working receiver: a plain signed push of the followed source is accepted."""
    payload = gp.push_payload("acme", "followed", "refs/heads/main", "0" * 40, "f" * 40,
                              "http://gitea.example/acme/followed.git")
    body = gp.encode(payload)
    response = send(app, body, signed_headers(body))
    assert response.status_code in (200, 202), response.text  # 200: a duplicate of a fuzzed one
    assert_only_allowed_sources(app)


def _utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True

