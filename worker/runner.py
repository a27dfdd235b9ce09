"""Running one chunk: claim it, infer outside any transaction, write every result in one bulk statement.

Idempotent: a chunk that is already done writes nothing; an item gets a result only while it is still
``queued``, under a row lock, so two deliveries of the same chunk never write an item twice.

Coalescing. A chunk smaller than ``INFERQ_COALESCE_ITEMS`` (the last chunk of a job, a job of a few items) does
not run alone: its claim also takes queued chunks of other jobs with the same task, model and parameters
(`Job.batch_key`) routed to the same queue, locked with ``SKIP LOCKED`` so that concurrent workers take different
ones, and the whole batch runs as one engine call (full micro-batches, one bulk write for all of it). The chunk
whose message came leads the batch; each batch-mate records its leader (`Chunk.leader`). A batch-mate's own
message is still on the broker, and stays responsible for it:

* delivered while the batch runs (its lease is live): it is sent again a little later (``DEFERRED``), never
  acknowledged before its chunk is done, so that nothing depends on the batch's worker surviving;
* delivered after the batch stored it: the chunk is done, nothing to do;
* the batch stopped before it (cancellation of the leader's job, a warm shutdown): the batch-mate is ``queued``
  again, leaderless, and its message runs it;
* the batch's worker died: the leader's redelivered message releases the batch's unfinished chunks (queued,
  leaderless) before it runs again alone, and their own messages run them; if no message comes back (a whole
  worker lost on Redis) their leases expire and the reconciler re-enqueues them.

Only chunks never tried before join a batch, and a leader on its second attempt runs alone: a chunk that kills
its worker takes no batch-mate down with it twice.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, Literal

from sqlalchemy import ColumnElement, and_, bindparam, case, or_, select, update
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from inferq import constants
from inferq.db import make_sessionmaker
from inferq.errors import AttemptsExhausted, InferqError, ModelError
from inferq.schema import Chunk, Item, Job, as_utc, utcnow
from inferq.settings import Settings
from inferq.states import FINISHED_JOB_STATES, ChunkState, ItemState, JobState
from inferq.tasks import TaskName, TaskParams, read_params
from worker.engines.base import Outcome
from worker.registry import ModelRegistry

log = logging.getLogger(__name__)

#: Claims of one chunk before its unfinished items are recorded as failed (a chunk that kills its worker
#: every time must not loop forever).
MAX_CHUNK_ATTEMPTS = constants.MAX_CHUNK_ATTEMPTS

#: Seconds between cancellation checks while a chunk computes (one primary-key read each).
CANCEL_CHECK_SECONDS = 1.0

#: Seconds a worker keeps trying to store a computed chunk while the database is unreachable (1, 2, 4, then every
#: 5 s: one connection attempt each, cheap) before it gives up and lets the task retry the chunk from scratch:
#: results already computed are worth waiting a couple of minutes for.
WRITE_RETRY_SECONDS = 120.0
WRITE_RETRY_MAX_DELAY = 5.0

#: What `Runner.run_chunk` did with a chunk (`ChunkReport.outcome`).
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
DEFERRED: Final = "deferred"

#: Most chunks one batch takes from other jobs (each a claim and, later, a skipped message).
MAX_MATES = 1_000


def is_transient_db_error(exc: BaseException) -> bool:
    """The database is unreachable or dropped the connection (retry), as opposed to a bad statement (don't)."""
    return isinstance(exc, OperationalError) or (isinstance(exc, DBAPIError) and exc.connection_invalidated)


@dataclass
class Claim:
    job_id: str
    seq: int
    task: TaskName
    model: str
    #: The job's parameters, typed (validated here, once, for the engine).
    params: TaskParams
    indices: list[int]
    inputs: list[dict[str, Any]]
    #: Claimed more often than `MAX_CHUNK_ATTEMPTS`: its items are given up, not run again.
    attempts: int = 1
    #: The job's `Job.batch_key` and queue: chunks of jobs with the same key on the same queue may run in one batch.
    batch_key: str | None = None
    queue: str | None = None

    @property
    def key(self) -> str:
        return chunk_key(self.job_id, self.seq)


def chunk_key(job_id: str, seq: int) -> str:
    """How `Chunk.leader` names a chunk."""
    return f"{job_id}/{seq}"


@dataclass
class ChunkReport:
    job_id: str
    seq: int
    #: What happened: `DONE`, `SKIPPED`, `STOPPED` (cancelled mid-way), `HANDED_BACK` (shutting down) or
    #: `DEFERRED` (another worker's batch is running it).
    outcome: str
    #: Items of this chunk only.
    succeeded: int = 0
    failed: int = 0
    seconds: float = 0.0
    #: Chunks of other jobs that ran in the same batch.
    mates: int = 0


class Runner:
    """Runs chunks for one worker process. Holds the model registry; the caller owns nothing else.

    ``stopping`` says whether this worker is shutting down (warm shutdown): it is asked between micro-batches,
    and a chunk that has not finished is stored as far as it ran and handed back."""

    def __init__(
        self,
        settings: Settings,
        sessions: sessionmaker[Session],
        registry: ModelRegistry,
        worker: str,
        *,
        stopping: Callable[[], bool] = lambda: False,
    ) -> None:
        self.settings = settings
        self.sessions = sessions
        self.reader = make_sessionmaker(sessions.kw["bind"], read_only=True)
        self.registry = registry
        self.worker = worker
        self.stopping = stopping
        #: True while a chunk runs (a SIGTERM then waits for the current micro-batch instead of killing).
        self.busy = False

    def run_chunk(self, job_id: str, seq: int) -> ChunkReport:
        if self.stopping():
            return ChunkReport(job_id, seq, HANDED_BACK)  # not even claimed: the message goes straight back
        self.busy = True
        try:
            return self._run_chunk(job_id, seq)
        finally:
            self.busy = False

    def _run_chunk(self, job_id: str, seq: int) -> ChunkReport:
        started = time.perf_counter()
        with self.sessions.begin() as session:
            claim = claim_chunk(session, job_id, seq, worker=self.worker, lease_seconds=self.settings.lease_seconds)
            if isinstance(claim, str):  # DEFERRED
                log.info("job %s chunk %d: running in another worker's batch; looking again later", job_id, seq)
                return ChunkReport(job_id, seq, DEFERRED)
            if claim is None:
                return ChunkReport(job_id, seq, SKIPPED)
            mates = claim_mates(
                session,
                claim,
                worker=self.worker,
                lease_seconds=self.settings.lease_seconds,
                max_items=self.settings.coalesce_items,
            )
        claims = [claim, *mates]
        with _LeaseKeeper(self.sessions, claims, self.worker, self.settings.lease_seconds):
            outcomes, job_error = self._infer(claims)
        counts = self._write(claims, outcomes, job_error)
        seconds = time.perf_counter() - started
        succeeded, failed, complete = counts[0]
        outcome = DONE if complete else (HANDED_BACK if self.stopping() else STOPPED)
        batch = (
            f", in one batch with {len(mates)} chunks of other jobs ({sum(len(c.indices) for c in claims)} items,"
            f" {sum(1 for _, _, done in counts[1:] if done)} of their chunks done)"
            if mates
            else ""
        )
        log.info(
            "job %s chunk %d: %s, %d succeeded, %d failed in %.2fs%s",
            job_id,
            seq,
            outcome,
            succeeded,
            failed,
            seconds,
            batch,
        )
        return ChunkReport(job_id, seq, outcome, succeeded, failed, seconds, len(mates))

    def _write(
        self, claims: list[Claim], outcomes: list[list[Outcome | None]], job_error: InferqError | None
    ) -> list[tuple[int, int, bool]]:
        """`write_results` in one transaction, tried again with backoff while the database is unreachable.
        Idempotent: a commit whose answer was lost is found done by the next try."""
        delay = 1.0
        deadline = time.monotonic() + WRITE_RETRY_SECONDS
        while True:
            try:
                with self.sessions.begin() as session:
                    return write_results(session, claims, outcomes, job_error=job_error)
            except DBAPIError as exc:
                if not is_transient_db_error(exc) or time.monotonic() + delay > deadline or self.stopping():
                    raise
                log.warning(
                    "job %s chunk %d: database unreachable while storing results (%s); trying again in %.0fs",
                    claims[0].job_id,
                    claims[0].seq,
                    type(exc.orig).__name__ if exc.orig is not None else type(exc).__name__,
                    delay,
                )
                time.sleep(delay)
                delay = min(delay * 2, WRITE_RETRY_MAX_DELAY)

    def _infer(self, claims: list[Claim]) -> tuple[list[list[Outcome | None]], InferqError | None]:
        """Outcomes per claim. The batch shares task, model and parameters (the leader's)."""
        lead = claims[0]
        if not any(c.inputs for c in claims):
            return [[] for _ in claims], None
        if lead.attempts > MAX_CHUNK_ATTEMPTS:  # a leader past its first attempt has no batch-mates
            exc = AttemptsExhausted(f"chunk {lead.seq} was started {lead.attempts - 1} times without finishing")
            log.error("job %s: %s; giving its %d unfinished items up", lead.job_id, exc, len(lead.inputs))
            return [[Outcome.failure(exc) for _ in lead.inputs]], None
        try:
            engine = self.registry.engine(lead.model, lead.task)
        except (ModelError, InferqError) as exc:
            # The model cannot run: every item records why, and so does every job of the batch.
            log.error("job %s: %s", lead.job_id, exc)
            return [[Outcome.failure(exc) for _ in c.inputs] for c in claims], exc
        # Cancelled or shutting down mid-chunk: items whose micro-batches did not run come back as None and stay
        # unwritten.
        should_stop = _StopCheck(self.reader, lead.job_id, self.stopping)
        flat = engine.run([x for c in claims for x in c.inputs], lead.params, should_stop=should_stop)
        split: list[list[Outcome | None]] = []
        at = 0
        for c in claims:
            split.append(flat[at : at + len(c.inputs)])
            at += len(c.inputs)
        return split, None


class _StopCheck:
    """``should_stop`` for the engine: true once the worker is shutting down (asked every time: a flag), or once
    the job is no longer running (cancelled; the job row is read at most once a second). An unreachable database
    does not stop the chunk: it goes on, and storing its results waits for the database."""

    def __init__(self, sessions: sessionmaker[Session], job_id: str, stopping: Callable[[], bool]) -> None:
        self.sessions = sessions
        self.job_id = job_id
        self.stopping = stopping
        self.stopped = False
        self._next = time.monotonic() + CANCEL_CHECK_SECONDS

    def __call__(self) -> bool:
        if self.stopped or self.stopping():
            return True
        now = time.monotonic()
        if now < self._next:
            return False
        self._next = now + CANCEL_CHECK_SECONDS
        try:
            with self.sessions() as session:
                state = session.scalar(select(Job.state).where(Job.id == self.job_id))
        except DBAPIError as exc:
            if not is_transient_db_error(exc):
                raise
            log.debug("job %s: cancellation check skipped, database unreachable", self.job_id)
            return False
        self.stopped = state is None or JobState(state) in FINISHED_JOB_STATES
        return self.stopped


class _LeaseKeeper:
    """Renews a claimed chunk's lease every third of ``lease_seconds`` while it computes, in a thread, so that an
    expired lease means a dead worker (or one cut off from the database), never a slow chunk: `inferq recover`
    re-enqueues chunks whose lease expired."""

    def __init__(self, sessions: sessionmaker[Session], claims: list[Claim], worker: str, lease_seconds: int) -> None:
        self.sessions = sessions
        self.claims = claims
        self.keys = [(c.job_id, c.seq) for c in claims]
        self.worker = worker
        self.lease_seconds = lease_seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="inferq-lease", daemon=True)

    def __enter__(self) -> _LeaseKeeper:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        # Not waiting long: a renewal stuck on an unreachable database must not hold the chunk up (it would only
        # renew a lease the chunk no longer needs, and renews nothing once the chunk is no longer running).
        self._thread.join(timeout=5)

    def _loop(self) -> None:
        while not self._stop.wait(max(1.0, self.lease_seconds / 3)):
            try:
                with self.sessions.begin() as session:
                    session.execute(
                        update(Chunk)
                        .where(
                            keyed(Chunk.job_id, Chunk.seq, self.keys),
                            Chunk.state == ChunkState.RUNNING.value,
                            Chunk.worker == self.worker,
                        )
                        .values(lease_until=utcnow() + dt.timedelta(seconds=self.lease_seconds))
                    )
            except Exception as exc:
                lead = self.claims[0]
                log.debug("job %s chunk %d: lease not renewed (%s)", lead.job_id, lead.seq, exc)


