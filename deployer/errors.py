"""Error kinds, classified by what happens next; the web answers them by type, never by message.

``StalledError`` needs a fix in git (no retry until the revision changes), ``TransientError``
retries with backoff; ``NotFound`` (stalled) is a 404.
Every error carries a stable CamelCase ``Reason`` shown on the page and stored in history;
adapters translate library errors into these.
"""

from __future__ import annotations

from enum import StrEnum


class Reason(StrEnum):
    """Stable reason codes; never rename one, the store and the page key on them."""

    RECONCILIATION_SUCCEEDED = "ReconciliationSucceeded"
    DRIFT_CORRECTED = "DriftCorrected"
    PRUNED = "Pruned"
    SOURCE_FETCH_FAILED = "SourceFetchFailed"
    ARTIFACT_FETCH_FAILED = "ArtifactFetchFailed"  # a model file (Git LFS, artifacts:) not fetched or other bytes
    MANIFEST_INVALID = "ManifestInvalid"
    BUILD_FAILED = "BuildFailed"
    APPLY_FAILED = "ApplyFailed"
    HEALTH_CHECK_FAILED = "HealthCheckFailed"
    DEMO_FAILED = "DemoFailed"
    INFO_MISMATCH = "InfoMismatch"
    HOOK_FAILED = "HookFailed"
    ROLLED_BACK = "RolledBack"
    PORT_CONFLICT = "PortConflict"
    SECRET_MISSING = "SecretMissing"
    RUNTIME_UNAVAILABLE = "RuntimeUnavailable"
    GATEWAY_FAILED = "GatewayFailed"
    INTERRUPTED = "Interrupted"
    CRASH_LOOP = "CrashLoop"  # passed its gate, died later (its runtime restarts it)
    RECOVERED = "Recovered"  # after a crash loop (or degraded), answers its health check again (runs in full)
    DEGRADED = "Degraded"  # swarm runs fewer tasks than asked (a node lost, no suitable node): not the revision's fault
    INTERNAL_ERROR = "InternalError"
    STOPPED = "Stopped"
    RESTARTED = "Restarted"


class DeployerError(Exception):
    """Base of every error deployer raises on purpose; ``str()`` is the user message."""

    reason: Reason = Reason.INTERNAL_ERROR

    def __init__(self, message: str, *, reason: Reason | None = None) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason

    @property
    def message(self) -> str:
        return str(self)


class StalledError(DeployerError):
    """Retrying cannot help: the input in git (or the config) has to change."""


class TransientError(DeployerError):
    """Something outside was briefly unavailable; retry with backoff."""


class NotFound(StalledError):
    """What was asked for does not exist (a service, a revision); the web answers 404."""


class UnknownService(NotFound):
    """No service of that name; ``where`` narrows it ("on a runtime of this host")."""

    def __init__(self, name: str, *, where: str = "") -> None:
        super().__init__(f"no service named {name!r}" + (f" {where}" if where else ""))
        self.service = name


class ConfigError(StalledError):
    """deployer.toml or the environment holds a wrong key or value."""


class ManifestError(StalledError):
    """service.yaml is invalid; ``problems`` lists every "file:line:col: path: message"."""

    reason = Reason.MANIFEST_INVALID

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


class SourceError(TransientError):
    reason = Reason.SOURCE_FETCH_FAILED


class ArtifactFetchError(TransientError):
    """A file the revision needs from outside git (a Git LFS object, an ``artifacts:`` file) is missing,
    unreachable, unusable or not the bytes its digest names.

    Transient: the object may be uploaded, the server come back or git-lfs be installed without
    any change in git. The message names each file and its object id.
    """

    reason = Reason.ARTIFACT_FETCH_FAILED


class BuildError(StalledError):
    reason = Reason.BUILD_FAILED

    def __init__(self, message: str, *, output: str = "") -> None:
        super().__init__(message)
        self.output = output


class RuntimeUnavailable(TransientError):
    reason = Reason.RUNTIME_UNAVAILABLE


class ApplyError(DeployerError):
    reason = Reason.APPLY_FAILED


class PortConflict(StalledError):
    reason = Reason.PORT_CONFLICT


class GatewayError(DeployerError):
    """The gateway (nginx) did not take a route table; the previous one stays live."""

    reason = Reason.GATEWAY_FAILED


class GatewayUnavailable(GatewayError, TransientError):
    """nginx is not installed, not running, or does not answer; retried later."""


class GatewayRejected(GatewayError, StalledError):
    """A route table refused before it went live (``nginx -t``, a clash, a value nginx syntax cannot hold).

    ``str()`` is the reason (for ``nginx -t``, nginx's own message); ``services`` names the
    services concerned, when the refusal is about particular ones.
    """

    def __init__(self, message: str, *, services: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.services = services
