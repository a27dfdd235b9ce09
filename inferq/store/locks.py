"""The lock order of every transaction that changes a job's chunks, items and the job row together: **chunks first,
in (job, seq) order, then results, then the job**. The worker's result write and a cancel both start with
`lock_chunks`, so that neither waits on the other while holding what the other needs (a deadlock, which PostgreSQL
breaks by failing one of them). SQLite has one writer at a time and ignores ``FOR UPDATE``."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import ColumnElement, Connection, Row, func, select

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


#: The key of the dispatcher's leader lock (a PostgreSQL advisory lock, scoped to the database): "inferq" in ASCII.
DISPATCHER_LOCK = 0x696E6665_7271


def try_leader_lock(conn: Connection, key: int = DISPATCHER_LOCK) -> bool:
    """Take the session-level advisory lock ``key`` on ``conn`` if no other connection holds it. It is held until
    ``conn`` closes (or its process dies: PostgreSQL lets it go with the connection), whatever the transactions."""
    return bool(conn.execute(select(func.pg_try_advisory_lock(key))).scalar())


def leader_alive(conn: Connection) -> None:
    """One trivial statement on the leader's connection: raises when it is gone (and the lock with it)."""
    conn.execute(select(1))
