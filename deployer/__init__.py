"""deployer: a GitOps deployer daemon for a fleet of AI model services.

A signed Gitea push (or a poll) names a commit; deployer reads its
``service.yaml``, reconciles Supervisor and Docker to match, gates each change
on health, rolls back what fails and records every revision.
"""

__version__ = "0.1.0"
