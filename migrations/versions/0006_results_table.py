"""results table: an item's outcome is appended once to ``results``; ``items`` keeps only the input

Each item row was written twice (inserted with its input at submit, rewritten by an UPDATE with its result: in
PostgreSQL a whole new row version and its index entries). Results now go to their own insert-only table (filled by
binary COPY), keyed as the items are. An item's state is stored only once it has ended by itself (succeeded or
failed, on its result); before that it follows its job's (cancelled, expired, else queued), so that a cancel
touches no item.

Upgrade moves every item that ended by itself (succeeded or failed) to ``results`` with its outcome columns, then
drops those columns (and the item's state) from ``items``. Downgrade puts them back from ``results`` (an item
without a result is ``cancelled`` in a cancelled job, else ``queued``) and drops ``results``.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: The outcome columns that move from ``items`` to ``results`` (besides the state), with their types.
_MOVED: tuple[tuple[str, sa.types.TypeEngine[object]], ...] = (
    ("result", sa.JSON()),
    ("vector", sa.LargeBinary()),
    ("label", sa.String(length=255)),
    ("score", sa.Float()),
    ("answer", sa.Text()),
    ("start_char", sa.Integer()),
    ("end_char", sa.Integer()),
    ("entity_count", sa.Integer()),
    ("error_code", sa.String(length=64)),
    ("error_message", sa.Text()),
    ("finished_at", sa.DateTime(timezone=True)),
)

#: Every column copied between the tables, quoted.
_COPIED = ", ".join(f'"{name}"' for name in ("state", *(n for n, _ in _MOVED), "attempts"))


def upgrade() -> None:
    op.create_table(
        "results",
        sa.Column("job_id", sa.String(length=32), nullable=False),
        sa.Column("index", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        *(sa.Column(name, type_, nullable=True) for name, type_ in _MOVED if name != "finished_at"),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("job_id", "index", name=op.f("pk_results")),
    )
    with op.batch_alter_table("results", schema=None) as batch_op:
        batch_op.create_index("ix_results_job_label", ["job_id", "label"], unique=False)
        batch_op.create_index("ix_results_job_state", ["job_id", "state"], unique=False)
    op.execute(
        f'INSERT INTO results (job_id, "index", {_COPIED}) '
        f"SELECT job_id, \"index\", {_COPIED} FROM items WHERE state IN ('succeeded', 'failed')"
    )
    with op.batch_alter_table("items", schema=None) as batch_op:
        batch_op.drop_index("ix_items_job_label")
        batch_op.drop_index("ix_items_job_state")
        for name, _ in _MOVED:
            batch_op.drop_column(name)
        batch_op.drop_column("state")
        batch_op.drop_column("attempts")


def downgrade() -> None:
    with op.batch_alter_table("items", schema=None) as batch_op:
        batch_op.add_column(sa.Column("state", sa.String(length=16), nullable=False, server_default="queued"))
        for name, type_ in _MOVED:
            batch_op.add_column(sa.Column(name, type_, nullable=True))
        batch_op.add_column(sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"))
    op.execute(
        f"UPDATE items SET ({_COPIED}) = "
        f'(SELECT {_COPIED} FROM results r WHERE r.job_id = items.job_id AND r."index" = items."index") '
        'WHERE EXISTS (SELECT 1 FROM results r WHERE r.job_id = items.job_id AND r."index" = items."index")'
    )
    # An item without a result in a job that stopped ended with its job (0005 knows no expired item: cancelled).
    op.execute(
        "UPDATE items SET state = 'cancelled', "
        "finished_at = (SELECT j.finished_at FROM jobs j WHERE j.id = items.job_id) "
        "WHERE state = 'queued' AND job_id IN (SELECT id FROM jobs WHERE state IN ('cancelled', 'expired'))"
    )
    with op.batch_alter_table("items", schema=None) as batch_op:
        batch_op.create_index("ix_items_job_label", ["job_id", "label"], unique=False)
        batch_op.create_index("ix_items_job_state", ["job_id", "state"], unique=False)
    op.drop_table("results")
