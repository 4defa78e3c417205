"""Overrides may be "stopped": an operator's desired state that passes, pushes and restarts keep.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    _kinds("'pinned', 'suspended', 'stopped'")


def downgrade() -> None:
    op.execute("DELETE FROM overrides WHERE kind = 'stopped'")
    _kinds("'pinned', 'suspended'")


def _kinds(allowed: str) -> None:
    # SQLite rebuilds the table (batch mode); the named constraint is dropped and made again.
    with op.batch_alter_table("overrides", recreate="always") as batch:
        batch.drop_constraint(op.f("ck_overrides_kind"), type_="check")
        batch.create_check_constraint(op.f("ck_overrides_kind"), f"kind IN ({allowed})")
