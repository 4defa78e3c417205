"""Overrides keep their history (cleared_at, cleared_by); released ports wait out a grace period.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("overrides", sa.Column("cleared_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("overrides", sa.Column("cleared_by", sa.String(200), nullable=True))
    op.create_table(
        "released_ports",
        sa.Column("port", sa.Integer(), nullable=False),
        sa.Column("service", sa.String(64), nullable=False),
        sa.Column("released_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("port", name=op.f("pk_released_ports")),
    )


def downgrade() -> None:
    op.drop_table("released_ports")
    op.drop_column("overrides", "cleared_by")
    op.drop_column("overrides", "cleared_at")
