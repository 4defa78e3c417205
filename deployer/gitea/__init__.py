"""Everything deployer says to or hears from Gitea, one room per job.

``webhook``: push payloads, signatures and filtering as pure functions (the Starlette
receiver in ``deployer.web.webhook`` calls them); ``client``: the REST client;
``status``: which commit state an outcome becomes and the background reporter.
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
from deployer.gitea.status import StatusReporter, state_for
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
    "CommitState",
    "GiteaClient",
    "GiteaError",
    "GiteaRejected",
    "PushEvent",
    "StatusReporter",
    "WebhookError",
    "classify",
    "clone_url",
    "description_text",
    "extract_payload",
    "parse_push",
    "split_repo",
    "state_for",
    "verify_signature",
]
