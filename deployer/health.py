"""HTTP probes of a service: the health gate and the quick check of a running service.

The gate polls ``GET health.path`` until it answers 200 or ``health.timeout``
passes; a runtime that reports the process failed ends the wait at once. One
``HttpChecks`` holds one HTTP client for all of it: building a client per probe
(its TLS context above all) cost more than the probe itself.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from deployer.errors import DeployerError, Reason


class HealthCheckFailed(DeployerError):
    reason = Reason.HEALTH_CHECK_FAILED


@dataclass(frozen=True)
class Probe:
    ok: bool
    detail: str


class HttpChecks:
    """Probes over one shared client (thread-safe); services are on loopback, so no proxies."""

    def __init__(self) -> None:
        self._client = httpx.Client(trust_env=False, follow_redirects=False)

    @property
    def client(self) -> httpx.Client:
        """The one client for every call to a managed service (demos too): never through a proxy."""
        return self._client

    def close(self) -> None:
        self._client.close()

    def probe(self, url: str, timeout: float = 2.0) -> Probe:
        """One GET; ``ok`` only for a 200."""
        return _probe(self._client, url, timeout)

    def wait_healthy(self, url: str, **options: Any) -> float:
        return wait_healthy(url, probe=self.probe, **options)

    def fetch_info(self, url: str, timeout: float = 2.0,
                   max_bytes: int = 65536) -> tuple[dict[str, object] | None, str]:
        return fetch_info(url, timeout, max_bytes, client=self._client)


def probe(url: str, timeout: float = 2.0) -> Probe:
    """One GET with a client of its own (one-off checks; passes use ``HttpChecks``)."""
    with httpx.Client(trust_env=False) as client:
        return _probe(client, url, timeout)


def _probe(client: httpx.Client, url: str, timeout: float) -> Probe:
    try:
        response = client.get(url, timeout=timeout)
    except httpx.HTTPError as exc:
        return Probe(False, f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
    return Probe(response.status_code == 200, f"HTTP {response.status_code}")


def wait_healthy(
    url: str,
    *,
    timeout: float,
    interval: float = 0.25,
    failed: Callable[[], str | None] = lambda: None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    probe: Callable[..., Probe] = probe,
) -> float:
    """Block until ``url`` answers 200; return the seconds it took.

    ``failed`` is asked between probes and returns a message when the runtime
    already knows the process is dead (no point waiting out the timeout).
    """
    started = clock()
    last = Probe(False, "not probed yet")
    while True:
        last = probe(url, timeout=min(5.0, max(interval * 4, 1.0)))
        if last.ok:
            return clock() - started
        dead = failed()
        if dead:
            raise HealthCheckFailed(f"process failed before becoming healthy: {dead}")
        if clock() - started >= timeout:
            raise HealthCheckFailed(f"{url} not healthy after {timeout:g}s (last: {last.detail})")
        sleep(interval)


def fetch_info(url: str, timeout: float = 2.0, max_bytes: int = 65536, *,
               client: httpx.Client | None = None) -> tuple[dict[str, object] | None, str]:
    """``GET /info`` as a JSON object, or (None, why not). Large or non-JSON answers are refused."""
    if client is None:
        with httpx.Client(trust_env=False) as own:
            return fetch_info(url, timeout, max_bytes, client=own)
    try:
        with client.stream("GET", url, timeout=timeout) as response:
            body = b""
            for chunk in response.iter_bytes():
                body += chunk
                if len(body) > max_bytes:
                    return None, f"answer larger than {max_bytes} bytes"
    except httpx.HTTPError as exc:
        return None, f"{type(exc).__name__}: {exc}"
    if response.status_code != 200:
        return None, f"HTTP {response.status_code}"
    try:
        data = json.loads(body)
    except ValueError:
        return None, "not JSON"
    return (data, "") if isinstance(data, dict) else ({"value": data}, "")
