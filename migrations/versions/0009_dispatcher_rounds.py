"""the dispatcher's state: one row its leader rewrites, that any process reads

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "dispatcher_rounds",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("leader", sa.String(length=255), nullable=False),
        sa.Column("leader_since", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_round", sa.DateTime(timezone=True), nullable=False),
        sa.Column("released", sa.Integer(), nullable=False),
        sa.Column("queues", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_dispatcher_rounds")),
    )


def downgrade() -> None:
    op.drop_table("dispatcher_rounds")
