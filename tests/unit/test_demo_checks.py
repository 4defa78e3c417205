"""Demos that call real APIs: path, method and headers in the manifest, the ``json`` value check,
and the masking of header values wherever a spec is shown."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from deployer.demo import json_value_problem, run_demo
from deployer.errors import ManifestError
from deployer.loader import load_manifest
from deployer.model.desired import DesiredService
from deployer.model.diff import MASK as DIFF_MASK
from deployer.model.diff import flatten, spec_diff
from deployer.model.manifest import DemoSpec
from deployer.web.serializers import masked_spec


def demo(line: str) -> DemoSpec:
    return load_manifest(f"name: a\ncommand: x\ndemo:\n  - {line}\n").services[0].demo[0]


def problem(line: str) -> str:
    with pytest.raises(ManifestError) as caught:
        demo(line)
    return str(caught.value)


# ---------------------------------------------------------------- the manifest


def test_defaults_are_todays_demo() -> None:
    spec = demo("{name: d, input: in.json, json_keys: [label], max_latency_ms: 500}")
    assert (spec.path, spec.method, spec.headers, spec.expect_json) == ("/predict", "POST", {}, {})


def test_a_demo_that_uses_no_new_field_keeps_its_stored_shape() -> None:
    """Specs recorded before the new fields hash the same: no service is redeployed by the upgrade."""
    dumped = demo("{name: d, input: in.json, status: 201}").model_dump(mode="json")
    assert set(dumped) == {"name", "input", "file", "status", "json_keys", "max_latency_ms"}


def test_path_method_headers_and_json_round_trip_through_a_stored_spec() -> None:
    spec = demo("{name: d, method: PUT, path: '/api/model/predict?v=2', input: in.json, "
                "headers: {token: {secret: API_KEY}, X-Client: deployer, X-Version: 2}, "
                "json: {label: positive, scores.0: {min: 0.5}}}")
    assert spec.headers["X-Version"] == "2" and spec.secret_names() == ["API_KEY"]
    stored = json.loads(json.dumps(spec.model_dump(mode="json")))
    assert stored["json"] == {"label": "positive", "scores.0": {"min": 0.5}}
    assert DemoSpec.model_validate(stored) == spec


def test_a_get_demo_needs_no_input() -> None:
    assert demo("{name: d, method: GET, path: /info}").input is None
    assert "give exactly one of 'input'" in problem("{name: d}")


@pytest.mark.parametrize(("line", "expected"), [
    ("{name: d, input: i.json, path: //evil.example/x}", "demo[0].path: must be a path on the service itself"),
    ("{name: d, input: i.json, path: 'http://evil/x'}", "demo[0].path: must match"),
    ("{name: d, input: i.json, path: predict}", "demo[0].path: must match"),
    ("{name: d, input: i.json, path: /a/../b}", "demo[0].path: must not hold '.' or '..' segments"),
    ("{name: d, input: i.json, path: /a/%2e%2e/b}", "demo[0].path: must not hold '.' or '..' segments"),
    ("{name: d, input: i.json, method: TRACE}", "demo[0].method: must be one of"),
    ("{name: d, input: i.json, headers: {Host: x}}", "demo[0].headers: Host is set by deployer"),
    ("{name: d, input: i.json, headers: {a: x, A: y}}", "header names are case-insensitive"),
    ("{name: d, input: i.json, headers: {'bad name': x}}", "demo[0].headers['bad name']: key must match"),
    ("{name: d, input: i.json, headers: {token: {secret: 'no good'}}}", "demo[0].headers.token.secret: must match"),
    ("{name: d, input: i.json, headers: {token: {secret: K, x: 1}}}", "unknown key 'x' (allowed: secret)"),
    ("{name: d, input: i.json, headers: {token: \"a\\nb\"}}", "demo[0].headers.token: must not contain control"),
    ("{name: d, input: i.json, json: {scores.0: {min: x}}}", "min must be a number"),
    ("{name: d, input: i.json, json: {s: {min: 2, max: 1}}}", "min must not be more than max"),
    ("{name: d, input: i.json, json: {a..b: 1}}", "must match"),
    ("{name: d, input: i.json, jsn: {}}", "unknown key 'jsn'; did you mean 'json'?"),
])
def test_bad_demo_fields_point_into_the_file(line: str, expected: str) -> None:
    message = problem(line)
    assert message.startswith("service.yaml:4:") and expected in message, message


def test_a_literal_header_value_is_never_echoed_in_an_error() -> None:
    assert "hunter2-secret" not in problem("{name: d, input: i.json, headers: {token: [hunter2-secret]}}")


# ---------------------------------------------------------------- the json check


ANSWER = {"label": "positive", "scores": [0.93, 0.07], "ok": True, "n": 1, "meta": {"model": "m", "tags": []}}


@pytest.mark.parametrize(("path", "want", "expected"), [
    ("label", "positive", None),
    ("label", "negative", 'label: expected "negative", got "positive"'),
    ("scores.0", 0.93, None),
    ("scores.0", {"min": 0.9}, None),
    ("scores.1", {"min": 0.9}, "scores.1: expected at least 0.9, got 0.07"),
    ("scores.0", {"min": 0, "max": 0.5}, "scores.0: expected between 0 and 0.5, got 0.93"),
    ("scores.2", 1, "scores.2: missing"),
    ("scores.x", 1, "scores.x: missing"),
    ("label.x", 1, "label.x: missing"),
    ("n", 1.0, None),  # a number is a number
    ("n", True, "n: expected true, got 1"),  # but a boolean is not one
    ("ok", 1, "ok: expected 1, got true"),
    ("ok", True, None),
    ("n", "1", 'n: expected "1", got 1'),
    ("label", {"min": 1}, 'label: expected a number, got "positive"'),
    ("meta", {"model": "m", "tags": []}, None),  # objects and lists compare whole
    ("meta", {"model": "m"}, 'meta: expected {"model": "m"}, got {"model": "m", "tags": []}'),
    ("meta.tags", [], None),
])
def test_json_values_at_dotted_paths(path: str, want: Any, expected: str | None) -> None:
    assert json_value_problem(ANSWER, path, want) == expected


# ---------------------------------------------------------------- a real request


class _Recorder(BaseHTTPRequestHandler):
    seen: list[dict[str, Any]] = []

    def _answer(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length) if length else b""
        _Recorder.seen.append({"method": self.command, "path": self.path, "token": self.headers.get("token"),
                               "body": body.decode()})
        status = 500 if self.path.startswith("/broken") else 200
        data = json.dumps({"label": "positive", "scores": [0.9, 0.1], "echo": self.headers.get("token")}).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = _answer

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    _Recorder.seen.clear()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_a_demo_sends_its_method_path_headers_and_input(server: str, tmp_path: Path) -> None:
    (tmp_path / "in.json").write_text('{"text": "fine"}')
    spec = demo("{name: d, method: PUT, path: '/api/model/predict?v=2', input: in.json, headers: "
                "{token: {secret: API_KEY}}, json: {label: positive, scores.0: {min: 0.5}}}")
    with httpx.Client(trust_env=False) as client:
        result = run_demo(client, server, spec, tmp_path, headers={"token": "tok-1234567890"})
    assert result.ok, result.problems
    assert _Recorder.seen == [{"method": "PUT", "path": "/api/model/predict?v=2", "token": "tok-1234567890",
                               "body": '{"text":"fine"}'}]


def test_a_model_that_answers_500_fails_its_demo(server: str, tmp_path: Path) -> None:
    (tmp_path / "in.json").write_text("{}")
    spec = demo("{name: d, path: /broken/predict, input: in.json, json: {label: negative}}")
    with httpx.Client(trust_env=False) as client:
        result = run_demo(client, server, spec, tmp_path)
    assert not result.ok
    assert result.problems == ["expected HTTP 200, got 500", 'label: expected "negative", got "positive"']


# ---------------------------------------------------------------- masking


def test_literal_header_values_are_masked_where_specs_are_shown() -> None:
    spec = {"name": "a", "env": {}, "demo": [{"name": "d", "headers": {"token": {"secret": "API_KEY"},
                                                                      "X-Key": "literal-value-1"}}]}
    shown = masked_spec(spec)
    assert shown["demo"][0]["headers"] == {"token": {"secret": "API_KEY"}, "X-Key": DIFF_MASK}
    assert flatten(spec)["demo[0].headers.X-Key"] == DIFF_MASK
    assert flatten(spec)["demo[0].headers.token.secret"] == "API_KEY"
    newer = {**spec, "demo": [{"name": "d", "headers": {"X-Key": "literal-value-2"}}]}
    changes = {change.path: change for change in spec_diff(spec, newer)}
    assert changes["demo[0].headers.X-Key"].old == changes["demo[0].headers.X-Key"].new == DIFF_MASK


def test_every_secret_a_deploy_needs_is_named() -> None:
    manifest = load_manifest("name: a\ncommand: x\nsecrets: [HF_TOKEN]\ndemo:\n  - {name: d, input: i.json, "
                             "headers: {token: {secret: API_KEY}, x: {secret: HF_TOKEN}}}\n")
    entry = manifest.services[0]
    desired = DesiredService(name="a", source="s", sha="0" * 40, tree="t", runtime="supervisor", port=9000,
                             secrets=tuple(entry.secrets), demo=tuple(entry.demo))
    assert desired.secret_names() == ("HF_TOKEN", "API_KEY")
