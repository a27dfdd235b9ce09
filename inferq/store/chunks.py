"""The claim protocol in SQL: how a worker takes a chunk, keeps it, and stores its results, exactly once.

One delivery of a chunk's message goes through three steps, each its own transaction:

1. **Claim** (`claim_chunk`, then `claim_mates`): lock the chunk row, lease it to this worker (``running``,
   ``lease_until``, ``attempts + 1``), start its job, read its still-``queued`` items (`unfinished_items`). On
   PostgreSQL that is one statement, the items coming back as two aggregated columns (indices, and inputs as one
   JSON array decoded by one call); SQLite runs a statement per step. A small chunk also takes queued chunks of
   other jobs into its batch (see `worker.runner` for coalescing).
2. **Lease** (`renew_leases`, which `worker.runner.LeaseKeeper` calls from a thread): while the batch computes,
   outside any transaction, renew the leases, so that an expired lease means a dead worker, never a slow chunk.
3. **Write** (`write_results`): lock the chunk rows (`inferq.store.locks.lock_chunks`), then their items still
   ``queued``; only those get a result. Each chunk becomes ``done``, or ``queued`` again when it stopped early; the
   jobs' counters move and a job whose every item ended finishes, recording its webhook delivery
   (`inferq.store.outbox`) in the same transaction. An item's ``attempts`` is stamped with its result: its chunk's
   claims so far, each of which read it queued.

Statements run on the session's connection (Core), not through the ORM session: these functions load no ORM
objects, and the ORM layer cost ~0.3 ms a statement, a tenth of a chunk's control-plane time on a fast device
(only the result write on SQLite, an ORM bulk UPDATE by primary key, goes through the session).

Idempotent: a chunk already done claims nothing, and an item gets a result only while it is still ``queued``,
under a row lock, so two deliveries of one chunk never write an item twice. Rows are locked in key order, so
two writers never wait on each other in a circle.

The store knows the worker's pieces only by what it reads of them: an item's outcome (`ItemOutcome`, the worker's
`worker.engines.base.Outcome`) and a stage clock (`Laps`, the worker's `worker.stages.StageClock`).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from functools import lru_cache
from typing import Any, Literal, Protocol

import orjson
from sqlalchemy import ColumnElement, Text, TextClause, and_, bindparam, case, cast, func, or_, select, text, update
from sqlalchemy.dialects.postgresql import aggregate_order_by
from sqlalchemy.orm import Session

from inferq.errors import InferqError
from inferq.schema import Chunk, Item, Job, as_utc, utcnow
from inferq.states import UNFINISHED_JOB_STATES, ChunkState, ItemState, JobState
from inferq.store.dialect import Dialect, dialect_of
from inferq.store.locks import lock_chunks
from inferq.store.outbox import record_job_ends
from inferq.task_specs import TaskName, TaskParams, read_params

log = logging.getLogger(__name__)

#: Most chunks one batch takes from other jobs (each a claim and, later, a skipped message).
MAX_MATES = 1_000

#: The `Item` columns of a top result (`TaskSpec.top_columns` names those a task fills), and of a vector.
RESULT_COLUMNS = ("label", "score", "answer", "start_char", "end_char", "entity_count", "vector")

#: Every `Item` column an outcome sets, in the order of `ItemOutcome.values`.
OUTCOME_COLUMNS = ("state", "result", *RESULT_COLUMNS, "error_code", "error_message")


class ChunkOutcome(str, Enum):
    """What one delivery of a chunk's message came to (`worker.runner.ChunkReport.outcome`)."""

    #: Every item of the chunk has ended: the chunk is ``done`` and its message is acknowledged.
    DONE = "done"
    #: Nothing to do: the chunk was already done, or its job finished or is gone.
    SKIPPED = "skipped"
    #: Its job was cancelled mid-chunk: the micro-batches that ran are stored, the rest of the items are cancelled.
    STOPPED = "stopped"
    #: The worker is shutting down: the micro-batches that ran are stored, the chunk is ``queued`` again and its
    #: message must go back to the broker (the task rejects it with requeue).
    HANDED_BACK = "handed_back"
    #: Another worker's batch is running the chunk (its lease is live): the message must come back later (the task
    #: retries it with a countdown), and is acknowledged only once a new copy is on the broker.
    DEFERRED = "deferred"


#: Why `claim_chunk` claimed nothing, as the delivery's outcome.
NotClaimed = Literal[ChunkOutcome.SKIPPED, ChunkOutcome.DEFERRED]


class Laps(Protocol):
    """What the claim reads of a stage clock (`worker.stages.StageClock`): a lap ends a named stage."""

    def lap(self, stage: str) -> None: ...


class ItemOutcome(Protocol):
    """What the write reads of one item's outcome (`worker.engines.base.Outcome`)."""

    @property
    def ok(self) -> bool: ...

    def values(self) -> tuple[Any, ...]:
        """The item's columns this outcome sets, in `OUTCOME_COLUMNS` order."""
        ...