def claim_chunk(
    session: Session, job_id: str, seq: int, *, worker: str, lease_seconds: int
) -> Claim | Literal["deferred"] | None:
    """Lease a chunk to this worker and read its unfinished items. ``None``: nothing to do. `DEFERRED`: another
    worker's batch is running it (see the module's docstring)."""
    job = session.get(Job, job_id)
    if job is None:
        log.warning("job %s is gone; dropping chunk %d", job_id, seq)
        return None
    chunk = session.scalar(select(Chunk).where(Chunk.job_id == job_id, Chunk.seq == seq).with_for_update())
    if chunk is None or chunk.state == ChunkState.DONE.value:
        return None
    now = utcnow()
    if JobState(job.state) in FINISHED_JOB_STATES:
        chunk.state, chunk.finished_at, chunk.leader = ChunkState.DONE.value, now, None
        return None
    if (
        chunk.state == ChunkState.RUNNING.value
        and chunk.leader is not None
        and chunk.lease_until is not None
        and as_utc(chunk.lease_until) > now
    ):
        return DEFERRED
    chunk.state = ChunkState.RUNNING.value
    chunk.attempts += 1
    chunk.lease_until = now + dt.timedelta(seconds=lease_seconds)
    chunk.worker = worker
    chunk.leader = None
    if chunk.attempts > 1:
        # Claimed before: the batch it led then (if any) did not finish. Its unfinished batch-mates go back to
        # their own messages, so that this chunk runs alone and a poison item among them cannot take it down again.
        released = session.execute(
            update(Chunk)
            .where(Chunk.leader == chunk_key(job_id, seq), Chunk.state == ChunkState.RUNNING.value)
            .values(state=ChunkState.QUEUED.value, leader=None, lease_until=None, worker=None)
        )
        if released.rowcount:  # type: ignore[attr-defined]
            log.warning(
                "job %s chunk %d: released %d chunks of its unfinished earlier batch",
                job_id,
                seq,
                released.rowcount,  # type: ignore[attr-defined]
            )
    start_jobs(session, [job_id], now)
    in_chunk = (Item.job_id == job_id, Item.index >= chunk.start, Item.index < chunk.stop)
    queued = Item.state == ItemState.QUEUED.value
    rows = session.execute(select(Item.index, Item.input).where(*in_chunk, queued).order_by(Item.index)).all()
    session.execute(update(Item).where(*in_chunk, queued).values(attempts=Item.attempts + 1))
    return Claim(
        job_id=job_id,
        seq=seq,
        task=TaskName(job.task),
        model=job.model,
        params=read_params(TaskName(job.task), job.params),
        indices=[r[0] for r in rows],
        inputs=[r[1] for r in rows],
        attempts=chunk.attempts,
        batch_key=job.batch_key,
        queue=job.queue,
    )


