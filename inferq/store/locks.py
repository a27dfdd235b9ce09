"""The lock order of every transaction that changes a job's chunks, items and the job row together: **chunks first,
in (job, seq) order, then results, then the job**. The worker's result write and a cancel both start with
`lock_chunks`, so that neither waits on the other while holding what the other needs (a deadlock, which PostgreSQL
breaks by failing one of them). SQLite has one writer at a time and ignores ``FOR UPDATE``."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import ColumnElement, Connection, Row, select

from inferq.schema import Chunk, Job
from inferq.states import ChunkState, JobState


def lock_chunks(
    conn: Connection, where: ColumnElement[bool]
) -> Sequence[Row[str, int, ChunkState, int, int, int, JobState]]:
    """Lock the chunk rows matching ``where`` in (job, seq) order (their job's row is read, not locked); their
    ``job_id``, ``seq``, ``state``, ``attempts``, ``start`` and ``stop``, and their job's state as ``job_state``,
    read by name."""
    return conn.execute(
        select(
            Chunk.job_id,
            Chunk.seq,
            Chunk.state,
            Chunk.attempts,
            Chunk.start,
            Chunk.stop,
            Job.state.label("job_state"),
        )
        .join(Job, Job.id == Chunk.job_id)
        .where(where)
        .order_by(Chunk.job_id, Chunk.seq)
        .with_for_update(of=Chunk)
    ).all()
