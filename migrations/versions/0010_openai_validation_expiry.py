"""OpenAI-compatible API: batches validated in the background (a lease), files that expire

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("openai_files") as table:
        table.add_column(sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True))
        table.create_index("ix_openai_files_expires_at", ["expires_at"], unique=False)
    with op.batch_alter_table("openai_batches") as table:
        table.add_column(sa.Column("webhook_url", sa.Text(), nullable=True))
        table.add_column(sa.Column("output_expires_after", sa.Integer(), nullable=True))
        table.add_column(sa.Column("validated_at", sa.DateTime(timezone=True), nullable=True))
        table.add_column(sa.Column("lease_owner", sa.String(length=32), nullable=True))
        table.add_column(sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True))
        table.create_index("ix_openai_batches_lease_until", ["lease_until"], unique=False)
    # Every batch made before was validated in its request.
    op.execute(sa.text("UPDATE openai_batches SET validated_at = created_at"))


def downgrade() -> None:
    with op.batch_alter_table("openai_batches") as table:
        table.drop_index("ix_openai_batches_lease_until")
        table.drop_column("lease_until")
        table.drop_column("lease_owner")
        table.drop_column("validated_at")
        table.drop_column("output_expires_after")
        table.drop_column("webhook_url")
    with op.batch_alter_table("openai_files") as table:
        table.drop_index("ix_openai_files_expires_at")
        table.drop_column("expires_at")