def claim_mates(session: Session, lead: Claim, *, worker: str, lease_seconds: int, max_items: int) -> list[Claim]:
    """Take queued chunks of other jobs with the leader's batch key and queue into its batch, oldest jobs first,
    never tried before, until the batch holds ``max_items`` items (the last one taken may overshoot). Chunks
    locked by another transaction are skipped, not waited for. Nothing when the leader is full already, past its
    first attempt, or keyless."""
    room = max_items - len(lead.indices)
    if room <= 0 or lead.attempts != 1 or lead.batch_key is None:
        return []
    candidates = session.execute(
        select(Chunk.job_id, Chunk.seq, Chunk.start, Chunk.stop)
        .join(Job, Job.id == Chunk.job_id)
        .where(
            Job.batch_key == lead.batch_key,
            Job.state.in_([JobState.QUEUED.value, JobState.RUNNING.value]),
            Job.task == lead.task.value,
            Job.model == lead.model,
            # Routed where the leader's job was (a job sent to a GPU queue is not taken by a CPU worker).
            Job.queue == lead.queue,
            # Other jobs only: a job's own chunk size is the user's choice of how to spread it over workers.
            Job.id != lead.job_id,
            Chunk.state == ChunkState.QUEUED.value,
            Chunk.attempts == 0,
        )
        .order_by(Job.created_at, Chunk.job_id, Chunk.seq)
        .limit(min(room, MAX_MATES))
        .with_for_update(of=Chunk, skip_locked=True)
    ).all()
    taken: list[tuple[str, int]] = []
    items = 0
    for job_id, seq, start, stop in candidates:
        if items >= room:
            break
        taken.append((job_id, seq))
        items += stop - start
    if not taken:
        return []
    now = utcnow()
    session.execute(
        update(Chunk)
        .where(keyed(Chunk.job_id, Chunk.seq, taken))
        .values(
            state=ChunkState.RUNNING.value,
            attempts=Chunk.attempts + 1,
            lease_until=now + dt.timedelta(seconds=lease_seconds),
            worker=worker,
            leader=lead.key,
        )
    )
    start_jobs(session, sorted({j for j, _ in taken}), now)
    rows = session.execute(
        select(Chunk.job_id, Chunk.seq, Item.index, Item.input)
        .join(Item, and_(Item.job_id == Chunk.job_id, Item.index >= Chunk.start, Item.index < Chunk.stop))
        .where(keyed(Chunk.job_id, Chunk.seq, taken), Item.state == ItemState.QUEUED.value)
        .order_by(Chunk.job_id, Chunk.seq, Item.index)
    ).all()
    if rows:
        session.execute(
            update(Item)
            .where(keyed(Item.job_id, Item.index, [(r[0], r[2]) for r in rows]))
            .values(attempts=Item.attempts + 1)
        )
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
        )
        for key in taken
    }
    for job_id, seq, index, data in rows:
        claim = by_chunk[(job_id, seq)]
        claim.indices.append(index)
        claim.inputs.append(data)
    return list(by_chunk.values())


