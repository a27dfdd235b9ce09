"""fair share: a job's priority and deadline, a tenant's weight and cap on chunks in flight, the dispatcher's index

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
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
    # Plain DROP COLUMN (SQLite 3.35+ has it), not a batch: a batch recreates the table, and on SQLite dropping
    # `jobs` to recreate it would cascade to every job's items.
    op.drop_index("ix_chunks_unreleased", table_name="chunks")
    for table, column in (
        ("tenants", "max_chunks_in_flight"),
        ("tenants", "weight"),
        ("jobs", "deadline_at"),
        ("jobs", "priority"),
    ):
        op.drop_column(table, column)