@dataclass
class Claim:
    """A chunk leased to this worker, with the items it still has to run."""

    job_id: str
    seq: int
    task: TaskName
    model: str
    #: The job's parameters, typed (validated here, once, for the engine).
    params: TaskParams
    indices: list[int]
    inputs: list[dict[str, Any]]
    #: Claimed more often than `worker.runner.MAX_CHUNK_ATTEMPTS`: its items are given up, not run again.
    attempts: int = 1
    #: The job's `Job.batch_key` and queue: chunks of jobs with the same key on the same queue may run in one batch.
    batch_key: str | None = None
    queue: str | None = None
    #: Since when the chunk has been waiting for a worker: its last enqueueing, else its job's creation.
    waiting_since: dt.datetime | None = None

    @property
    def key(self) -> str:
        return chunk_key(self.job_id, self.seq)


@dataclass(frozen=True)
class StoredChunk:
    """What `write_results` stored for one claimed chunk."""

    #: Items of this chunk given a result, and given an error, by this write.
    succeeded: int = 0
    failed: int = 0
    #: Every item of the chunk has ended: the chunk is ``done``. Otherwise it is ``queued`` again, leaderless,
    #: and its own message runs the rest.
    complete: bool = True


@dataclass(frozen=True)
class Written:
    """What `write_results` stored."""

    #: One per claim, in order.
    chunks: list[StoredChunk]
    #: Webhook deliveries of the jobs this write ended: the caller enqueues them once it has committed.
    webhooks: list[str]


def chunk_key(job_id: str, seq: int) -> str:
    """How `Chunk.leader` names a chunk."""
    return f"{job_id}/{seq}"


# -- 1. claim ----------------------------------------------------------------------------------------------


def unfinished_items() -> ColumnElement[bool]:
    """The items a claim reads: those without a result yet. The one place that says how (with `_UNFINISHED_ITEM_SQL`,
    its text form in `_CLAIM_STATEMENT`): a change of where results live changes only these two."""
    return Item.state == ItemState.QUEUED


#: `unfinished_items` as SQL text on the items aliased ``i`` (``:item_queued`` is bound to ``ItemState.QUEUED``),
#: the state tested in a form no index serves: the chunk's range comes from a joined row, not a constant, and the
#: planner would otherwise take the (job, state) index and read every queued item of the job for each chunk.
_UNFINISHED_ITEM_SQL = "i.state || '' = :item_queued"


def claim_chunk(
    session: Session, job_id: str, seq: int, *, worker: str, lease_seconds: int, clock: Laps | None = None
) -> Claim | NotClaimed:
    """Lease a chunk to this worker and read its unfinished items. `ChunkOutcome.SKIPPED`: nothing to do.
    `ChunkOutcome.DEFERRED`: another worker's batch is running it (see `worker.runner`). ``clock`` times the
    claim and the input read apart (on PostgreSQL the read is part of the claim's statement: its lap is the
    inputs' decoding).

    PostgreSQL: one statement (`_CLAIM_STATEMENT`) locks the chunk, decides, leases it, starts its job, releases an
    earlier batch it led, and returns the job's columns with the chunk's unfinished items as two aggregated columns
    (their indices, and their inputs as one JSON array decoded by one call). SQLite: one statement per step."""
    if dialect_of(session) is Dialect.POSTGRESQL:
        return _claim_chunk_in_one(session, job_id, seq, worker=worker, lease_seconds=lease_seconds, clock=clock)
    return _claim_chunk_by_steps(session, job_id, seq, worker=worker, lease_seconds=lease_seconds, clock=clock)