def write_results(
    session: Session,
    claims: list[Claim],
    outcomes: list[list[Outcome | None]],
    *,
    job_error: InferqError | None = None,
) -> list[tuple[int, int, bool]]:
    """Store the outcomes of a claimed batch (a chunk and its batch-mates). Returns (succeeded, failed, chunk
    complete) per claim.

    Locks the chunk rows (in key order, so that two writers never wait on each other in a circle), then their
    still-queued items; only those get a result, in one executemany. A chunk that did not complete goes back to
    ``queued`` without a leader: its own message runs the rest."""
    keys = [(c.job_id, c.seq) for c in claims]
    chunks = {
        (c.job_id, c.seq): c
        for c in session.scalars(
            select(Chunk)
            .where(keyed(Chunk.job_id, Chunk.seq, keys))
            .order_by(Chunk.job_id, Chunk.seq)
            .with_for_update()
        )
    }
    live = [
        (claim, out)
        for claim, out in zip(claims, outcomes, strict=True)
        if (chunk := chunks.get((claim.job_id, claim.seq))) is not None and chunk.state != ChunkState.DONE.value
    ]
    pairs = [(c.job_id, i) for c, _ in live for i in c.indices]
    writable = (
        set(
            session.execute(
                select(Item.job_id, Item.index)
                .where(keyed(Item.job_id, Item.index, pairs), Item.state == ItemState.QUEUED.value)
                .order_by(Item.job_id, Item.index)
                .with_for_update()
            ).tuples()
        )
        if pairs
        else set()
    )
    now = utcnow()
    rows: list[dict[str, Any]] = []
    counts: dict[tuple[str, int], tuple[int, int, bool]] = {}
    per_job: dict[str, list[int]] = {}
    for claim, out in live:
        succeeded = failed = 0
        for index, outcome in zip(claim.indices, out, strict=False):
            if outcome is None or (claim.job_id, index) not in writable:
                continue
            rows.append(_row(claim.job_id, index, outcome, now))
            if outcome.ok:
                succeeded += 1
            else:
                failed += 1
        complete = len(out) == len(claim.indices) and all(o is not None for o in out)
        chunk = chunks[(claim.job_id, claim.seq)]
        chunk.state = ChunkState.DONE.value if complete else ChunkState.QUEUED.value
        chunk.finished_at = now if complete else None
        chunk.lease_until = None
        chunk.leader = None
        counts[(claim.job_id, claim.seq)] = (succeeded, failed, complete)
        job_counts = per_job.setdefault(claim.job_id, [0, 0])
        job_counts[0] += succeeded
        job_counts[1] += failed
    if rows:
        session.execute(update(Item), rows)
    if per_job:
        jobs = Job.metadata.tables[Job.__tablename__]
        session.execute(
            update(jobs)
            .where(jobs.c.id == bindparam("job"))
            .values(succeeded=jobs.c.succeeded + bindparam("ok"), failed=jobs.c.failed + bindparam("bad")),
            [{"job": j, "ok": ok, "bad": bad} for j, (ok, bad) in sorted(per_job.items())],
        )
        if job_error is not None:
            session.execute(
                update(Job).where(Job.id.in_(per_job)).values(error_code=job_error.code, error=job_error.message)
            )
        finish_jobs_if_complete(session, sorted(per_job), now)
    return [counts.get(key, (0, 0, True)) for key in keys]


