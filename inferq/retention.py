"""Retention: deleting old finished jobs (``inferq purge``), in short transactions that never touch a running job
(the statements are `inferq.store.maintenance`), and the expired files of the OpenAI-compatible API, their rows and
their bytes (`purge_expired_files`; the statements are `inferq.store.openai`)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from inferq import constants
from inferq.schema import utcnow
from inferq.store import maintenance
from inferq.store import openai as openai_store


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


def purge_expired_files(
    sessions: sessionmaker[Session],
    files_dir: Path,
    *,
    now: dt.datetime | None = None,
    batch_rows: int = constants.PURGE_BATCH_ROWS,
    dry_run: bool = False,
) -> list[str]:
    """Delete the files of the OpenAI-compatible API that expired (``expires_at`` passed by ``now``): their rows,
    ``batch_rows`` a transaction, then their bytes in ``files_dir`` (a row goes first: a file is never listed
    without its bytes). The ids of the files deleted (with ``dry_run``: that would be)."""
    now = now or utcnow()
    deleted: list[str] = []
    while True:
        with sessions.begin() as session:
            expired = openai_store.expired_files(session, now, batch_rows)
            if dry_run or not expired:
                return deleted + expired
            gone = openai_store.delete_expired_files(session, expired, now)
        for file_id in gone:
            (files_dir / file_id).unlink(missing_ok=True)
        deleted += gone
        if len(expired) < batch_rows:
            return deleted