#: The PostgreSQL claim of one chunk, in one round trip. ``c`` locks the chunk row (its latest version, after
#: waiting for a concurrent holder) and ``j`` reads its job; ``act`` decides what `_claim_chunk_by_steps` decides
#: in Python: ``skip`` (done), ``close`` (its job finished: the chunk is done), ``defer`` (a live lease in another
#: worker's batch) or ``lease``. Data-modifying CTEs run once whatever the outer query reads: ``leased`` leases it,
#: ``closed`` closes it, ``released`` frees the unfinished batch-mates of an earlier attempt it led, ``started``
#: starts its job. The outer query reads the unfinished items only for a leased chunk whose row version is the one
#: the statement's snapshot sees (``fresh``): a chunk changed by a transaction that committed while this one waited
#: for its lock may have items written since the snapshot, and `_claim_chunk_in_one` then reads them again, in a
#: statement of its own.
_CLAIM_STATEMENT = text(
    """
WITH c AS (
    SELECT ch.state, ch.attempts, ch.leader, ch.lease_until, ch.start, ch.stop, ch.enqueued_at,
           CAST(ch.xmin AS text) AS version
    FROM chunks AS ch WHERE ch.job_id = :job_id AND ch.seq = :seq
    FOR UPDATE
), j AS (
    SELECT jb.state, jb.task, jb.model, jb.params, jb.batch_key, jb.queue, jb.created_at
    FROM jobs AS jb WHERE jb.id = :job_id
), act AS (
    SELECT CASE
        WHEN c.state = :done THEN 'skip'
        WHEN j.state IN (:succeeded, :failed, :cancelled) THEN 'close'
        WHEN c.state = :running AND c.leader IS NOT NULL AND c.lease_until > :now THEN 'defer'
        ELSE 'lease'
    END AS act
    FROM c CROSS JOIN j
), leased AS (
    UPDATE chunks SET state = :running, attempts = chunks.attempts + 1, lease_until = :lease_until,
        worker = :worker, leader = NULL
    FROM act WHERE act.act = 'lease' AND chunks.job_id = :job_id AND chunks.seq = :seq
    RETURNING chunks.attempts
), closed AS (
    UPDATE chunks SET state = :done, finished_at = :now, leader = NULL
    FROM act WHERE act.act = 'close' AND chunks.job_id = :job_id AND chunks.seq = :seq
    RETURNING chunks.seq
), released AS (
    UPDATE chunks SET state = :queued, leader = NULL, lease_until = NULL, worker = NULL
    FROM leased WHERE leased.attempts > 1 AND chunks.leader = :key AND chunks.state = :running
    RETURNING chunks.seq
), started AS (
    UPDATE jobs SET state = :running, started_at = :now
    FROM leased WHERE jobs.id = :job_id AND jobs.state = :job_queued
    RETURNING jobs.id
)
SELECT act.act, leased.attempts, j.task, j.model, j.params, j.batch_key, j.queue,
    COALESCE(c.enqueued_at, j.created_at) AS waiting_since,
    (SELECT count(*) FROM released) AS released, (SELECT count(*) FROM closed) AS closed,
    (SELECT count(*) FROM started) AS started, fresh.fresh, items.indices, items.inputs
FROM c CROSS JOIN j CROSS JOIN act LEFT JOIN leased ON true
CROSS JOIN LATERAL (
    SELECT c.version = (SELECT CAST(s.xmin AS text) FROM chunks AS s WHERE s.job_id = :job_id AND s.seq = :seq)
    AS fresh
) AS fresh
LEFT JOIN LATERAL (
    SELECT array_agg(i.index ORDER BY i.index) AS indices, CAST(json_agg(i.input ORDER BY i.index) AS text) AS inputs
    FROM items AS i
    WHERE leased.attempts IS NOT NULL AND fresh.fresh
        AND i.job_id = :job_id AND i.index >= c.start AND i.index < c.stop AND """
    + _UNFINISHED_ITEM_SQL
    + """
) AS items ON true
"""
)


def _claim_chunk_in_one(
    session: Session, job_id: str, seq: int, *, worker: str, lease_seconds: int, clock: Laps | None
) -> Claim | NotClaimed:
    """`claim_chunk` on PostgreSQL: `_CLAIM_STATEMENT`, and a second read of the items only when the chunk changed
    while the statement waited for its lock."""
    conn = session.connection()
    now = utcnow()
    row = conn.execute(
        _CLAIM_STATEMENT,
        {
            "job_id": job_id,
            "seq": seq,
            "key": chunk_key(job_id, seq),
            "now": now,
            "lease_until": now + dt.timedelta(seconds=lease_seconds),
            "worker": worker,
            "queued": ChunkState.QUEUED.value,
            "running": ChunkState.RUNNING.value,
            "done": ChunkState.DONE.value,
            "succeeded": JobState.SUCCEEDED.value,
            "failed": JobState.FAILED.value,
            "cancelled": JobState.CANCELLED.value,
            "job_queued": JobState.QUEUED.value,
            "item_queued": ItemState.QUEUED.value,
        },
    ).one_or_none()
    if row is None:
        log.warning("job %s chunk %d is gone; dropping its message", job_id, seq)
        return ChunkOutcome.SKIPPED
    if row.act in ("skip", "close"):
        return ChunkOutcome.SKIPPED
    if row.act == "defer":
        return ChunkOutcome.DEFERRED
    if row.released:
        log.warning("job %s chunk %d: released %d chunks of its unfinished earlier batch", job_id, seq, row.released)
    if clock is not None:
        clock.lap("claim")
    if row.fresh:
        indices: list[int] = row.indices or []
        inputs: list[dict[str, Any]] = decode_inputs(row.inputs) if row.inputs is not None else []
    else:
        # The chunk changed while this claim waited for its lock: the statement's snapshot predates that change.
        if row.attempts > 1:
            _release_earlier_batch(session, job_id, seq)
        indices, inputs = _read_items(session, job_id, seq)
    if clock is not None:
        clock.lap("read")
    task = TaskName(row.task)
    return Claim(
        job_id=job_id,
        seq=seq,
        task=task,
        model=row.model,
        params=read_params(task, row.params),
        indices=indices,
        inputs=inputs,
        attempts=row.attempts,
        batch_key=row.batch_key,
        queue=row.queue,
        waiting_since=row.waiting_since,
    )


