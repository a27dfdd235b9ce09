"""The claim protocol in SQL: how a worker takes a chunk, keeps it, and stores its results, exactly once.

One delivery of a chunk's message goes through three steps, each its own transaction:

1. **Claim** (`claim_chunk`, then `claim_mates`): lock the chunk row, lease it to this worker (``running``,
   ``lease_until``, ``attempts + 1``), start its job, read its items that have no `Result` row yet
   (`unfinished_items`). On PostgreSQL that is one statement, the items coming back as two aggregated columns
   (indices, and inputs as one JSON array decoded by one call); SQLite runs a statement per step. A small chunk
   also takes queued chunks of other jobs into its batch (see `worker.runner` for coalescing).
2. **Lease** (`renew_leases`, which `worker.runner.LeaseKeeper` calls from a thread): while the batch computes,
   outside any transaction, renew the leases, so that an expired lease means a dead worker, never a slow chunk.
3. **Write** (`write_results`): lock the chunk rows (`inferq.store.locks.lock_chunks`); a chunk found ``done``
   writes nothing. The others' outcomes are appended to `Result` (results are insert-only; an item's input row is
   never rewritten): one binary COPY on PostgreSQL, one executemany INSERT on SQLite. Each chunk becomes ``done``,
   or ``queued`` again when it stopped early; each job's counters move by one UPDATE, and a job whose every item
   ended finishes, recording its webhook delivery (`inferq.store.outbox`) in the same transaction. A result's
   ``attempts`` is its chunk's claims so far, each of which read the item without a result.

Statements run on the session's connection (Core), not through the ORM session: these functions load no ORM
objects, and the ORM layer cost ~0.3 ms a statement, a tenth of a chunk's control-plane time on a fast device.

Exactly once: the chunk's row lock, taken first by every writer of its results and by a cancel, orders them. Under
it, a chunk already done appends nothing; a chunk claimed once holds no result but this delivery's; a chunk claimed
again (its attempts, read under the lock, say so) may hold those of a delivery that stopped early or lost its lease
while still running, and its write reads which items have one and appends only the others. The results' primary
key ``(job_id, index)`` is the last guard: a second result would fail the write, never be stored. An item's state
while it has no result follows its job's (`inferq.states.item_state_of`), so a cancel touches no item. Rows are
locked in key order, so two writers never wait on each other in a circle.

The store knows the worker's pieces only by what it reads of them: an item's outcome (`ItemOutcome`, the worker's
`worker.engines.base.Outcome`) and a stage clock (`Laps`, the worker's `worker.stages.StageClock`).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import struct
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from functools import cache
from typing import Any, Literal, NamedTuple, Protocol

import orjson
from sqlalchemy import (
    ColumnElement,
    Integer,
    Row,
    Select,
    String,
    Text,
    and_,
    bindparam,
    case,
    cast,
    column,
    exists,
    func,
    insert,
    or_,
    select,
    text,
    true,
    tuple_,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY, aggregate_order_by
from sqlalchemy.orm import Session

from inferq.errors import InferqError
from inferq.schema import Chunk, Item, Job, Result, as_utc, utcnow
from inferq.states import UNFINISHED_JOB_STATES, ChunkState, ItemState, JobState
from inferq.store.dialect import Dialect, dialect_of
from inferq.store.dispatch import DISPATCH_CHANNEL, wake_dispatcher
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

    #: The result already serialised as the write stores it (`result_json`), where the engine made every item's in one
    #: pass; ``None``: the write serialises ``result``.
    result_text: str | None

    def values(self) -> tuple[Any, ...]:
        """The item's columns this outcome sets, in `OUTCOME_COLUMNS` order; the result may be ``None`` where
        ``result_text`` holds it."""
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


def unfinished_items(*within: ColumnElement[bool]) -> ColumnElement[bool]:
    """The items a claim reads: those without a `Result` row yet (`without_result`; ``within`` bounds the results
    looked at to the chunk's range). The one place that says how, with its text form in `_CLAIM_STATEMENT` (``NOT
    EXISTS`` a result of the same key: a primary-key probe per item of the chunk's range)."""
    return without_result(*within)


def claim_chunk(
    session: Session,
    job_id: str,
    seq: int,
    *,
    worker: str,
    lease_seconds: int,
    clock: Laps | None = None,
    wake_dispatcher: bool = False,
) -> Claim | NotClaimed:
    """Lease a chunk to this worker and read its unfinished items. `ChunkOutcome.SKIPPED`: nothing to do.
    `ChunkOutcome.DEFERRED`: another worker's batch is running it (see `worker.runner`). ``clock`` times the
    claim and the input read apart (on PostgreSQL the read is part of the claim's statement: its lap is the
    inputs' decoding).

    PostgreSQL: one statement (`_CLAIM_STATEMENT`) locks the chunk, decides, leases it, starts its job, releases an
    earlier batch it led, and returns the job's columns with the chunk's unfinished items as two aggregated columns
    (their indices, and their inputs as one JSON array decoded by one call). SQLite: one statement per step.

    ``wake_dispatcher`` (``INFERQ_DISPATCH=fair``): a lease of a released chunk wakes the dispatcher's leader at
    commit, within the same statement (`inferq.store.dispatch.wake_dispatcher`)."""
    if dialect_of(session) is Dialect.POSTGRESQL:
        return _claim_chunk_in_one(
            session, job_id, seq, worker=worker, lease_seconds=lease_seconds, clock=clock, wake=wake_dispatcher
        )
    return _claim_chunk_by_steps(session, job_id, seq, worker=worker, lease_seconds=lease_seconds, clock=clock)


#: The PostgreSQL claim of one chunk, in one round trip. ``c`` locks the chunk row (its latest version, after
#: waiting for a concurrent holder) and ``j`` reads its job; ``act`` decides what `_claim_chunk_by_steps` decides
#: in Python: ``skip`` (done), ``close`` (its job finished: the chunk is done), ``defer`` (a live lease in another
#: worker's batch) or ``lease``. Data-modifying CTEs run once whatever the outer query reads: ``leased`` leases it,
#: ``closed`` closes it, ``released`` frees the unfinished batch-mates of an earlier attempt it led, ``started``
#: starts its job; ``woke`` wakes the dispatcher's leader at commit (`inferq.store.dispatch.wake_dispatcher`) when
#: the lease takes a released chunk off the broker, which makes room in its queue's window (counted by the outer
#: query, which is what makes PostgreSQL run it). The outer query reads the unfinished items only for a leased chunk whose row version is the one
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
        WHEN j.state IN (:succeeded, :failed, :cancelled, :expired) THEN 'close'
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
), woke AS (
    SELECT pg_notify(:channel, '') FROM c CROSS JOIN leased
    WHERE :wake AND c.state = :queued AND c.enqueued_at IS NOT NULL
)
SELECT act.act, leased.attempts, c.start, c.stop, j.task, j.model, j.params, j.batch_key, j.queue,
    COALESCE(c.enqueued_at, j.created_at) AS waiting_since,
    (SELECT count(*) FROM released) AS released, (SELECT count(*) FROM closed) AS closed,
    (SELECT count(*) FROM started) AS started, (SELECT count(*) FROM woke) AS woke,
    fresh.fresh, items.indices, items.inputs
