"""Retention: deleting old finished jobs (``inferq purge``), in short transactions that never touch a running job
(the statements are `inferq.store.maintenance`)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from inferq import constants
from inferq.schema import utcnow
from inferq.store import maintenance


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
        jobs = maintenance.finished_before(session, cutoff)
    report = Purge()
    for job in jobs:
        report.jobs.append(job.id)
        if dry_run:
            report.items += job.total
            continue
        for start in range(0, job.total, batch_rows):
            with sessions.begin() as session:
                report.items += maintenance.delete_items(session, job.id, start, start + batch_rows)
            report.batches += 1
        with sessions.begin() as session:
            maintenance.delete_job(session, job.id)
    return report
