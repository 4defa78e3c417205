"""Blue/green slots: two loopback ports per service behind the gateway, and which slot serves.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "slot_ports",
        sa.Column("service", sa.String(64), nullable=False),
        sa.Column("slot", sa.String(16), nullable=False),
        sa.Column("port", sa.Integer(), nullable=False),
        sa.Column("allocated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("service", "slot", name=op.f("pk_slot_ports")),
        sa.UniqueConstraint("port", name=op.f("uq_slot_ports_port")),
    )
    with op.batch_alter_table("services") as batch:
        batch.add_column(sa.Column("active_slot", sa.String(16), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("services") as batch:
        batch.drop_column("active_slot")
    op.drop_table("slot_ports")
