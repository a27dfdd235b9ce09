"""Retention: deleting old finished jobs (``inferq purge``), in short transactions that never touch a running job."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session, sessionmaker

from inferq import constants
from inferq.schema import Chunk, Item, Job, utcnow
from inferq.states import FINISHED_JOB_STATES


@dataclass
class Purge:
    jobs: list[str] = field(default_factory=list)
    items: int = 0
    #: Transactions that deleted items (each at most ``batch_rows`` of them).
    batches: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"jobs": len(self.jobs), "job_ids": self.jobs, "items": self.items, "batches": self.batches}


def purge(
    sessions: sessionmaker[Session],
    older_than: dt.timedelta,
    *,
    batch_rows: int = constants.PURGE_BATCH_ROWS,
    dry_run: bool = False,
) -> Purge:
    """Delete jobs that finished more than ``older_than`` ago, with their chunks and items.

    Items go in batches of consecutive indices, one short transaction each, before the job row: a huge job never
    holds one giant transaction, and only rows of finished jobs are ever locked, so running jobs go on."""
    cutoff = utcnow() - older_than
    with sessions() as session:
        jobs = session.execute(
            select(Job.id, Job.total)
            .where(Job.state.in_(FINISHED_JOB_STATES), Job.finished_at.is_not(None), Job.finished_at < cutoff)
            .order_by(Job.finished_at)
        ).all()
    report = Purge()
    for job_id, total in jobs:
        report.jobs.append(job_id)
        if dry_run:
            report.items += total
            continue
        for start in range(0, total, batch_rows):
            with sessions.begin() as session:
                deleted = session.execute(
                    delete(Item).where(Item.job_id == job_id, Item.index >= start, Item.index < start + batch_rows)
                )
            report.items += deleted.rowcount  # type: ignore[attr-defined]
            report.batches += 1
        with sessions.begin() as session:
            session.execute(delete(Chunk).where(Chunk.job_id == job_id))
            session.execute(delete(Job).where(Job.id == job_id, Job.state.in_(FINISHED_JOB_STATES)))
    return report
