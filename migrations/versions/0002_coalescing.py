"""coalescing: jobs.batch_key, chunks.leader

Workers run queued chunks of other jobs with the same task, model and parameters in one batch: ``jobs.batch_key``
finds them with an index, ``chunks.leader`` names the chunk whose claim took a chunk into its batch.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("batch_key", sa.String(length=64), nullable=True))
        batch_op.create_index("ix_jobs_batch_key_state", ["batch_key", "state"], unique=False)
    with op.batch_alter_table("chunks", schema=None) as batch_op:
        batch_op.add_column(sa.Column("leader", sa.String(length=48), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("chunks", schema=None) as batch_op:
        batch_op.drop_column("leader")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index("ix_jobs_batch_key_state")
        batch_op.drop_column("batch_key")