def start_jobs(session: Session, job_ids: list[str], now: dt.datetime) -> None:
    """A claimed chunk starts its job: ``queued`` jobs become ``running``."""
    session.execute(
        update(Job)
        .where(Job.id.in_(job_ids), Job.state == JobState.QUEUED.value)
        .values(state=JobState.RUNNING.value, started_at=now)
    )


def keyed(job: Any, number: Any, keys: list[tuple[str, int]]) -> ColumnElement[bool]:
    """``(job, number)`` is one of ``keys``, as one ``job = j AND number IN (…)`` term per job: an index range
    scan each (a row-value IN list would be planned as one OR term per key)."""
    by_job: dict[str, list[int]] = {}
    for job_id, n in keys:
        by_job.setdefault(job_id, []).append(n)
    return or_(*(and_(job == job_id, number.in_(ns)) for job_id, ns in by_job.items()))


def finish_jobs_if_complete(session: Session, job_ids: list[str], now: dt.datetime) -> None:
    """Once every item has ended, the job ends: ``failed`` when the job itself could not run (its model would
    not load) and nothing succeeded, else ``succeeded``."""
    session.execute(
        update(Job)
        .where(
            Job.id.in_(job_ids),
            Job.state.in_([JobState.QUEUED.value, JobState.RUNNING.value]),
            Job.succeeded + Job.failed >= Job.total,
        )
        .values(
            state=case(
                ((Job.error_code.is_not(None)) & (Job.succeeded == 0), JobState.FAILED.value),
                else_=JobState.SUCCEEDED.value,
            ),
            finished_at=now,
        )
    )


def _row(job_id: str, index: int, outcome: Outcome, now: dt.datetime) -> dict[str, Any]:
    state = ItemState.SUCCEEDED if outcome.ok else ItemState.FAILED
    return {"job_id": job_id, "index": index, "state": state.value, **outcome.columns(), "finished_at": now}
