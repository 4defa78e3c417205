"""Demo results: every demo input's answer per revision (binary answers live in files).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "demo_results",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("service", sa.String(64), nullable=False),
        sa.Column("revision_id", sa.Integer(), nullable=True),
        sa.Column("attempt_id", sa.Integer(), nullable=True),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("ok", sa.Boolean(), nullable=False),
        sa.Column("status", sa.Integer(), nullable=True),
        sa.Column("latency_ms", sa.Float(), nullable=True),
        sa.Column("content_type", sa.String(200), nullable=False),
        sa.Column("text", sa.Text(), nullable=True),
        sa.Column("body_file", sa.Text(), nullable=True),
        sa.Column("truncated", sa.Boolean(), nullable=False),
        sa.Column("problems", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["revision_id"], ["revisions.id"], name=op.f("fk_demo_results_revision_id_revisions")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_demo_results")),
    )
    op.create_index(op.f("ix_demo_results_service_revision_id"), "demo_results", ["service", "revision_id"])


def downgrade() -> None:
    op.drop_index(op.f("ix_demo_results_service_revision_id"), table_name="demo_results")
    op.drop_table("demo_results")
