"""Demos: the service's sample requests sent to the running revision, every answer recorded.

Answers are rows (text) or files under the state dir (binary). The inputs
themselves are kept beside them (``demo/<service>/<revision>/inputs/``), so the
showcase pages read files of the state dir only, never a git checkout. Header values
(``{secret: NAME}`` ones read from the secret store when the demo runs) are sent and
never kept: an answer or problem that repeats one is recorded with it masked.
"""

from __future__ import annotations

import mimetypes
import shutil
from collections.abc import Iterable
from pathlib import Path

import httpx

from deployer.demo import DemoLimits, DemoResult, run_demo
from deployer.errors import StalledError, UnknownService
from deployer.model.desired import DesiredService
from deployer.model.manifest import DemoSpec, SecretRef
from deployer.reconcile.resolve import SERVICE_HOST, service_dir
from deployer.reconcile.sources import SourceRegistry
from deployer.safety import UnsafePath, contained
from deployer.secrets import MASK, MIN_LENGTH, SecretMissing, SecretStore
from deployer.store import Store

DEMO_DIR = "demo"


def input_copy(state_dir: Path, service: str, revision: int, demo: str) -> Path:
    """Where the input a demo sent at ``revision`` is kept for the pages."""
    return state_dir / DEMO_DIR / service / str(revision) / "inputs" / demo


class DemoRunner:
    def __init__(self, store: Store, sources: SourceRegistry, client: httpx.Client, state_dir: Path,
                 limits: DemoLimits, secrets: SecretStore) -> None:
        self._store = store
        self._secrets = secrets
        self._sources = sources
        self._client = client
        self.state_dir = state_dir
        self.limits = limits

    def running(self, name: str) -> tuple[int, DesiredService]:
        """The running revision of ``name`` and its desired state, when it has demo inputs to send."""
        view = self._store.views.service(name)
        if view is None:
            raise UnknownService(name)
        revision = self._store.history.get_revision(view.running_revision) if view.running_revision else None
        if revision is None:
            raise StalledError(f"{name}: nothing is running, no demo to run")
        desired = DesiredService.model_validate(revision.spec)
        if not desired.demo:
            raise StalledError(f"{name}: its manifest has no demo inputs")
        return revision.id, desired

    def run(self, desired: DesiredService, revision: int | None, attempt: int | None, *,
            port: int | None = None, host: str = SERVICE_HOST) -> list[DemoResult]:
        """Send every demo input to the service (on ``port``: a slot's, else its own; at ``host``: a swarm
        node's address) and record each answer."""
        workdir = service_dir(self._sources.get(desired.source).checkout(desired.sha), desired.path)
        base = f"http://{host}:{port or desired.port}"
        results = []
        for spec in desired.demo:
            if revision is not None:
                self._keep_input(desired.name, revision, spec, workdir)
            results.append(self._send(desired.name, base, spec, workdir))
        for result in results:
            self._store.demos.record(
                desired.name, revision, attempt, name=result.name, ok=result.ok, status=result.status,
                latency_ms=result.latency_ms, content_type=result.content_type, text=result.text,
                body_file=self._save_body(desired.name, revision, result), truncated=result.truncated,
                problems="; ".join(result.problems))
        return results

    def _send(self, service: str, base: str, spec: DemoSpec, workdir: Path) -> DemoResult:
        headers, missing = {}, []
        for header, value in spec.headers.items():
            if isinstance(value, SecretRef):
                try:
                    found = self._secrets.value(value.secret, service=service)
                except SecretMissing as exc:
                    missing.append(f"header {header}: {exc}")
                    continue
                if found is None or len(found) < MIN_LENGTH:
                    missing.append(f"header {header}: secret {value.secret} is not set (or too short)")
                    continue
                value = found
            headers[header] = value
        if missing:
            return DemoResult(spec.name, False, None, None, problems=missing)
        return _hidden(run_demo(self._client, base, spec, workdir, self.limits, headers=headers), headers.values())

    def _keep_input(self, service: str, revision: int, spec: DemoSpec, workdir: Path) -> None:
        target = input_copy(self.state_dir, service, revision, spec.name)
        if target.exists():
            return  # inputs at a revision never change
        try:
            source = contained(workdir, spec.input or spec.file or "")
        except UnsafePath:
            return  # the demo itself reports it
        if not source.is_file() or source.stat().st_size > self.limits.max_input_bytes:
            return
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.tmp")
        shutil.copyfile(source, partial)
        partial.replace(target)

    def _save_body(self, service: str, revision: int | None, result: DemoResult) -> str | None:
        """Binary answers are files under the state dir, never database rows."""
        if result.body is None:
            return None
        extension = mimetypes.guess_extension(result.content_type) or ".bin"
        relative = Path(DEMO_DIR) / service / str(revision or "adhoc") / f"{result.name}{extension}"
        target = self.state_dir / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(result.body)
        return str(relative)


def _hidden(result: DemoResult, values: Iterable[str]) -> DemoResult:
    """The answer with every header value the service may have echoed masked (literal ones too)."""
    for value in sorted((value for value in values if len(value) >= MIN_LENGTH), key=len, reverse=True):
        if result.text is not None:
            result.text = result.text.replace(value, MASK)
        result.problems = [problem.replace(value, MASK) for problem in result.problems]
    return result