def _read_items(session: Session, job_id: str, seq: int) -> tuple[list[int], list[dict[str, Any]]]:
    """The unfinished items of a chunk (locked by this transaction): their indices and inputs, in index order."""
    rows = (
        session.connection()
        .execute(
            select(Item.index.label("item_index"), Item.input)
            .join(Chunk, and_(Chunk.job_id == Item.job_id, Item.index >= Chunk.start, Item.index < Chunk.stop))
            .where(Chunk.job_id == job_id, Chunk.seq == seq, Item.job_id == job_id, unfinished_items())
            .order_by(Item.index)
        )
        .all()
    )
    return [r.item_index for r in rows], [r.input for r in rows]


def decode_inputs(array: str | bytes) -> list[dict[str, Any]]:
    """A chunk's inputs from the JSON array the claim aggregated them into, in one call (orjson; the standard
    library's parser for what orjson refuses and ``json.dumps`` writes, such as a lone surrogate's escape)."""
    try:
        return orjson.loads(array)
    except orjson.JSONDecodeError:
        return json.loads(array)


def _claim_chunk_by_steps(
    session: Session, job_id: str, seq: int, *, worker: str, lease_seconds: int, clock: Laps | None = None
) -> Claim | NotClaimed:
    """`claim_chunk` one statement per step (SQLite; and what `_CLAIM_STATEMENT` does in one)."""
    conn = session.connection()
    row = conn.execute(
        select(
            Job.state.label("job_state"),
            Job.task,
            Job.model,
            Job.params,
            Job.batch_key,
            Job.queue,
            Job.created_at,
            Chunk.state.label("chunk_state"),
            Chunk.attempts,
            Chunk.leader,
            Chunk.lease_until,
            Chunk.start,
            Chunk.stop,
            Chunk.enqueued_at,
        )
        .join(Job, Job.id == Chunk.job_id)
        .where(Chunk.job_id == job_id, Chunk.seq == seq)
        .with_for_update(of=Chunk)
    ).one_or_none()
    if row is None:
        log.warning("job %s chunk %d is gone; dropping its message", job_id, seq)
        return ChunkOutcome.SKIPPED
    if row.chunk_state == ChunkState.DONE:
        return ChunkOutcome.SKIPPED
    this_chunk = (Chunk.job_id == job_id, Chunk.seq == seq)
    now = utcnow()
    if row.job_state.finished:
        conn.execute(update(Chunk).where(*this_chunk).values(state=ChunkState.DONE, finished_at=now, leader=None))
        return ChunkOutcome.SKIPPED
    if (
        row.chunk_state == ChunkState.RUNNING
        and row.leader is not None
        and row.lease_until is not None
        and as_utc(row.lease_until) > now
    ):
        return ChunkOutcome.DEFERRED
    attempts = row.attempts + 1
    conn.execute(
        update(Chunk)
        .where(*this_chunk)
        .values(
            state=ChunkState.RUNNING,
            attempts=attempts,
            lease_until=now + dt.timedelta(seconds=lease_seconds),
            worker=worker,
            leader=None,
        )
    )
    if attempts > 1:
        _release_earlier_batch(session, job_id, seq)
    start_jobs(session, [job_id], now)
    task = TaskName(row.task)
    if clock is not None:
        clock.lap("claim")
    # A read, not a write: an item's attempts are stamped with its result (`write_results`), and an UPDATE here
    # rewrote every row of the chunk (all its indexes' entries too) once more per delivery.
    items = conn.execute(
        select(Item.index.label("item_index"), Item.input)
        .where(Item.job_id == job_id, Item.index >= row.start, Item.index < row.stop, unfinished_items())
        .order_by(Item.index)
    ).all()
    if clock is not None:
        clock.lap("read")
    return Claim(
        job_id=job_id,
        seq=seq,
        task=task,
        model=row.model,
        params=read_params(task, row.params),
        indices=[item.item_index for item in items],
        inputs=[item.input for item in items],
        attempts=attempts,
        batch_key=row.batch_key,
        queue=row.queue,
        waiting_since=row.enqueued_at or row.created_at,
    )


def _release_earlier_batch(session: Session, job_id: str, seq: int) -> None:
    """A chunk claimed before: the batch it led then (if any) did not finish. Its unfinished batch-mates go back
    to their own messages, so that this chunk runs alone and a poison item among them cannot take it down again."""
    released = session.connection().execute(
        update(Chunk)
        .where(Chunk.leader == chunk_key(job_id, seq), Chunk.state == ChunkState.RUNNING)
        .values(state=ChunkState.QUEUED, leader=None, lease_until=None, worker=None)
    )
    if released.rowcount:
        log.warning(
            "job %s chunk %d: released %d chunks of its unfinished earlier batch",
            job_id,
            seq,
            released.rowcount,
        )


