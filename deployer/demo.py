"""Model-aware readiness: ``/info`` expectations and demo requests (``POST /predict`` unless told otherwise).

A service is ready when it answers its demo requests as its manifest expects,
not merely when ``/health`` says 200. A demo goes to the service's own address with
its method, path and headers (secret values given by the caller); the answer is judged
on its status, latency, keys and values (``json``). Responses are read with a cap
(never held whole), JSON is kept as text for the pages, other bodies go to a file.
"""

from __future__ import annotations

import json
import math
import mimetypes
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from deployer.errors import DeployerError, Reason, StalledError
from deployer.model.manifest import RANGE_KEYS, DemoSpec
from deployer.safety import file_inside


class DemoFailed(DeployerError):
    reason = Reason.DEMO_FAILED


class InfoMismatch(DeployerError):
    reason = Reason.INFO_MISMATCH


@dataclass(frozen=True)
class DemoLimits:
    max_input_bytes: int = 10 * 1024 * 1024
    max_response_bytes: int = 256 * 1024
    timeout: float = 30.0


@dataclass
class DemoResult:
    name: str
    ok: bool
    status: int | None
    latency_ms: float | None
    content_type: str = ""
    text: str | None = None
    body: bytes | None = field(default=None, repr=False)
    truncated: bool = False
    problems: list[str] = field(default_factory=list)

    @property
    def summary(self) -> str:
        head = f"{self.name}: HTTP {self.status}" if self.status is not None else f"{self.name}: no answer"
        timing = f" in {self.latency_ms:.0f} ms" if self.latency_ms is not None else ""
        return head + timing + ("" if self.ok else f" — {'; '.join(self.problems)}")


def check_info(client: httpx.Client, url: str, expect: dict[str, Any], timeout: float = 5.0) -> dict[str, Any]:
    """``GET /info`` and compare ``expect`` (dotted paths allowed); raise InfoMismatch naming each field.

    ``client`` is the daemon's client for managed services (``trust_env=False``: never through a proxy).
    """
    try:
        response = client.get(url, timeout=timeout)
        info = response.json()
    except (httpx.HTTPError, ValueError) as exc:
        raise InfoMismatch(f"{url}: no JSON answer ({type(exc).__name__})") from None
    if response.status_code != 200 or not isinstance(info, dict):
        raise InfoMismatch(f"{url}: expected a JSON object with HTTP 200 (got HTTP {response.status_code})")
    wrong = [f"{key}: expected {want!r}, got {_lookup(info, key)!r}"
             for key, want in sorted(expect.items()) if _lookup(info, key) != want]
    if wrong:
        raise InfoMismatch("/info does not match the manifest: " + "; ".join(wrong))
    return info


_MISSING = object()


def _lookup(data: Any, dotted: str) -> Any:
    found = _find(data, dotted)
    return None if found is _MISSING else found


def _find(data: Any, dotted: str) -> Any:
    """The value at a dotted path: a segment names an object's key, or a list's index (0-based digits)."""
    for part in dotted.split("."):
        if isinstance(data, dict) and part in data:
            data = data[part]
        elif isinstance(data, list) and part.isdigit() and int(part) < len(data):
            data = data[int(part)]
        else:
            return _MISSING
    return data


def run_demo(client: httpx.Client, base_url: str, spec: DemoSpec, workdir: Path,
             limits: DemoLimits = DemoLimits(), *, headers: dict[str, str] | None = None) -> DemoResult:
    """Send one demo request to ``base_url`` + its path and judge the answer against the spec.

    ``headers`` are the demo's headers with secret values filled in by the caller.
    """
    try:
        request = _request(spec, workdir, limits)
    except StalledError as exc:
        return DemoResult(spec.name, False, None, None, problems=[str(exc)])
    started = time.monotonic()
    try:
        with client.stream(spec.method, base_url + spec.path, timeout=limits.timeout, headers=headers or {},
                           **request) as response:
            body, truncated = _read_capped(response, limits.max_response_bytes)
    except httpx.TimeoutException:
        return DemoResult(spec.name, False, None, None, problems=[f"no answer within {limits.timeout:g}s"])
    except httpx.HTTPError as exc:
        return DemoResult(spec.name, False, None, None, problems=[f"{type(exc).__name__}: {exc}"])
    latency = (time.monotonic() - started) * 1000
    result = _result(spec, response, body, truncated, latency)
    result.problems = _judge(spec, result)
    result.ok = not result.problems
    return result


