"""Initial schema: sources, services, revisions, attempts, steps, deliveries, ports, observations, overrides.

Revision ID: 0001
Revises:
Create Date: 2024-11-28
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _when(name: str, *, nullable: bool = False) -> sa.Column[datetime]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "sources",
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("branch", sa.String(200), nullable=False),
        sa.Column("origin", sa.String(16), nullable=False),
        sa.Column("last_sha", sa.String(64), nullable=True),
        _when("last_checked_at", nullable=True),
        _when("created_at"),
        sa.CheckConstraint("origin IN ('config', 'gitea')", name=op.f("ck_sources_origin")),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_sources")),
    )
    op.create_table(
        "revisions",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("service", sa.String(64), nullable=False),
        sa.Column("sha", sa.String(64), nullable=False),
        sa.Column("author", sa.Text(), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("manifest_text", sa.Text(), nullable=False),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column("spec_hash", sa.String(64), nullable=False),
        _when("created_at"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_revisions")),
    )
    op.create_index("ix_revisions_service_id", "revisions", ["service", "id"])
    op.create_table(
        "services",
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("source", sa.String(200), nullable=False),
        sa.Column("runtime", sa.String(32), nullable=False),
        sa.Column("removed", sa.Boolean(), nullable=False),
        sa.Column("desired_revision_id", sa.Integer(), nullable=True),
        sa.Column("running_revision_id", sa.Integer(), nullable=True),
        _when("created_at"),
        _when("updated_at"),
        sa.ForeignKeyConstraint(
            ["desired_revision_id"], ["revisions.id"], name=op.f("fk_services_desired_revision_id_revisions")
        ),
        sa.ForeignKeyConstraint(
            ["running_revision_id"], ["revisions.id"], name=op.f("fk_services_running_revision_id_revisions")
        ),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_services")),
    )
    op.create_table(
        "attempts",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("service", sa.String(64), nullable=False),
        sa.Column("revision_id", sa.Integer(), nullable=True),
        sa.Column("trigger", sa.String(32), nullable=False),
        sa.Column("outcome", sa.String(32), nullable=False),
        sa.Column("reason", sa.String(64), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        _when("started_at"),
        _when("finished_at", nullable=True),
        sa.Column("rolled_back_to", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(["revision_id"], ["revisions.id"], name=op.f("fk_attempts_revision_id_revisions")),
        sa.ForeignKeyConstraint(
            ["rolled_back_to"], ["revisions.id"], name=op.f("fk_attempts_rolled_back_to_revisions")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_attempts")),
    )
    op.create_index("ix_attempts_service_id", "attempts", ["service", "id"])
    op.create_index(op.f("ix_attempts_revision_id"), "attempts", ["revision_id"])
    op.create_index(op.f("ix_attempts_outcome"), "attempts", ["outcome"])
    op.create_table(
        "steps",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("attempt_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("duration", sa.Float(), nullable=False),
        sa.Column("ok", sa.Boolean(), nullable=False),
        sa.Column("output_tail", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["attempt_id"], ["attempts.id"], name=op.f("fk_steps_attempt_id_attempts"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_steps")),
    )
    op.create_index(op.f("ix_steps_attempt_id"), "steps", ["attempt_id"])
    op.create_table(
        "deliveries",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("delivery_id", sa.String(100), nullable=False),
        sa.Column("event", sa.String(32), nullable=False),
        sa.Column("repository", sa.String(200), nullable=False),
        sa.Column("ref", sa.String(255), nullable=False),
        sa.Column("after", sa.String(64), nullable=False),
        sa.Column("result", sa.String(32), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        _when("received_at"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_deliveries")),
    )
    op.create_index("ix_deliveries_repository_ref_after", "deliveries", ["repository", "ref", "after"])
    op.create_table(
        "port_allocations",
        sa.Column("service", sa.String(64), nullable=False),
        sa.Column("port", sa.Integer(), nullable=False),
        _when("allocated_at"),
        sa.PrimaryKeyConstraint("service", name=op.f("pk_port_allocations")),
        sa.UniqueConstraint("port", name=op.f("uq_port_allocations_port")),
    )
    op.create_table(
        "observations",
        sa.Column("service", sa.String(64), nullable=False),
        sa.Column("state", sa.String(32), nullable=False),
        sa.Column("healthy", sa.Boolean(), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        _when("observed_at"),
        sa.PrimaryKeyConstraint("service", name=op.f("pk_observations")),
    )
    op.create_table(
        "overrides",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("service", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("revision_id", sa.Integer(), nullable=True),
        sa.Column("who", sa.String(200), nullable=False),
        sa.Column("why", sa.Text(), nullable=False),
        _when("created_at"),
        sa.CheckConstraint("kind IN ('pinned', 'suspended')", name=op.f("ck_overrides_kind")),
        sa.ForeignKeyConstraint(["revision_id"], ["revisions.id"], name=op.f("fk_overrides_revision_id_revisions")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_overrides")),
    )
    op.create_index(op.f("ix_overrides_service"), "overrides", ["service"])


def downgrade() -> None:
    for table in (
        "overrides",
        "observations",
        "port_allocations",
        "deliveries",
        "steps",
        "attempts",
        "services",
        "revisions",
        "sources",
    ):
        op.drop_table(table)
