"""Everything deployer says to or hears from Gitea, one room per job.

``webhook``: push payloads, signatures and filtering as pure functions (the Starlette
receiver in ``deployer.web.webhook`` calls them); ``client``: the REST client;
``status``: which commit state an outcome becomes and the background reporter;
``onboard``: the connection check and deployer's push webhook made or repaired.
"""

from deployer.gitea.client import (
    DESCRIPTION_LIMIT,
    CommitState,
    GiteaClient,
    GiteaError,
    GiteaRejected,
    description_text,
    split_repo,
)
from deployer.gitea.onboard import CheckLine, CheckTargets, HookChange, HookMemory, HookSpec, check, ensure_hook
from deployer.gitea.status import Retry, StatusReporter, state_for
from deployer.gitea.webhook import (
    PushEvent,
    WebhookError,
    classify,
    clone_url,
    extract_payload,
    parse_push,
    verify_signature,
)

__all__ = [
    "DESCRIPTION_LIMIT",
    "CheckLine",
    "CheckTargets",
    "CommitState",
    "GiteaClient",
    "GiteaError",
    "GiteaRejected",
    "HookChange",
    "HookMemory",
    "HookSpec",
    "PushEvent",
    "Retry",
    "StatusReporter",
    "WebhookError",
    "check",
    "classify",
    "clone_url",
    "description_text",
    "ensure_hook",
    "extract_payload",
    "parse_push",
    "split_repo",
    "state_for",
    "verify_signature",
]