def _request(spec: DemoSpec, workdir: Path, limits: DemoLimits) -> dict[str, Any]:
    relative = spec.input or spec.file
    if relative is None:
        return {}  # a GET or DELETE demo without a body
    path = file_inside(workdir, relative)  # a link leading out counts as missing
    if path is None:
        raise StalledError(f"demo {spec.name}: {relative} is missing from the repository")
    if path.stat().st_size > limits.max_input_bytes:
        raise StalledError(f"demo {spec.name}: {relative} is larger than {limits.max_input_bytes} bytes")
    if spec.input is not None:
        try:
            return {"json": json.loads(path.read_bytes())}
        except ValueError as exc:
            raise StalledError(f"demo {spec.name}: {relative} is not valid JSON: {exc}") from None
    kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return {"files": {"file": (path.name, path.read_bytes(), kind)}}


def _read_capped(response: httpx.Response, limit: int) -> tuple[bytes, bool]:
    chunks: list[bytes] = []
    size = 0
    for chunk in response.iter_bytes():
        if size + len(chunk) > limit:
            chunks.append(chunk[: limit - size])
            return b"".join(chunks), True
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks), False


def _result(spec: DemoSpec, response: httpx.Response, body: bytes, truncated: bool, latency: float) -> DemoResult:
    """Text when the bytes decode as UTF-8 JSON or text, whatever the content type claims; else binary."""
    content_type = response.headers.get("content-type", "").split(";")[0].strip().lower()
    result = DemoResult(spec.name, False, response.status_code, latency, content_type, truncated=truncated)
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        result.body = body
        return result
    if "\x00" in text:
        result.body = body
    else:
        result.text = text
    return result


def _judge(spec: DemoSpec, result: DemoResult) -> list[str]:
    problems = []
    if result.status != spec.status:
        problems.append(f"expected HTTP {spec.status}, got {result.status}")
    if spec.max_latency_ms is not None and result.latency_ms is not None and result.latency_ms > spec.max_latency_ms:
        problems.append(f"took {result.latency_ms:.0f} ms, more than {spec.max_latency_ms:g} ms")
    if spec.json_keys or spec.expect_json:
        problems.extend(_json_problems(spec, result))
    return problems


def _json_problems(spec: DemoSpec, result: DemoResult) -> list[str]:
    if result.text is None or result.truncated:
        return ["expected a complete JSON answer"]
    try:
        data = json.loads(result.text)
    except ValueError:
        return ["expected JSON, got something else"]
    if not isinstance(data, dict | list):
        return ["expected a JSON object"]
    missing = [key for key in spec.json_keys if _lookup(data, key) is None]
    problems = [f"missing key{'s' if len(missing) > 1 else ''} {', '.join(missing)}"] if missing else []
    return problems + [problem for path, want in spec.expect_json.items()
                       if (problem := json_value_problem(data, path, want))]


def json_value_problem(data: Any, path: str, want: Any) -> str | None:
    """What is wrong with the value at ``path``, or None when it is as the manifest says.

    ``want`` as a mapping of only ``min``/``max`` is a numeric range (bounds included); anything
    else must be equal as JSON: booleans only equal booleans, 1 equals 1.0, lists and objects whole.
    """
    got = _find(data, path)
    if got is _MISSING:
        return f"{path}: missing"
    if isinstance(want, dict) and want and set(want) <= RANGE_KEYS:
        if isinstance(got, bool) or not isinstance(got, int | float):
            return f"{path}: expected a number, got {_short(got)}"
        low, high = want.get("min", -math.inf), want.get("max", math.inf)
        return None if low <= got <= high else f"{path}: expected {_range(want)}, got {_short(got)}"
    return None if json_equal(got, want) else f"{path}: expected {_short(want)}, got {_short(got)}"


def json_equal(got: Any, want: Any) -> bool:
    if isinstance(got, bool) or isinstance(want, bool):
        return isinstance(got, bool) and isinstance(want, bool) and got == want
    if isinstance(got, int | float) and isinstance(want, int | float):
        return got == want
    if isinstance(got, dict) and isinstance(want, dict):
        return got.keys() == want.keys() and all(json_equal(got[key], want[key]) for key in want)
    if isinstance(got, list) and isinstance(want, list):
        return len(got) == len(want) and all(map(json_equal, got, want))
    return type(got) is type(want) and bool(got == want)


def _range(want: dict[str, Any]) -> str:
    if "min" in want and "max" in want:
        return f"between {want['min']} and {want['max']}"
    return f"at least {want['min']}" if "min" in want else f"at most {want['max']}"


def _short(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 60 else text[:59] + "…"