def claim_mates(
    session: Session,
    lead: Claim,
    *,
    worker: str,
    lease_seconds: int,
    max_items: int,
    clock: Laps | None = None,
) -> list[Claim]:
    """Take queued chunks of other jobs with the leader's batch key and queue into its batch, oldest jobs first,
    never tried before, until the batch holds ``max_items`` items (the last one taken may overshoot). Chunks
    locked by another transaction are skipped, not waited for. Nothing when the leader is full already, past its
    first attempt, or keyless."""
    room = max_items - len(lead.indices)
    if room <= 0 or lead.attempts != 1 or lead.batch_key is None:
        return []
    conn = session.connection()
    candidates = conn.execute(
        select(Chunk.job_id, Chunk.seq, Chunk.start, Chunk.stop, Chunk.enqueued_at, Job.created_at)
        .join(Job, Job.id == Chunk.job_id)
        .where(
            Job.batch_key == lead.batch_key,
            Job.state.in_(UNFINISHED_JOB_STATES),
            Job.task == lead.task.value,
            Job.model == lead.model,
            # Routed where the leader's job was (a job sent to a GPU queue is not taken by a CPU worker).
            Job.queue == lead.queue,
            # Other jobs only: a job's own chunk size is the user's choice of how to spread it over workers.
            Job.id != lead.job_id,
            Chunk.state == ChunkState.QUEUED,
            Chunk.attempts == 0,
        )
        .order_by(Job.created_at, Chunk.job_id, Chunk.seq)
        .limit(min(room, MAX_MATES))
        .with_for_update(of=Chunk, skip_locked=True)
    ).all()
    taken: list[tuple[str, int]] = []
    waiting_since: dict[tuple[str, int], dt.datetime | None] = {}
    items = 0
    for candidate in candidates:
        if items >= room:
            break
        key = (candidate.job_id, candidate.seq)
        taken.append(key)
        waiting_since[key] = candidate.enqueued_at or candidate.created_at
        items += candidate.stop - candidate.start
    if not taken:
        return []
    now = utcnow()
    conn.execute(
        update(Chunk)
        .where(keyed(Chunk.job_id, Chunk.seq, taken))
        .values(
            state=ChunkState.RUNNING,
            attempts=Chunk.attempts + 1,
            lease_until=now + dt.timedelta(seconds=lease_seconds),
            worker=worker,
            leader=lead.key,
        )
    )
    start_jobs(session, sorted({j for j, _ in taken}), now)
    if clock is not None:
        clock.lap("claim")
    read = _read_mates_aggregated if dialect_of(session) is Dialect.POSTGRESQL else _read_mates
    found = read(session, taken)
    if clock is not None:
        clock.lap("read")
    by_chunk: dict[tuple[str, int], Claim] = {
        key: Claim(
            job_id=key[0],
            seq=key[1],
            task=lead.task,
            model=lead.model,
            params=lead.params,
            indices=[],
            inputs=[],
            batch_key=lead.batch_key,
            queue=lead.queue,
            waiting_since=waiting_since[key],
        )
        for key in taken
    }
    for key, (indices, inputs) in found.items():
        by_chunk[key].indices, by_chunk[key].inputs = indices, inputs
    return list(by_chunk.values())


def _read_mates(session: Session, taken: list[tuple[str, int]]) -> dict[tuple[str, int], tuple[list[int], list[Any]]]:
    """The unfinished items of the chunks ``taken``, by chunk: their indices and inputs in index order."""
    rows = (
        session.connection()
        .execute(
            select(Chunk.job_id, Chunk.seq, Item.index.label("item_index"), Item.input)
            .join(Item, and_(Item.job_id == Chunk.job_id, Item.index >= Chunk.start, Item.index < Chunk.stop))
            .where(keyed(Chunk.job_id, Chunk.seq, taken), unfinished_items())
            .order_by(Chunk.job_id, Chunk.seq, Item.index)
        )
        .all()
    )
    out: dict[tuple[str, int], tuple[list[int], list[Any]]] = {}
    for row in rows:
        indices, inputs = out.setdefault((row.job_id, row.seq), ([], []))
        indices.append(row.item_index)
        inputs.append(row.input)
    return out


def _read_mates_aggregated(
    session: Session, taken: list[tuple[str, int]]
) -> dict[tuple[str, int], tuple[list[int], list[Any]]]:
    """`_read_mates` on PostgreSQL: one row per chunk, its indices as an array and its inputs as one JSON array
    (`decode_inputs`), not one row and one JSON decode per item."""
    rows = (
        session.connection()
        .execute(
            select(
                Chunk.job_id,
                Chunk.seq,
                func.array_agg(aggregate_order_by(Item.index, Item.index)).label("indices"),
                cast(func.json_agg(aggregate_order_by(Item.input, Item.index)), Text).label("inputs"),
            )
            .join(Item, and_(Item.job_id == Chunk.job_id, Item.index >= Chunk.start, Item.index < Chunk.stop))
            .where(keyed(Chunk.job_id, Chunk.seq, taken), unfinished_items())
            .group_by(Chunk.job_id, Chunk.seq)
        )
        .all()
    )
    return {(row.job_id, row.seq): (list(row.indices), decode_inputs(row.inputs)) for row in rows}