FROM c CROSS JOIN j CROSS JOIN act LEFT JOIN leased ON true
CROSS JOIN LATERAL (
    SELECT c.version = (SELECT CAST(s.xmin AS text) FROM chunks AS s WHERE s.job_id = :job_id AND s.seq = :seq)
    AS fresh
) AS fresh
LEFT JOIN LATERAL (
    SELECT array_agg(i.index ORDER BY i.index) AS indices, CAST(json_agg(i.input ORDER BY i.index) AS text) AS inputs
    FROM items AS i
    WHERE leased.attempts IS NOT NULL AND fresh.fresh
        AND i.job_id = :job_id AND i.index >= c.start AND i.index < c.stop
        -- Bounded to the chunk's range too: without it a generic plan may hash every result of the job (a million
        -- items' job: each claim's cost grew with the results stored before it).
        AND NOT EXISTS (
            SELECT 1 FROM results AS r
            WHERE r.job_id = i.job_id AND r.index = i.index AND r.index >= c.start AND r.index < c.stop
        )
) AS items ON true
"""
)


def _claim_chunk_in_one(
    session: Session, job_id: str, seq: int, *, worker: str, lease_seconds: int, clock: Laps | None, wake: bool
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
            "expired": JobState.EXPIRED.value,
            "channel": DISPATCH_CHANNEL,
            "wake": wake,
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
        indices, inputs = _read_ranges(session, [(job_id, row.start, row.stop)])[0]
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
    indices, inputs = _read_ranges(session, [(job_id, row.start, row.stop)])[0]
    if clock is not None:
        clock.lap("read")
    return Claim(
        job_id=job_id,
        seq=seq,
        task=task,
        model=row.model,
        params=read_params(task, row.params),
        indices=indices,
        inputs=inputs,
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


def _queued_chunks(
    lead: Claim, same: ColumnElement[bool], *, released_only: bool, limit: int
) -> Select[str, int, int, int, dt.datetime | None, dt.datetime]:
    """Queued chunks never tried before that may run with or after ``lead`` (jobs matching ``same``, of ``lead``'s
    task, model and queue, unfinished), locked with ``SKIP LOCKED`` so that concurrent workers take different ones:
    under ``released_only`` (the dispatcher's fair order) only released ones, in release order, else oldest job
    first. A batch's mates (`claim_mates`) and a message's next chunk (`claim_next`)."""
    released: tuple[ColumnElement[bool], ...] = (Chunk.enqueued_at.is_not(None),) if released_only else ()
    order = (Chunk.enqueued_at, Chunk.job_id, Chunk.seq) if released_only else (Job.created_at, Chunk.job_id, Chunk.seq)
    return (
        select(Chunk.job_id, Chunk.seq, Chunk.start, Chunk.stop, Chunk.enqueued_at, Job.created_at)
        .join(Job, Job.id == Chunk.job_id)
        .where(
            same,
            Job.state.in_(UNFINISHED_JOB_STATES),
            Job.task == lead.task.value,
            Job.model == lead.model,
            # Routed where the leader's job was (a job sent to a GPU queue is not taken by a CPU worker).
            Job.queue == lead.queue,
            Chunk.state == ChunkState.QUEUED,
            # A chunk tried before runs alone, from its own message: whatever killed a worker once takes nothing
            # else down with it.
            Chunk.attempts == 0,
            *released,
        )
        .order_by(*order)
        .limit(limit)
        .with_for_update(of=Chunk, skip_locked=True)
    )


def claim_mates(
    session: Session,
    lead: Claim,
    *,
    worker: str,
    lease_seconds: int,
    max_items: int,
    released_only: bool = False,
    clock: Laps | None = None,
) -> list[Claim]:
    """Take queued chunks of other jobs with the leader's batch key and queue into its batch, oldest jobs first,
    never tried before, until the batch holds ``max_items`` items (the last one taken may overshoot). Chunks
    locked by another transaction are skipped, not waited for. Nothing when the leader is full already, past its
    first attempt, or keyless.

    ``released_only`` (the dispatcher's fair order, `inferq.dispatcher`): only chunks the dispatcher has released,
    in the order it released them. Those were chosen in fair order and already count against their queue's window
    and their tenant's cap (a released chunk counts as in flight whether its message waits or it runs), so a batch
    takes nothing the policy held back. The mate's own message, delivered later, claims nothing: its chunk is
    running in this batch (deferred) or done (skipped)."""
    room = max_items - len(lead.indices)
    if room <= 0 or lead.attempts != 1 or lead.batch_key is None:
        return []
    candidates = (
        session.connection()
        .execute(
            _queued_chunks(
                lead,
                # Other jobs only: a job's own chunk size is the user's choice of how to spread it over workers.
                and_(Job.batch_key == lead.batch_key, Job.id != lead.job_id),
                released_only=released_only,
                limit=min(room, MAX_MATES),
            )
        )
        .all()
    )
    taken: list[_Queued] = []
    items = 0
    for candidate in candidates:
        if items >= room:
            break
        taken.append(_Queued.of(candidate))
        items += candidate.stop - candidate.start
    return _lease_and_read(
        session, lead, taken, worker=worker, lease_seconds=lease_seconds, leader=lead.key, clock=clock
    )


def claim_next(
    session: Session,
    lead: Claim,
    *,
    worker: str,
    lease_seconds: int,
    leader: str,
    released_only: bool = False,
    clock: Laps | None = None,
) -> Claim | None:
    """Lease the next chunk that ``lead``'s message may run after ``lead`` (the continuation, `worker.runner`), with
    its unfinished items; ``None`` when there is none. The next is a queued chunk never tried before, of a job with
    ``lead``'s batch key (the same task, model and parameters; without a key, ``lead``'s job only) on ``lead``'s
    queue: under ``released_only`` (the dispatcher's fair order) the first the dispatcher released, else the oldest
    job's first. Its row is locked with ``SKIP LOCKED``, so that concurrent workers take different ones.

    The chunk is leased as a batch-mate is (``leader``: the chunk whose message runs it), so that its own message,
    still on the broker, claims nothing: delivered while the chunk runs it is deferred (`ChunkOutcome.DEFERRED`),
    after its write it is skipped. Were the leading message's worker to die, the leader's redelivery releases the
    chunk, or its lease runs out, and its own message runs it again: exactly the batch-mate's story."""
    same = Job.batch_key == lead.batch_key if lead.batch_key is not None else Job.id == lead.job_id
    row = session.connection().execute(_queued_chunks(lead, same, released_only=released_only, limit=1)).one_or_none()
    if row is None:
        return None
    claims = _lease_and_read(
        session, lead, [_Queued.of(row)], worker=worker, lease_seconds=lease_seconds, leader=leader, clock=clock
    )
    if released_only:
        # A released chunk left its queue's window: the dispatcher's leader may release the next one, and is woken
        # at commit, as by `claim_chunk`.
        wake_dispatcher(session)
    return claims[0]


class _Queued(NamedTuple):
    """A chunk `_queued_chunks` found, to lease and read (`_lease_and_read`)."""

    job_id: str
    seq: int
    #: Its items' indices, ``start <= index < stop``: the range its read is bounded to (`_read_ranges`).
    start: int
    stop: int
    #: Since when it has been waiting for a worker (`Claim.waiting_since`).
    waiting_since: dt.datetime | None

    @classmethod
    def of(cls, row: Row[str, int, int, int, dt.datetime | None, dt.datetime]) -> _Queued:
        """A row of `_queued_chunks`."""
        return cls(row.job_id, row.seq, row.start, row.stop, row.enqueued_at or row.created_at)


def _lease_and_read(
    session: Session,
    lead: Claim,
    taken: list[_Queued],
    *,
    worker: str,
    lease_seconds: int,
    leader: str,
    clock: Laps | None,
) -> list[Claim]:
    """Lease the chunks ``taken`` (locked by this transaction, never tried before, of jobs sharing ``lead``'s batch
    key) to this worker under ``leader``, start their jobs, and read their unfinished items, each within its own
    range (`_read_ranges`): one `Claim` each, in the order given."""
    if not taken:
        return []
    conn = session.connection()
    now = utcnow()
    conn.execute(
        update(Chunk)
        .where(keyed(session, [(c.job_id, c.seq) for c in taken]))
        .values(
            state=ChunkState.RUNNING,
            attempts=Chunk.attempts + 1,
            lease_until=now + dt.timedelta(seconds=lease_seconds),
            worker=worker,
            leader=leader,
        )
    )
    start_jobs(session, sorted({c.job_id for c in taken}), now)
    if clock is not None:
        clock.lap("claim")
    found = _read_ranges(session, [(c.job_id, c.start, c.stop) for c in taken])
    if clock is not None:
        clock.lap("read")
    return [
        Claim(
            job_id=chunk.job_id,
            seq=chunk.seq,
            task=lead.task,
            model=lead.model,
            params=lead.params,
            indices=indices,
            inputs=inputs,
            batch_key=lead.batch_key,
            queue=lead.queue,
            waiting_since=chunk.waiting_since,
        )
        for chunk, (indices, inputs) in zip(taken, found, strict=True)
    ]


@cache
def _lateral_ranges_read() -> Select[int, list[int] | None, str | None]:
    """PostgreSQL's read of the unfinished items of chunks given by their ranges (`_read_ranges`), in one round trip:
    the ranges come as three bound arrays (jobs, starts, stops: one statement whatever the number of chunks, built
    and compiled once), and each range is read LATERAL, its bounds parameters of its own read. Those bound the
    results looked at too, so that even under a hash anti join only the range's results are read (a bound by the
    `Chunk` row's columns is not pushed into the hashed side: a mate of a job with a million results read them
    all). One row per range, in order (``n``): its indices as an array and its inputs as one JSON array
    (`decode_inputs`), ``NULL`` when none is unfinished."""
    ranges = (
        func.unnest(
            bindparam("jobs", type_=ARRAY(String)),
            bindparam("starts", type_=ARRAY(Integer)),
            bindparam("stops", type_=ARRAY(Integer)),
        )
        .table_valued(column("job_id", String), column("lo", Integer), column("hi", Integer), with_ordinality="n")
        .render_derived(name="ranges")
    )
    items = (
        select(
            func.array_agg(aggregate_order_by(Item.index, Item.index)).label("indices"),
            cast(func.json_agg(aggregate_order_by(Item.input, Item.index)), Text).label("inputs"),
        )
        .where(
            Item.job_id == ranges.c.job_id,
            Item.index >= ranges.c.lo,
            Item.index < ranges.c.hi,
            unfinished_items(Result.index >= ranges.c.lo, Result.index < ranges.c.hi),
        )
        .lateral("unfinished")
    )
    return select(ranges.c.n, items.c.indices, items.c.inputs).join_from(ranges, items, true()).order_by(ranges.c.n)


def _read_ranges(session: Session, ranges: list[tuple[str, int, int]]) -> list[tuple[list[int], list[Any]]]:
    """The unfinished items of the chunks ``ranges`` (job, start, stop each: the items ``start <= index < stop``
    of the job): their indices and inputs in index order, one pair per range, in order. Each range bounds both the
    items read and the results looked at (`unfinished_items`), whatever plan the database picks: a chunk's read
    costs its own range, never every result of its job. PostgreSQL: one statement for all (`_lateral_ranges_read`),
    the items aggregated as the claim's statement aggregates them. SQLite: a statement per range
    (`_one_range_read`)."""
    if not ranges:
        return []
    conn = session.connection()
    if dialect_of(session) is Dialect.POSTGRESQL:
        jobs, los, his = (list(values) for values in zip(*ranges, strict=True))
        rows = conn.execute(_lateral_ranges_read(), {"jobs": jobs, "starts": los, "stops": his}).all()
        return [(list(row.indices or []), decode_inputs(row.inputs) if row.inputs is not None else []) for row in rows]
    read = _one_range_read()
    out: list[tuple[list[int], list[Any]]] = []
    for job_id, start, stop in ranges:
        rows = conn.execute(read, {"job": job_id, "lo": start, "hi": stop}).all()
        out.append(([r.item_index for r in rows], [r.input for r in rows]))
    return out


@cache
def _one_range_read() -> Select[int, Any]:
    """SQLite's read of the unfinished items of one chunk given by its range (`_read_ranges`): one statement a
    chunk, the same each time (compiled once; in process, a statement costs no round trip). A term per chunk in one
    statement cost SQLAlchemy more to build than SQLite to run, and a thousand of them outgrow SQLite's expression
    depth."""
    job, lo, hi = bindparam("job", type_=String), bindparam("lo", type_=Integer), bindparam("hi", type_=Integer)
    return (
        select(Item.index.label("item_index"), Item.input)
        .where(
            Item.job_id == job,
            Item.index >= lo,
            Item.index < hi,
            unfinished_items(Result.index >= lo, Result.index < hi),
        )
        .order_by(Item.index)
    )


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
            keyed(session, keys),
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
    locked = _lock_unfinished_chunks(session, claims)
    live = [(claim, out) for claim, out in zip(claims, outcomes, strict=True) if claim.key in locked]
    now = utcnow()
    # A chunk claimed once has no results but this delivery's; one claimed again may hold those of a delivery that
    # stopped early, or of one whose lease expired while it ran: those items are not written twice.
    again = [(c.job_id, c.seq, locked[c.key].start, locked[c.key].stop) for c, _ in live if locked[c.key].attempts > 1]
    before = _written_before(session, again)
    on_postgres = dialect_of(session) is Dialect.POSTGRESQL
    rows: list[tuple[Any, ...]] = []
    copy = _CopyBuffer(now) if on_postgres else None
    stored: dict[str, StoredChunk] = {}
    settled: dict[bool, list[tuple[str, int]]] = {True: [], False: []}
    succeeded_by_job: Counter[str] = Counter()
    failed_by_job: Counter[str] = Counter()
    for claim, out in live:
        attempts, *_, job_finished = locked[claim.key]
        if job_finished:
            kept: list[tuple[int, ItemOutcome]] = []
        elif before:
            kept = [
                (i, o)
                for i, o in zip(claim.indices, out, strict=False)
                if o is not None and (claim.job_id, i) not in before
            ]
        else:
            kept = [(i, o) for i, o in zip(claim.indices, out, strict=False) if o is not None]
        failed = sum(1 for _, o in kept if not o.ok)
        succeeded = len(kept) - failed
        if copy is not None:
            copy.add(claim.job_id, attempts, kept)
        else:
            rows.extend(_result_row(claim.job_id, index, attempts, outcome, now) for index, outcome in kept)
        complete = len(out) == len(claim.indices) and all(o is not None for o in out)
        settled[complete].append((claim.job_id, claim.seq))
        stored[claim.key] = StoredChunk(succeeded, failed, complete)
        succeeded_by_job[claim.job_id] += succeeded
        failed_by_job[claim.job_id] += failed
    if copy is not None:
        copy.store(session)
    else:
        _insert_outcomes(session, rows)
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


def _lock_unfinished_chunks(session: Session, claims: list[Claim]) -> dict[str, _Locked]:
    """The claims' chunk rows not yet done, locked in the one lock order (`lock_chunks`), by `chunk_key`."""
    rows = lock_chunks(session.connection(), keyed(session, [(c.job_id, c.seq) for c in claims]))
    return {
        chunk_key(row.job_id, row.seq): _Locked(row.attempts, row.start, row.stop, row.job_state.finished)
        for row in rows
        if row.state != ChunkState.DONE
    }


class _Locked(NamedTuple):
    """A chunk `write_results` locked, not yet done."""

    #: Its claims so far (this delivery's included).
    attempts: int
    #: Its items' indices, ``start <= index < stop``.
    start: int
    stop: int
    #: Its job ended (cancelled, expired) before this write took the lock: what its items are is settled
    #: (`inferq.states.item_state_of`), and the write stores none of them.
    job_finished: bool


#: The `Result` columns of one row of the write, in the order `_result_row` builds them.
WRITE_COLUMNS = ("job_id", "index", *OUTCOME_COLUMNS, "attempts", "finished_at")

_COPY_RESULTS = "COPY results (" + ", ".join(f'"{c}"' for c in WRITE_COLUMNS) + ") FROM STDIN (FORMAT BINARY)"


def without_result(*within: ColumnElement[bool]) -> ColumnElement[bool]:
    """An `Item` has no `Result` row yet: it has not ended by itself (what a claim still has to run). ``within``
    bounds the results looked at to the chunk's range, so that whatever plan PostgreSQL picks (an anti join that
    hashes the results) reads the chunk's results only, never every result of a big job. Every table but `Result`
    is the enclosing query's, however deep (a bound may come from the ranges a LATERAL read is given)."""
    return ~exists().where(Result.job_id == Item.job_id, Result.index == Item.index, *within).correlate_except(Result)


def _written_before(session: Session, chunks: list[tuple[str, int, int, int]]) -> set[tuple[str, int]]:
    """The items of ``chunks`` (job, seq, start, stop) that have a result already: those a delivery that stopped
    early (cancel, warm shutdown, an expired lease) stored before. Read under the chunks' row locks, so no other
    writer adds any until this transaction ends."""
    if not chunks:
        return set()
    rows = session.connection().execute(
        select(Result.job_id, Result.index.label("item_index")).where(
            or_(*(and_(Result.job_id == j, Result.index >= lo, Result.index < hi) for j, _, lo, hi in chunks))
        )
    )
    return {(row.job_id, row.item_index) for row in rows}


def _insert_outcomes(session: Session, rows: list[tuple[Any, ...]]) -> None:
    """SQLite: append ``rows`` (`WRITE_COLUMNS` each) to `Result` in one executemany INSERT."""
    if rows:
        table = Result.metadata.tables[Result.__tablename__]
        session.connection().execute(insert(table), [dict(zip(WRITE_COLUMNS, row, strict=True)) for row in rows])


_dumps = json.JSONEncoder().encode


def result_json(value: Any) -> str:
    """A result as the write stores it on PostgreSQL: SQLAlchemy's JSON type's text (``json.dumps``' defaults), so
    that an export of the stored text reads the same whichever way it was written. An engine that serialises a
    whole chunk's results in one pass (`worker.engines.classification`) must give exactly this text."""
    return _dumps(value)


def _result_row(job_id: str, index: int, attempts: int, outcome: ItemOutcome, now: dt.datetime) -> tuple[Any, ...]:
    """One `WRITE_COLUMNS` row: the item's key, the outcome's columns (its state as the stored string), its attempts
    and when it ended."""
    state, result, *rest = outcome.values()
    serialised = outcome.result_text
    if result is None and serialised is not None:
        # SQLAlchemy's JSON type serialises what it binds: the text read back serialises to itself.
        result = json.loads(serialised)
    return (job_id, index, ItemState(state).value, result, *rest, attempts, now)


#: PostgreSQL's binary COPY: the signature and header, a row's field count, a field's length, a NULL, the trailer.
_COPY_SIGNATURE = b"PGCOPY\n\xff\r\n\x00" + struct.pack("!ii", 0, 0)
_FIELD_COUNT = struct.pack("!h", len(WRITE_COLUMNS))
_LENGTH = struct.Struct("!i").pack
_NULL = _LENGTH(-1)
_INT4 = struct.Struct("!ii").pack
_FLOAT8 = struct.Struct("!id").pack
_TIMESTAMP = struct.Struct("!iq").pack
_COPY_TRAILER = struct.pack("!h", -1)
#: PostgreSQL's epoch for timestamps (binary: microseconds since it).
_PG_EPOCH = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)


def _text(value: str | None) -> bytes:
    """A text field (``varchar``, ``text``, ``json``: their binary form is their UTF-8 text), or NULL."""
    if value is None:
        return _NULL
    data = value.encode()
    return _LENGTH(len(data)) + data


_STATE_FIELDS = {state: _text(state.value) for state in ItemState}


class _CopyBuffer:
    """The write's rows as one binary COPY payload (`_COPY_RESULTS`), built in one pass over the outcomes: the
    fields every row of a chunk shares (its job, attempts and end time) are encoded once, each outcome's own fields
    appended with `struct` into one ``bytes`` join, and the whole sent with one ``write`` (psycopg's ``write_row``
    dumped each value through its adapters: ~4× the worker's CPU a row). A result the engine serialised already
    (``result_text``) is not serialised again."""

    def __init__(self, now: dt.datetime) -> None:
        micros = (as_utc(now) - _PG_EPOCH) // dt.timedelta(microseconds=1)
        self._finished_at = _TIMESTAMP(8, micros)
        self._parts: list[bytes] = [_COPY_SIGNATURE]

    def add(self, job_id: str, attempts: int, kept: Sequence[tuple[int, ItemOutcome]]) -> None:
        """Rows for ``kept`` ((index, outcome) each) of job ``job_id``, claimed ``attempts`` times."""
        head = _FIELD_COUNT + _text(job_id)
        tail = _INT4(4, attempts) + self._finished_at
        parts = self._parts
        for index, outcome in kept:
            state, result, label, score, answer, start, end, entities, vector, code, message = outcome.values()
            serialised = outcome.result_text
            if serialised is not None:
                result_field = _text(serialised)
            elif result is None:
                result_field = _NULL
            else:
                result_field = _text(_dumps(result))
            parts.append(
                b"".join(
                    (
                        head,
                        _INT4(4, index),
                        _STATE_FIELDS[state],  # a str enum: its member or its value
                        result_field,
                        _text(label),
                        _NULL if score is None else _FLOAT8(8, score),
                        _text(answer),
                        _NULL if start is None else _INT4(4, start),
                        _NULL if end is None else _INT4(4, end),
                        _NULL if entities is None else _INT4(4, entities),
                        _NULL if vector is None else _LENGTH(len(vector)) + bytes(vector),
                        _text(code),
                        _text(message),
                        tail,
                    )
                )
            )

    def store(self, session: Session) -> None:
        """Append the rows to `Result` with one binary COPY in the session's transaction (no statement to plan, no
        per-row parse: ~4× fewer server microseconds a row than the ``UPDATE … FROM jsonb`` it replaced, which also
        rewrote each item's row and index entries). Nothing to do without rows."""
        if len(self._parts) == 1:
            return
        self._parts.append(_COPY_TRAILER)
        raw = session.connection().connection.driver_connection
        with raw.cursor() as cursor, cursor.copy(_COPY_RESULTS) as copy:  # type: ignore[union-attr]
            copy.write(b"".join(self._parts))


def _settle_chunks(session: Session, settled: dict[bool, list[tuple[str, int]]], now: dt.datetime) -> None:
    """Written chunks (``settled[True]``, complete) are ``done``; those that stopped early (``settled[False]``) are
    ``queued`` again without a leader. One UPDATE for each kind there is."""
    for complete, keys in settled.items():
        if keys:
            session.connection().execute(
                update(Chunk)
                .where(keyed(session, keys))
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


def keyed(session: Session, keys: list[tuple[str, int]]) -> ColumnElement[bool]:
    """A `Chunk` row is one of ``keys`` (job, seq each), in the form the session's database looks up best. PostgreSQL:
    one ``job_id = j AND seq IN (…)`` term per job, an index range scan each (a row-value IN list would be planned as
    one OR term per key). SQLite: one row-value ``(job_id, seq) IN (…)``, looked up in the key's index: it parses
    ``a OR b OR …`` into a tree as deep as its terms and refuses one deeper than 1,000 (a batch of a thousand
    one-chunk jobs' chunks), and SQLAlchemy flattens any grouping of them."""
    if dialect_of(session) is Dialect.SQLITE:
        return tuple_(Chunk.job_id, Chunk.seq).in_(keys)
    by_job: dict[str, list[int]] = {}
    for job_id, n in keys:
        by_job.setdefault(job_id, []).append(n)
    return or_(*(and_(Chunk.job_id == job_id, Chunk.seq.in_(ns)) for job_id, ns in by_job.items()))
