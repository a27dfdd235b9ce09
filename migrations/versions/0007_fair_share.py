"""fair share: a job's priority and deadline, a tenant's weight and cap on chunks in flight, the dispatcher's index

Revision ID: 0007
Revises: 0005
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UNRELEASED = "state = 'queued' AND enqueued_at IS NULL"


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("priority", sa.Integer(), server_default="5", nullable=False))
        batch_op.add_column(sa.Column("deadline_at", sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table("tenants", schema=None) as batch_op:
        batch_op.add_column(sa.Column("weight", sa.Integer(), server_default="1", nullable=False))
        batch_op.add_column(sa.Column("max_chunks_in_flight", sa.Integer(), nullable=True))
    op.create_index(
        "ix_chunks_unreleased",
        "chunks",
        ["job_id", "seq"],
        postgresql_where=sa.text(UNRELEASED),
        sqlite_where=sa.text(UNRELEASED),
    )


def downgrade() -> None:
    op.drop_index("ix_chunks_unreleased", table_name="chunks")
    with op.batch_alter_table("tenants", schema=None) as batch_op:
        batch_op.drop_column("max_chunks_in_flight")
        batch_op.drop_column("weight")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("deadline_at")
        batch_op.drop_column("priority")