def start_jobs(session: Session, job_ids: list[str], now: dt.datetime) -> None:
    """A claimed chunk starts its job: ``queued`` jobs become ``running``."""
    session.connection().execute(
        update(Job)
        .where(Job.id.in_(job_ids), Job.state == JobState.QUEUED)
        .values(state=JobState.RUNNING, started_at=now)
    )


def job_state(session: Session, job_id: str) -> JobState | None:
    """The job's state, ``None`` when it is gone: the running chunk's cancellation check (one primary-key read)."""
    return session.scalar(select(Job.state).where(Job.id == job_id))


def item_input(session: Session, job_id: str, index: int) -> dict[str, Any] | None:
    """One item's stored input (what a claim reads for the engine), ``None`` when the item is gone."""
    return session.scalar(select(Item.input).where(Item.job_id == job_id, Item.index == index))


# -- 2. lease ----------------------------------------------------------------------------------------------


def renew_leases(session: Session, keys: list[tuple[str, int]], worker: str, lease_seconds: int) -> None:
    """Extend the leases of the chunks ``keys`` that this worker still runs."""
    session.connection().execute(
        update(Chunk)
        .where(
            keyed(Chunk.job_id, Chunk.seq, keys),
            Chunk.state == ChunkState.RUNNING,
            Chunk.worker == worker,
        )
        .values(lease_until=utcnow() + dt.timedelta(seconds=lease_seconds))
    )


# -- 3. write ----------------------------------------------------------------------------------------------


def write_results(
    session: Session,
    claims: list[Claim],
    outcomes: Sequence[Sequence[ItemOutcome | None]],
    *,
    job_error: InferqError | None = None,
) -> Written:
    """Store the outcomes of a claimed batch (a chunk and its batch-mates; ``None`` for an item that did not run),
    and ``job_error`` on every job of the batch when the batch could not run at all. One `StoredChunk` per
    claim, in order (a chunk found done already stored nothing and counts as complete), and the webhook
    deliveries of the jobs it ended."""
    attempts = _lock_unfinished_chunks(session, claims)
    live = [(claim, out) for claim, out in zip(claims, outcomes, strict=True) if claim.key in attempts]
    now = utcnow()
    written = _store_outcomes(
        session,
        [
            (claim.job_id, index, attempts[claim.key], outcome)
            for claim, out in live
            for index, outcome in zip(claim.indices, out, strict=False)
            if outcome is not None
        ],
        now,
    )
    stored: dict[str, StoredChunk] = {}
    settled: dict[bool, list[tuple[str, int]]] = {True: [], False: []}
    succeeded_by_job: Counter[str] = Counter()
    failed_by_job: Counter[str] = Counter()
    for claim, out in live:
        succeeded = failed = 0
        for index, outcome in zip(claim.indices, out, strict=False):
            if outcome is None or (claim.job_id, index) not in written:
                continue
            if outcome.ok:
                succeeded += 1
            else:
                failed += 1
        complete = len(out) == len(claim.indices) and all(o is not None for o in out)
        settled[complete].append((claim.job_id, claim.seq))
        stored[claim.key] = StoredChunk(succeeded, failed, complete)
        succeeded_by_job[claim.job_id] += succeeded
        failed_by_job[claim.job_id] += failed
    _settle_chunks(session, settled, now)
    job_ids = sorted({claim.job_id for claim, _ in live})
    webhooks: list[str] = []
    if job_ids:
        _count_into_jobs(session, [(j, succeeded_by_job[j], failed_by_job[j]) for j in job_ids])
        if job_error is not None:
            session.connection().execute(
                update(Job).where(Job.id.in_(job_ids)).values(error_code=job_error.code, error=job_error.message)
            )
        webhooks = finish_jobs_if_complete(session, job_ids, now)
    return Written([stored.get(claim.key, StoredChunk()) for claim in claims], webhooks)


def _lock_unfinished_chunks(session: Session, claims: list[Claim]) -> dict[str, int]:
    """The claims' chunk rows not yet done, locked in the one lock order (`lock_chunks`): their attempts so far,
    by `chunk_key`."""
    rows = lock_chunks(session.connection(), keyed(Chunk.job_id, Chunk.seq, [(c.job_id, c.seq) for c in claims]))
    return {chunk_key(row.job_id, row.seq): row.attempts for row in rows if row.state != ChunkState.DONE}


