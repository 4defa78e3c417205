"""Service snapshots: the last log lines and /info answer, captured by the reconciler for the pages.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "service_snapshots",
        sa.Column("service", sa.String(64), nullable=False),
        sa.Column("logs_tail", sa.Text(), nullable=False),
        sa.Column("info", sa.JSON(), nullable=True),
        sa.Column("info_error", sa.Text(), nullable=False),
        sa.Column("captured_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("service", name=op.f("pk_service_snapshots")),
    )


def downgrade() -> None:
    op.drop_table("service_snapshots")
