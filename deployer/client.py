"""The CLI's side of the daemon's JSON API: requests, aligned tables, waiting with progress.

Every command that needs the daemon goes through ``ApiClient``; its errors are
``ClientError`` with one line to show. Tables are plain text; ``--json`` output
is the API's own JSON, unchanged.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import httpx

from deployer.errors import DeployerError


class ClientError(DeployerError):
    pass


class ApiClient:
    def __init__(self, base_url: str, token: str | None, *, timeout: float = 30.0,
                 transport: httpx.BaseTransport | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout, transport=transport)

    def get(self, path: str, **params: Any) -> Any:
        return self._call("GET", path, params={k: v for k, v in params.items() if v is not None})

    def get_text(self, path: str, **params: Any) -> str:
        try:
            response = self._http.get(path, params={k: v for k, v in params.items() if v is not None})
        except httpx.HTTPError as exc:
            raise ClientError(f"cannot reach the daemon at {self.base_url}: {exc} (is `deployer serve` running?)"
                              ) from None
        if response.status_code >= 400:
            raise ClientError(f"GET {path}: HTTP {response.status_code}: {response.text[:200]}")
        return response.text

    def post(self, path: str, body: dict[str, Any] | None = None) -> Any:
        return self._call("POST", path, json=body or {})

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise ClientError(f"cannot reach the daemon at {self.base_url}: {exc} (is `deployer serve` running?)"
                              ) from None
        try:
            data = response.json()
        except ValueError:
            data = {"error": response.text[:200]}
        if response.status_code >= 400:
            message = data.get("error") or data.get("detail") if isinstance(data, dict) else None
            raise ClientError(f"{method} {path}: HTTP {response.status_code}: {message or response.reason_phrase}")
        return data


def table(rows: Sequence[Sequence[object]], headers: Sequence[str]) -> str:
    """Columns padded to their widest cell; the last column is not padded."""
    cells = [[str(cell) for cell in row] for row in [headers, *rows]]
    widths = [max(len(row[index]) for row in cells) for index in range(len(headers))]
    lines = ["  ".join(cell.ljust(widths[index]) if index < len(row) - 1 else cell
                       for index, cell in enumerate(row)).rstrip() for row in cells]
    return "\n".join(lines)


def age(stamp: str | None, now: datetime | None = None) -> str:
    if not stamp:
        return "never"
    seconds = int(((now or datetime.now(UTC)) - datetime.fromisoformat(stamp)).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit} ago"
    return f"{max(seconds, 0)}s ago"


def status_rows(services: list[dict[str, Any]]) -> list[list[object]]:
    rows: list[list[object]] = []
    for service in services:
        last = service.get("last_attempt") or {}
        rows.append([
            service["name"], service["state"], "yes" if service["healthy"] else "no", service["port"] or "-",
            (service["running_sha"] or "-")[:7], (service["desired_sha"] or "-")[:7],
            f"{last.get('outcome', '-')} {last.get('reason', '')} {age(last.get('started_at'))}" if last else "-",
            service.get("override") or "",
        ])
    return rows


STATUS_HEADERS = ("NAME", "STATE", "HEALTHY", "PORT", "RUNNING", "DESIRED", "LAST ATTEMPT", "OVERRIDE")


def history_rows(detail: dict[str, Any]) -> list[list[object]]:
    outcome_of: dict[int, str] = {}
    for attempt in reversed(detail.get("attempts", [])):
        if attempt["revision"] is not None:
            outcome_of[attempt["revision"]] = attempt["outcome"]
    running = detail.get("running_revision")
    return [[
        f"{revision['id']}{'*' if revision['id'] == running else ''}", revision["sha"][:7],
        revision["author"], age(revision["created_at"]), outcome_of.get(revision["id"], "-"),
        (revision["message"].splitlines() or [""])[0][:60],
    ] for revision in detail.get("revisions", [])]


HISTORY_HEADERS = ("REV", "COMMIT", "AUTHOR", "WHEN", "OUTCOME", "MESSAGE")


def follow_operation(client: ApiClient, operation: dict[str, Any], *, timeout: float,
                     echo: Callable[[str], None] | None, steps_after: Mapping[str, int] | None = None
                     ) -> dict[str, Any]:
    """Poll ``/api/operations/{id}`` until every item is done, echoing one line per item as it ends.

    With ``steps_after`` (service -> its newest attempt id before the action), the steps of the
    service's newer attempts are echoed as they appear, until its item ends. An item not done by
    ``timeout`` counts as failed ("still running"): its work goes on in the daemon.
    """
    deadline = time.monotonic() + timeout
    shown: set[str] = set()
    steps = _Steps(client, echo, steps_after) if echo is not None and steps_after else None
    width = max((len(_label(item)) for item in operation["items"]), default=0)
    while True:
        for item in operation["items"]:
            if steps is not None and _label(item) not in shown:
                steps.echo_new(item["service"])
            if item["state"] == "done" and _label(item) not in shown:
                shown.add(_label(item))
                if echo is not None:
                    echo(f"{_label(item):<{width}}  {item['outcome'] or '-':<11}  {item['message']}")
        if operation["done"]:
            return operation
        if time.monotonic() > deadline:
            break
        time.sleep(0.5)
        operation = client.get(f"/api/operations/{operation['id']}")
    for item in operation["items"]:
        if item["state"] != "done":
            item.update(ok=False, outcome="unknown", message=f"still {item['state']} after {timeout:g}s")
            if echo is not None:
                echo(f"{_label(item):<{width}}  {'unknown':<11}  {item['message']}")
    return operation


def _label(item: dict[str, Any]) -> str:
    """An item names a service, or a source for a pass over all of it."""
    return str(item.get("service") or item.get("source") or "-")


class _Steps:
    """The steps of a service's attempts newer than a given one, each echoed once."""

    def __init__(self, client: ApiClient, echo: Callable[[str], None], after: Mapping[str, int]) -> None:
        self._client, self._echo, self._after = client, echo, after
        self._shown: set[tuple[int, str]] = set()

    def echo_new(self, service: str | None) -> None:
        if service is None or service not in self._after:
            return
        detail = self._client.get(f"/api/services/{service}")
        for attempt in reversed(detail.get("attempts", [])):
            if attempt["id"] <= self._after[service]:
                continue
            for step in attempt.get("steps", []):
                if (attempt["id"], step["name"]) not in self._shown:
                    self._shown.add((attempt["id"], step["name"]))
                    self._echo(f"  {step['name']:<18} {'ok' if step['ok'] else 'FAILED':<6} {step['duration']:.2f}s")


def newest_attempts(client: ApiClient, services: Sequence[str]) -> dict[str, int]:
    """Each service's newest attempt id now (0: none yet): what ``follow_operation`` echoes steps after."""
    newest = {}
    for service in services:
        attempts = client.get(f"/api/services/{service}").get("attempts") or []
        newest[service] = attempts[0]["id"] if attempts else 0
    return newest