def _store_outcomes(
    session: Session, outcomes: list[tuple[str, int, int, ItemOutcome]], now: dt.datetime
) -> set[tuple[str, int]]:
    """Give each item ``(job, index, attempts, outcome)`` of ``outcomes`` its outcome if it is still ``queued``,
    with its attempts (its chunk's claims so far: every one of them read the item while it was queued); return the
    items written. On PostgreSQL one statement (`_store_outcomes_json`, an ``UPDATE … FROM … RETURNING``: the row
    locks, the check of the state and the write in one round trip, where one UPDATE per item cost ~2 ms of server
    time each on a busy machine); on SQLite the queued items are locked in key order, then updated in one
    executemany."""
    if not outcomes:
        return set()
    if dialect_of(session) is Dialect.POSTGRESQL:
        return _store_outcomes_json(session, outcomes, now)
    writable = _lock_queued_items(session, [(job_id, index) for job_id, index, _, _ in outcomes])
    rows = [
        {
            "job_id": job_id,
            "index": index,
            **dict(zip(OUTCOME_COLUMNS, outcome.values(), strict=True)),
            "attempts": attempts,
            "finished_at": now,
        }
        for job_id, index, attempts, outcome in outcomes
        if (job_id, index) in writable
    ]
    if rows:
        session.execute(update(Item), rows)
    return writable


#: The elements of one row of `_store_outcomes_json`'s JSON array, by position: the item's key, its attempts, then
#: every column of `OUTCOME_COLUMNS` but the result (sent apart), a vector as hex.
_JSON_ROW = ("job_id", "index", "attempts", *(c for c in OUTCOME_COLUMNS if c != "result"))

#: The PostgreSQL result write up to its key ranges (`_outcomes_statement`). Each column is read back from its
#: element of the row's ``jsonb`` array (`_JSON_ROW` numbers them: ``e->>3`` is the state), cast to its type (a text
#: column takes the element's text as it is, a vector is decoded from hex); the result is the ``json`` element zipped
#: to the row by position (``ROWS FROM``), a JSON ``null`` stored as SQL ``NULL``.
_WRITE_OUTCOMES_HEAD = (
    "UPDATE items AS i SET state = v.e->>3, label = v.e->>4, score = CAST(v.e->>5 AS float8), answer = v.e->>6, "
    "start_char = CAST(v.e->>7 AS int4), end_char = CAST(v.e->>8 AS int4), entity_count = CAST(v.e->>9 AS int4), "
    "vector = decode(v.e->>10, 'hex'), error_code = v.e->>11, error_message = v.e->>12, "
    "result = CASE WHEN json_typeof(v.r) = 'null' THEN NULL ELSE v.r END, "
    "attempts = CAST(v.e->>2 AS int4), finished_at = :now "
    "FROM (SELECT e->>0 AS job_id, CAST(e->>1 AS int4) AS index, e, r FROM ROWS FROM "
    "(jsonb_array_elements(CAST(:rows AS jsonb)), json_array_elements(CAST(:results AS json))) AS t (e, r)) AS v "
    "WHERE ("
)
#: The rest of it: joined to the items by key, and only rows still ``queued`` (the state is tested in a form no
#: index serves, so that the planner cannot pick the (job, state) index and read every queued item of the job).
_WRITE_OUTCOMES_TAIL = (
    ") AND i.job_id = v.job_id AND i.index = v.index AND i.state || '' = :queued "
    "RETURNING i.job_id, i.index AS item_index"
)


@lru_cache(maxsize=64)
def _outcomes_statement(jobs: int) -> TextClause:
    """The PostgreSQL result write of a batch of ``jobs`` jobs: `_WRITE_OUTCOMES_HEAD`, one primary-key range term
    per job, ``(i.job_id = :j0 AND i.index BETWEEN :lo0 AND :hi0) OR …`` (bind parameters it numbers itself: every
    value is bound), and `_WRITE_OUTCOMES_TAIL`. Made once per number of jobs."""
    ranges = " OR ".join(f"(i.job_id = :j{k} AND i.index BETWEEN :lo{k} AND :hi{k})" for k in range(jobs))
    return text(_WRITE_OUTCOMES_HEAD + ranges + _WRITE_OUTCOMES_TAIL)


def _store_outcomes_json(
    session: Session, outcomes: list[tuple[str, int, int, ItemOutcome]], now: dt.datetime
) -> set[tuple[str, int]]:
    """`_store_outcomes` in one statement (`_outcomes_statement`) and two JSON parameters, each serialized by one
    ``json.dumps``:

    * every outcome but its result as one row of a JSON array (`_JSON_ROW`, a vector as hex), parsed once by
      PostgreSQL as ``jsonb`` (an array parameter per column cost ~1.5 µs per value to escape in Python, and
      ``json`` re-parses an element per column read);
    * the results, in the same order, as a ``json`` array: its elements keep their text exactly (the text
      SQLAlchemy's JSON type writes; ``jsonb`` would reorder a result's keys), zipped to the rows by position
      (``ROWS FROM``), with no ``json.dumps`` per item.

    Joined to the items by key; only rows still ``queued`` are updated (a concurrent writer's row is waited for,
    then re-checked, under READ COMMITTED: never written twice). Each chunk's row is locked before
    (`write_results`), so two writers of one chunk never reach its items together."""
    rows = []
    results = []
    ranges: dict[str, tuple[int, int]] = {}
    for job_id, index, attempts, outcome in outcomes:
        state, result, *rest, vector, error_code, error_message = outcome.values()
        rows.append(
            (
                job_id,
                index,
                attempts,
                state.value,
                *rest,
                None if vector is None else vector.hex(),
                error_code,
                error_message,
            )
        )
        results.append(result)
        lo, hi = ranges.get(job_id, (index, index))
        ranges[job_id] = (min(lo, index), max(hi, index))
    params: dict[str, Any] = {
        "rows": json.dumps(rows),
        "results": json.dumps(results),
        "now": now,
        "queued": ItemState.QUEUED.value,
    }
    for k, (job_id, (lo, hi)) in enumerate(ranges.items()):
        params.update({f"j{k}": job_id, f"lo{k}": lo, f"hi{k}": hi})
    conn = session.connection()
    _plan_without_nested_loops(session)
    return {(row.job_id, row.item_index) for row in conn.execute(_outcomes_statement(len(ranges)), params)}


