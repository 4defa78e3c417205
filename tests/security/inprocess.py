"""The daemon's Starlette app in-process (Starlette's TestClient) over a real store, for the hostile-input suites.

``build`` is the composition root the daemon itself uses (``deployer.app.build``), with
Docker off and nothing started: no worker takes requested passes (they wait in the queue,
where a test can see them), the webhook audit is written at once, and no git command
ever runs, so every state change an input caused is visible in the store and the queue.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deployer.app import Daemon, build
from deployer.settings import load_settings
from tests import gitea_payloads as gp
from tests.helpers import stop_supervisord

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # Starlette prefers httpx2; the TestClient works the same with httpx
    from starlette.testclient import TestClient

SECRET = "in-process-webhook-secret"
TOKEN = "in-process-api-token"


@dataclass
class App:
    daemon: Daemon
    client: TestClient
    state_dir: Path

    def push(self, payload: dict[str, Any] | bytes, *, secret: str = SECRET, **headers: str) -> Any:
        """A signed push as Gitea sends it (``secret=""``: unsigned)."""
        body = payload if isinstance(payload, bytes) else gp.encode(payload)
        return self.client.post("/hooks/gitea", content=body, headers={**gp.headers(body, secret), **headers})

    def state(self) -> tuple[list[tuple[str, str]], int]:
        """What a delivery may change: the followed sources (name, clone URL) and the passes requested."""
        sources = [(spec.name, spec.url) for spec in self.daemon.reconciler.sources.specs()]
        return sources, self.daemon.queue.depth()


@contextmanager
def running_app(root: Path, *, extra: str = "", database_url: str | None = None,
                environ: dict[str, str] | None = None) -> Iterator[App]:
    """The app of a daemon whose state dir is ``root/state``; ``extra`` is more deployer.toml."""
    state_dir = root / "state"
    database = f'[database]\nurl = "{database_url}"\n' if database_url else ""
    config = root / "deployer.toml"
    config.write_text(f'{database}[paths]\nstate_dir = "{state_dir}"\n[docker]\nenabled = false\n{extra}\n')
    env = {"DEPLOYER_WEBHOOK_SECRET": SECRET, "DEPLOYER_API_TOKEN": TOKEN, **(environ or {})}
    daemon = build(load_settings(config, environ=env), config_dir=root)
    client = TestClient(daemon.app, raise_server_exceptions=False)  # not entered: no lifespan, nothing started
    try:
        yield App(daemon, client, state_dir)
    finally:
        client.close()
        daemon.store.close()
        stop_supervisord(state_dir)  # a /healthz asked the supervisor runtime, which starts its own
