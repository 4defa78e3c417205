"""Lifecycle hooks: a service's ``pre_deploy``/``post_deploy`` scripts and the operator's global ones.

A hook runs with a timeout, in the service's folder, with the service's
environment (its Python env's ``bin/`` first on PATH, PORT, HOST, env, secrets)
plus ``DEPLOYER_SERVICE``/``DEPLOYER_REVISION``/``DEPLOYER_SHA``/``DEPLOYER_EVENT``;
its output is captured (tail kept) and a non-zero exit fails the attempt.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from deployer.errors import DeployerError, Reason
from deployer.model.deployment import Deployment
from deployer.safety import file_inside

OUTPUT_TAIL = 4000
GLOBAL_EVENTS = ("pre-deploy", "post-deploy", "on-failure")
_SAFE_PATH = "/usr/local/bin:/usr/bin:/bin"


class HookFailed(DeployerError):
    reason = Reason.HOOK_FAILED


@dataclass(frozen=True)
class HookRun:
    command: str
    exit_code: int
    output: str


class HookRunner:
    def __init__(self, global_dir: Path | None = None, *, timeout: float = 300.0) -> None:
        self.global_dir = global_dir
        self.timeout = timeout

    def service_hook(self, deployment: Deployment, relative: str, event: str) -> HookRun:
        """Run the service's own hook script (a path in its folder, checked by the loader)."""
        script = file_inside(deployment.workdir, relative)  # a link leading out counts as missing
        if script is None:
            raise HookFailed(f"{deployment.name}: {event} hook {relative} is missing from the repository")
        command = [str(script)] if os.access(script, os.X_OK) else ["sh", str(script)]
        return self._run(command, deployment, event, relative)

    def global_hook(self, deployment: Deployment, event: str) -> HookRun | None:
        """The operator's ``<hooks dir>/<event>`` when it exists and is executable; None otherwise."""
        if self.global_dir is None:
            return None
        script = self.global_dir / event
        if not script.is_file() or not os.access(script, os.X_OK):
            return None
        return self._run([str(script)], deployment, event, f"{self.global_dir.name}/{event}")

    def _run(self, command: list[str], deployment: Deployment, event: str, label: str) -> HookRun:
        try:
            done = subprocess.run(command, cwd=deployment.workdir, env=_environment(deployment, event),
                                  stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  timeout=self.timeout, check=False)
        except subprocess.TimeoutExpired as exc:
            output = (exc.stdout or b"").decode("utf-8", "replace")[-OUTPUT_TAIL:]
            raise HookFailed(f"{deployment.name}: {event} hook {label} did not finish within "
                             f"{self.timeout:g}s") from _with_output(output)
        except OSError as exc:
            raise HookFailed(f"{deployment.name}: {event} hook {label} could not start: {exc.strerror}") from None
        output = done.stdout.decode("utf-8", "replace")[-OUTPUT_TAIL:]
        run = HookRun(label, done.returncode, output)
        if done.returncode != 0:
            raise HookFailed(f"{deployment.name}: {event} hook {label} exited with {done.returncode}") \
                from _with_output(output)
        return run


class _HookOutput(Exception):
    """Carries a failed hook's output to the step record (as the error's cause)."""


def _with_output(output: str) -> _HookOutput:
    return _HookOutput(output)


def hook_output(exc: BaseException) -> str:
    return str(exc.__cause__) if isinstance(exc.__cause__, _HookOutput) else ""


def _environment(deployment: Deployment, event: str) -> dict[str, str]:
    path = f"{deployment.env_dir / 'bin'}:{_SAFE_PATH}" if deployment.env_dir else _SAFE_PATH
    return {
        "PATH": path, "LANG": "C.UTF-8", "HOME": str(deployment.workdir),
        **deployment.full_environment(),
        "DEPLOYER_SERVICE": deployment.service, "DEPLOYER_REVISION": str(deployment.revision),
        "DEPLOYER_SHA": deployment.desired.sha, "DEPLOYER_EVENT": event,
    }