def _plan_without_nested_loops(session: Session) -> None:
    """Plan the rest of this transaction without nested loops (PostgreSQL's ``enable_nestloop``), so that the result
    write is planned the same way whatever the statistics say (a job's rows are new, rarely analyzed yet): each
    job's items by a primary-key range scan, hashed against the payload, not a nested loop, which on an estimate of
    one row rescans the payload once per item. ``SET LOCAL``: the setting ends with the transaction, whose other
    statements read one table each."""
    session.connection().execute(text("SET LOCAL enable_nestloop = off"))


def _lock_queued_items(session: Session, pairs: list[tuple[str, int]]) -> set[tuple[str, int]]:
    """Of the items ``pairs`` (job, index), those still ``queued``, locked in key order: the only ones written."""
    if not pairs:
        return set()
    rows = session.connection().execute(
        select(Item.job_id, Item.index.label("item_index"))
        .where(keyed(Item.job_id, Item.index, pairs), Item.state == ItemState.QUEUED)
        .order_by(Item.job_id, Item.index)
        .with_for_update()
    )
    return {(row.job_id, row.item_index) for row in rows}


def _settle_chunks(session: Session, settled: dict[bool, list[tuple[str, int]]], now: dt.datetime) -> None:
    """Written chunks (``settled[True]``, complete) are ``done``; those that stopped early (``settled[False]``) are
    ``queued`` again without a leader. One UPDATE for each kind there is."""
    for complete, keys in settled.items():
        if keys:
            session.connection().execute(
                update(Chunk)
                .where(keyed(Chunk.job_id, Chunk.seq, keys))
                .values(
                    state=ChunkState.DONE if complete else ChunkState.QUEUED,
                    finished_at=now if complete else None,
                    lease_until=None,
                    leader=None,
                )
                .execution_options(synchronize_session=False)
            )


def _count_into_jobs(session: Session, counts: list[tuple[str, int, int]]) -> None:
    """Add (job, succeeded, failed) to each job's counters, in one executemany."""
    jobs = Job.metadata.tables[Job.__tablename__]
    session.connection().execute(
        update(jobs)
        .where(jobs.c.id == bindparam("job"))
        .values(succeeded=jobs.c.succeeded + bindparam("ok"), failed=jobs.c.failed + bindparam("bad")),
        [{"job": job_id, "ok": ok, "bad": bad} for job_id, ok, bad in counts],
    )


def finish_jobs_if_complete(session: Session, job_ids: list[str], now: dt.datetime) -> list[str]:
    """Once every item has ended, the job ends: ``failed`` when the job itself could not run (its model would
    not load) and nothing succeeded, else ``succeeded``. The jobs this statement ended (and no other: another
    transaction that ended one first leaves it finished, outside the guard) record their webhook deliveries,
    whose ids are returned."""
    ended = (
        session.connection()
        .execute(
            update(Job)
            .where(
                Job.id.in_(job_ids),
                Job.state.in_(UNFINISHED_JOB_STATES),
                Job.succeeded + Job.failed >= Job.total,
            )
            .values(
                state=case(
                    ((Job.error_code.is_not(None)) & (Job.succeeded == 0), JobState.FAILED),
                    else_=JobState.SUCCEEDED,
                ),
                finished_at=now,
            )
            .returning(Job.id)
            .execution_options(synchronize_session=False)
        )
        .scalars()
    )
    return record_job_ends(session, sorted(ended))


def keyed(job: Any, number: Any, keys: list[tuple[str, int]]) -> ColumnElement[bool]:
    """``(job, number)`` is one of ``keys``, as one ``job = j AND number IN (…)`` term per job: an index range
    scan each (a row-value IN list would be planned as one OR term per key)."""
    by_job: dict[str, list[int]] = {}
    for job_id, n in keys:
        by_job.setdefault(job_id, []).append(n)
    return or_(*(and_(job == job_id, number.in_(ns)) for job_id, ns in by_job.items()))
