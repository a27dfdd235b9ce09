"""The dispatcher's statements (`inferq.dispatcher`): what waits in SQL, what is in flight, the tenants' weights and
caps, the release of chunks, the jobs past their deadline, a job's position, and the row that shows the dispatcher
to every process (`inferq.schema.DispatcherRound`).

A chunk is **released** once its message is sent: `Chunk.enqueued_at` is set. The dispatcher releases a chunk by a
conditional UPDATE of a queued chunk never released (its row locked, others' skipped), in the transaction that it
commits only after the broker took the message: a dispatcher that dies between the send and the commit leaves the
chunk unreleased, and the next leader sends it again. A second message is harmless (a claim of a chunk that is
running or done claims nothing); a lost one is not, on RabbitMQ, whose messages cannot be listed.

**Woken, not polling.** What changes the leader's next plan wakes it through PostgreSQL's ``NOTIFY`` on
`DISPATCH_CHANNEL` (`wake_dispatcher`), issued in the transaction that makes the change, so that it fires at commit
(and never for a change rolled back): a submit's chunks stored (`inferq.store.jobs.add_job`), a claim of a released
chunk (room in its queue's window: `inferq.store.chunks.claim_chunk`), a job ended early (its chunks leave the
window and their tenant's cap: `inferq.store.jobs.end_job`), a tenant's share set (`inferq.tenants.set_share`).
PostgreSQL folds the notifications of one transaction on one channel into one. The leader ``LISTEN``s on its lock's
connection (`listen`, `wait_for_wake`).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, Row, and_, case, delete, func, literal, or_, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Session

from inferq.schema import Chunk, DispatcherRound, Job, Tenant
from inferq.states import UNFINISHED_JOB_STATES, ChunkState
from inferq.store.dialect import Dialect, dialect_of

#: The channel of PostgreSQL's ``NOTIFY`` that wakes the dispatcher's leader (this module's docstring).
DISPATCH_CHANNEL = "inferq_dispatch"
#: ``LISTEN`` takes a name, not a parameter: the channel above, spelled out once.
_LISTEN = text("LISTEN inferq_dispatch")

#: The chunks the dispatcher may release: queued, never released.
_UNRELEASED = and_(Chunk.state == ChunkState.QUEUED, Chunk.enqueued_at.is_(None))
#: Released and not claimed yet: a message waiting on the broker.
_WAITING = and_(Chunk.state == ChunkState.QUEUED, Chunk.enqueued_at.is_not(None))

#: A job's chunks not done, as `chunk_counts` reads them: ``id``, ``tenant``, ``queue``, ``priority``, ``created_at``,
#: ``deadline_at``, ``unreleased``, ``waiting`` and ``running``.
JobChunks = Row[str, str, str, int, dt.datetime, dt.datetime | None, int, int, int]


def chunk_counts(session: Session) -> Sequence[JobChunks]:
    """Every unfinished job with chunks not done: its ``id``, ``tenant``, ``queue``, ``priority``, ``created_at`` and
    ``deadline_at``, and how many of its chunks are ``unreleased`` (never released), ``waiting`` (released, their
    message on the broker) and ``running`` (`in_flight`), read by name. One statement for what a round needs of
    both, so that a round that finds nothing to do costs one read of the chunks, not two."""
    return session.execute(
        select(
            Job.id,
            Job.tenant,
            Job.queue,
            Job.priority,
            Job.created_at,
            Job.deadline_at,
            func.sum(case((_UNRELEASED, 1), else_=0)).label("unreleased"),
            func.sum(case((_WAITING, 1), else_=0)).label("waiting"),
            func.sum(case((Chunk.state == ChunkState.RUNNING, 1), else_=0)).label("running"),
        )
        .join(Chunk, Chunk.job_id == Job.id)
        .where(Job.state.in_(UNFINISHED_JOB_STATES), Chunk.state.in_([ChunkState.QUEUED, ChunkState.RUNNING]))
        .group_by(Job.id, Job.tenant, Job.queue, Job.priority, Job.created_at, Job.deadline_at)
    ).all()


def in_flight(session: Session) -> Sequence[Row[str, str, int, int]]:
    """Released chunks of unfinished jobs not done yet, by queue and tenant: ``queue``, ``tenant``, ``waiting``
    (their message on the broker) and ``running`` (claimed)."""
    return session.execute(
        select(
            Job.queue,
            Job.tenant,
            func.sum(case((_WAITING, 1), else_=0)).label("waiting"),
            func.sum(case((Chunk.state == ChunkState.RUNNING, 1), else_=0)).label("running"),
        )
        .join(Chunk, Chunk.job_id == Job.id)
        .where(
            Job.state.in_(UNFINISHED_JOB_STATES),
            or_(_WAITING, Chunk.state == ChunkState.RUNNING),
        )
        .group_by(Job.queue, Job.tenant)
    ).all()


def tenant_shares(session: Session, names: Sequence[str]) -> dict[str, tuple[int, int | None]]:
    """Each of ``names`` that has a row: its ``(weight, max_chunks_in_flight)``. A tenant without a row (jobs of
    the default tenant, before anything made it) has weight 1 and no cap."""
    if not names:
        return {}
    rows = session.execute(
        select(Tenant.name, Tenant.weight, Tenant.max_chunks_in_flight).where(Tenant.name.in_(list(names)))
    ).all()
    return {r.name: (max(1, int(r.weight)), r.max_chunks_in_flight) for r in rows}


def release_chunks(session: Session, job_id: str, count: int, now: dt.datetime) -> list[int]:
    """Release up to ``count`` of the job's unreleased chunks, lowest first: marked enqueued at ``now`` and locked
    until the caller commits (chunks another transaction holds are skipped). Their seqs, in order."""
    seqs = list(
        session.scalars(
            select(Chunk.seq)
            .where(Chunk.job_id == job_id, _UNRELEASED)
            .order_by(Chunk.seq)
            .limit(count)
            .with_for_update(skip_locked=True)
        ).all()
    )
    if seqs:
        session.execute(update(Chunk).where(Chunk.job_id == job_id, Chunk.seq.in_(seqs)).values(enqueued_at=now))
    return seqs


def wake_dispatcher(session: Session) -> None:
    """Wake the dispatcher's leader when this transaction commits (PostgreSQL; elsewhere nothing: SQLite has no
    dispatcher). Once a transaction is enough: PostgreSQL delivers one notification for the same channel and
    payload however often a transaction sends it."""
    if dialect_of(session) is Dialect.POSTGRESQL:
        session.execute(select(func.pg_notify(literal(DISPATCH_CHANNEL), literal(""))))


def listen(conn: Connection) -> None:
    """Listen on `DISPATCH_CHANNEL` on ``conn`` (the leader's lock connection), from its commit on."""
    conn.execute(_LISTEN)


def wait_for_wake(conn: Connection, timeout: float) -> int:
    """Wait up to ``timeout`` seconds for a notification on ``conn`` (on which `listen` ran; outside a transaction: a
    notification reaches a connection between its transactions only). How many came, those already queued
    included: a burst is taken in at once, so that it costs one round. Raises when the connection is gone."""
    raw: Any = conn.connection.driver_connection
    came = sum(1 for _ in raw.notifies(timeout=timeout, stop_after=1))
    if came:
        came += sum(1 for _ in raw.notifies(timeout=0))
    return came


def past_deadline(session: Session, now: dt.datetime) -> Sequence[str]:
    """The unfinished jobs whose deadline has passed by ``now``, oldest deadline first."""
    return session.scalars(
        select(Job.id)
        .where(Job.state.in_(UNFINISHED_JOB_STATES), Job.deadline_at.is_not(None), Job.deadline_at <= now)
        .order_by(Job.deadline_at)
    ).all()


def chunks_ahead(session: Session, job_id: str) -> int | None:
    """How many chunks go to the workers before this job's next one: the messages waiting on its queue's broker
    released before its own first waiting one (all of them, when it has none waiting), plus the unreleased
    chunks of its tenant's jobs that go first (a higher priority, or the same and older). Other tenants' chunks
    come between by their weights, so this is the least it waits for. ``None``: the job is gone or finished;
    0: one of its chunks runs or is next."""
    job = session.execute(
        select(Job.queue, Job.tenant, Job.priority, Job.created_at, Job.state).where(Job.id == job_id)
    ).one_or_none()
    if job is None or job.state not in UNFINISHED_JOB_STATES:
        return None
    running = session.scalar(
        select(func.count()).select_from(Chunk).where(Chunk.job_id == job_id, Chunk.state == ChunkState.RUNNING)
    )
    if running:
        return 0
    first_waiting = session.scalar(select(func.min(Chunk.enqueued_at)).where(Chunk.job_id == job_id, _WAITING))
    on_queue = (
        select(func.count())
        .select_from(Chunk)
        .join(Job, Job.id == Chunk.job_id)
        .where(Job.queue == job.queue, Job.state.in_(UNFINISHED_JOB_STATES), _WAITING)
    )
    if first_waiting is not None:
        return int(session.scalar(on_queue.where(Chunk.enqueued_at < first_waiting)) or 0)
    before_it = or_(
        Job.priority > job.priority,
        and_(
            Job.priority == job.priority,
            or_(Job.created_at < job.created_at, and_(Job.created_at == job.created_at, Job.id < job_id)),
        ),
    )
    tenant_first = session.scalar(
        select(func.count())
        .select_from(Chunk)
        .join(Job, Job.id == Chunk.job_id)
        .where(
            Job.tenant == job.tenant,
            Job.queue == job.queue,
            Job.state.in_(UNFINISHED_JOB_STATES),
            before_it,
            _UNRELEASED,
        )
    )
    return int(session.scalar(on_queue) or 0) + int(tenant_first or 0)


def chunks_ended_between(session: Session, job_id: str, start: dt.datetime, end: dt.datetime) -> int:
    """How many of the job's chunks ended (``done``) after ``start`` and before ``end``: the benchmark's count of a
    big job's chunks that ran while a small one waited."""
    return int(
        session.scalar(
            select(func.count())
            .select_from(Chunk)
            .where(Chunk.job_id == job_id, Chunk.finished_at > start, Chunk.finished_at < end)
        )
        or 0
    )


#: The key of the dispatcher's one row.
_ROUND_ROW = 1


def record_round(
    session: Session,
    *,
    leader: str,
    leader_since: dt.datetime,
    last_round: dt.datetime,
    released: int,
    queues: dict[str, dict[str, Any]],
) -> None:
    """Write what the leader's last round did into the dispatcher's row, made or replaced by one statement (the
    dispatcher runs on PostgreSQL only)."""
    values = {
        "leader": leader,
        "leader_since": leader_since,
        "last_round": last_round,
        "released": released,
        "queues": queues,
    }
    upsert = pg_insert(DispatcherRound).values(id=_ROUND_ROW, **values)
    session.execute(upsert.on_conflict_do_update(index_elements=[DispatcherRound.id], set_=values))


def forget_leader(session: Session, leader: str) -> None:
    """A leader that stops leading takes its row away (while it still is that leader's): nobody leads until the
    next leader's first round."""
    session.execute(delete(DispatcherRound).where(DispatcherRound.id == _ROUND_ROW, DispatcherRound.leader == leader))


def last_round(session: Session, job_id: str | None = None) -> tuple[DispatcherRound | None, str | None]:
    """The dispatcher's row (``None`` when no leader ever wrote one, or the last one stopped), and with ``job_id``
    that job's queue (``None``: no such job), in one statement."""
    if job_id is None:
        return session.get(DispatcherRound, _ROUND_ROW), None
    row = session.execute(
        select(DispatcherRound, Job.queue)
        .select_from(Job)
        .outerjoin(DispatcherRound, DispatcherRound.id == _ROUND_ROW)
        .where(Job.id == job_id)
    ).one_or_none()
    return (None, None) if row is None else (row[0], row[1])
