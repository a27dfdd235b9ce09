"""the write path's keys: the index of a job's results by state only over its failed ones; items without a foreign key

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07

``ix_results_job_state`` held an entry for every result; the queries it served ask for a job's failed results
only (the failed filter, the error summary by code): succeeded ones are read by the primary key's job range. A
partial index of the failed ones serves them, and a COPY of succeeded results no longer writes an entry for each
(about a fifth of PostgreSQL's CPU for a result's row, measured on 20,480-row COPYs).

``items.job_id`` loses its foreign key to ``jobs``: its check ran once per row of a submit's COPY (a trigger: 3.3 of
5.8 µs of PostgreSQL's CPU an item). An item is written once, by the submit that writes its job in the same
transaction, and deleted only by retention (`inferq.store.maintenance.delete_items`, before its job's row), as
results already were (0006).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_FAILED = sa.text("state = 'failed'")


def upgrade() -> None:
    with op.batch_alter_table("items", schema=None) as batch_op:
        batch_op.drop_constraint("fk_items_job_id_jobs", type_="foreignkey")
    op.drop_index("ix_results_job_state", table_name="results")
    op.create_index(
        "ix_results_job_failed",
        "results",
        ["job_id", "error_code"],
        unique=False,
        postgresql_where=_FAILED,
        sqlite_where=_FAILED,
    )


def downgrade() -> None:
    op.drop_index("ix_results_job_failed", table_name="results")
    op.create_index("ix_results_job_state", "results", ["job_id", "state"], unique=False)
    with op.batch_alter_table("items", schema=None) as batch_op:
        batch_op.create_foreign_key("fk_items_job_id_jobs", "jobs", ["job_id"], ["id"], ondelete="CASCADE")
