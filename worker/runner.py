"""Running one chunk: claim it, infer outside any transaction, write every result in one bulk statement.

Idempotent: a chunk that is already done writes nothing; an item gets a result only while it is still
``queued``, under a row lock, so two deliveries of the same chunk never write an item twice.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import case, select, update
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from inferq import constants
from inferq.db import make_sessionmaker
from inferq.errors import AttemptsExhausted, InferqError, ModelError
from inferq.schema import Chunk, Item, Job, utcnow
from inferq.settings import Settings
from inferq.states import FINISHED_JOB_STATES, ChunkState, ItemState, JobState
from inferq.tasks import TaskName
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


def is_transient_db_error(exc: BaseException) -> bool:
    """The database is unreachable or dropped the connection (retry), as opposed to a bad statement (don't)."""
    return isinstance(exc, OperationalError) or (isinstance(exc, DBAPIError) and exc.connection_invalidated)


@dataclass
class Claim:
    job_id: str
    seq: int
    task: TaskName
    model: str
    params: dict[str, Any]
    indices: list[int]
    inputs: list[dict[str, Any]]
    #: Claimed more often than `MAX_CHUNK_ATTEMPTS`: its items are given up, not run again.
    attempts: int = 1


@dataclass
class ChunkReport:
    job_id: str
    seq: int
    #: What happened: `DONE`, `SKIPPED`, `STOPPED` (cancelled mid-way) or `HANDED_BACK` (shutting down).
    outcome: str
    succeeded: int = 0
    failed: int = 0
    seconds: float = 0.0


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
        if claim is None:
            return ChunkReport(job_id, seq, SKIPPED)
        with _LeaseKeeper(self.sessions, claim, self.worker, self.settings.lease_seconds):
            outcomes, job_error = self._infer(claim)
        succeeded, failed, complete = self._write(claim, outcomes, job_error)
        seconds = time.perf_counter() - started
        outcome = DONE if complete else (HANDED_BACK if self.stopping() else STOPPED)
        log.info(
            "job %s chunk %d: %s, %d succeeded, %d failed in %.2fs", job_id, seq, outcome, succeeded, failed, seconds
        )
        return ChunkReport(job_id, seq, outcome, succeeded, failed, seconds)

    def _write(
        self, claim: Claim, outcomes: list[Outcome | None], job_error: InferqError | None
    ) -> tuple[int, int, bool]:
        """`write_results` in one transaction, tried again with backoff while the database is unreachable.
        Idempotent: a commit whose answer was lost is found done by the next try."""
        delay = 1.0
        deadline = time.monotonic() + WRITE_RETRY_SECONDS
        while True:
            try:
                with self.sessions.begin() as session:
                    return write_results(session, claim, outcomes, job_error=job_error)
            except DBAPIError as exc:
                if not is_transient_db_error(exc) or time.monotonic() + delay > deadline or self.stopping():
                    raise
                log.warning(
                    "job %s chunk %d: database unreachable while storing results (%s); trying again in %.0fs",
                    claim.job_id,
                    claim.seq,
                    type(exc.orig).__name__ if exc.orig is not None else type(exc).__name__,
                    delay,
                )
                time.sleep(delay)
                delay = min(delay * 2, WRITE_RETRY_MAX_DELAY)

    def _infer(self, claim: Claim) -> tuple[list[Outcome | None], InferqError | None]:
        if not claim.inputs:
            return [], None
        if claim.attempts > MAX_CHUNK_ATTEMPTS:
            exc = AttemptsExhausted(f"chunk {claim.seq} was started {claim.attempts - 1} times without finishing")
            log.error("job %s: %s; giving its %d unfinished items up", claim.job_id, exc, len(claim.inputs))
            return [Outcome.failure(exc) for _ in claim.inputs], None
        try:
            engine = self.registry.engine(claim.model, claim.task)
        except (ModelError, InferqError) as exc:
            # The model cannot run: every item records why, and so does the job.
            log.error("job %s: %s", claim.job_id, exc)
            return [Outcome.failure(exc) for _ in claim.inputs], exc
        # Cancelled or shutting down mid-chunk: items whose micro-batches did not run come back as None and stay
        # unwritten.
        should_stop = _StopCheck(self.reader, claim.job_id, self.stopping)
        return engine.run(claim.inputs, claim.params, should_stop=should_stop), None


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

    def __init__(self, sessions: sessionmaker[Session], claim: Claim, worker: str, lease_seconds: int) -> None:
        self.sessions = sessions
        self.claim = claim
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
                            Chunk.job_id == self.claim.job_id,
                            Chunk.seq == self.claim.seq,
                            Chunk.state == ChunkState.RUNNING.value,
                            Chunk.worker == self.worker,
                        )
                        .values(lease_until=utcnow() + dt.timedelta(seconds=self.lease_seconds))
                    )
            except Exception as exc:
                log.debug("job %s chunk %d: lease not renewed (%s)", self.claim.job_id, self.claim.seq, exc)


def claim_chunk(session: Session, job_id: str, seq: int, *, worker: str, lease_seconds: int) -> Claim | None:
    """Lease a chunk to this worker and read its unfinished items. ``None``: nothing to do."""
    job = session.get(Job, job_id)
    if job is None:
        log.warning("job %s is gone; dropping chunk %d", job_id, seq)
        return None
    chunk = session.scalar(select(Chunk).where(Chunk.job_id == job_id, Chunk.seq == seq).with_for_update())
    if chunk is None or chunk.state == ChunkState.DONE.value:
        return None
    now = utcnow()
    if JobState(job.state) in FINISHED_JOB_STATES:
        chunk.state, chunk.finished_at = ChunkState.DONE.value, now
        return None
    chunk.state = ChunkState.RUNNING.value
    chunk.attempts += 1
    chunk.lease_until = now + dt.timedelta(seconds=lease_seconds)
    chunk.worker = worker
    session.execute(
        update(Job)
        .where(Job.id == job_id, Job.state == JobState.QUEUED.value)
        .values(state=JobState.RUNNING.value, started_at=now)
    )
    in_chunk = (Item.job_id == job_id, Item.index >= chunk.start, Item.index < chunk.stop)
    queued = Item.state == ItemState.QUEUED.value
    rows = session.execute(select(Item.index, Item.input).where(*in_chunk, queued).order_by(Item.index)).all()
    session.execute(update(Item).where(*in_chunk, queued).values(attempts=Item.attempts + 1))
    return Claim(
        job_id=job_id,
        seq=seq,
        task=TaskName(job.task),
        model=job.model,
        params=dict(job.params),
        indices=[r[0] for r in rows],
        inputs=[r[1] for r in rows],
        attempts=chunk.attempts,
    )


def write_results(
    session: Session, claim: Claim, outcomes: list[Outcome | None], *, job_error: InferqError | None = None
) -> tuple[int, int, bool]:
    """Store the outcomes of a claimed chunk. Returns (succeeded, failed, chunk complete).

    Locks the chunk row, then the chunk's still-queued items; only those get a result, in one executemany."""
    chunk = session.scalar(select(Chunk).where(Chunk.job_id == claim.job_id, Chunk.seq == claim.seq).with_for_update())
    if chunk is None or chunk.state == ChunkState.DONE.value:
        return 0, 0, True
    writable = set(
        session.scalars(
            select(Item.index)
            .where(
                Item.job_id == claim.job_id,
                Item.index.in_(claim.indices),
                Item.state == ItemState.QUEUED.value,
            )
            .with_for_update()
        )
    )
    now = utcnow()
    rows: list[dict[str, Any]] = []
    succeeded = failed = 0
    for index, outcome in zip(claim.indices, outcomes, strict=False):
        if outcome is None or index not in writable:
            continue
        row = _row(claim.job_id, index, outcome, now)
        if outcome.ok:
            succeeded += 1
        else:
            failed += 1
        rows.append(row)
    if rows:
        session.execute(update(Item), rows)
    complete = len(outcomes) == len(claim.indices) and all(o is not None for o in outcomes)
    chunk.state = ChunkState.DONE.value if complete else ChunkState.QUEUED.value
    chunk.finished_at = now if complete else None
    chunk.lease_until = None
    job_values: dict[str, Any] = {"succeeded": Job.succeeded + succeeded, "failed": Job.failed + failed}
    if job_error is not None:
        job_values.update(error_code=job_error.code, error=job_error.message)
    session.execute(update(Job).where(Job.id == claim.job_id).values(**job_values))
    finish_job_if_complete(session, claim.job_id, now)
    return succeeded, failed, complete


def finish_job_if_complete(session: Session, job_id: str, now: dt.datetime) -> None:
    """Once every item has ended, the job ends: ``failed`` when the job itself could not run (its model would
    not load) and nothing succeeded, else ``succeeded``."""
    session.execute(
        update(Job)
        .where(
            Job.id == job_id,
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
    if outcome.error is not None:
        return {
            "job_id": job_id,
            "index": index,
            "state": ItemState.FAILED.value,
            "result": None,
            "label": None,
            "score": None,
            "answer": None,
            "start_char": None,
            "end_char": None,
            "entity_count": None,
            "error_code": outcome.error.code,
            "error_message": outcome.error.message[:2000],
            "finished_at": now,
        }
    return {
        "job_id": job_id,
        "index": index,
        "state": ItemState.SUCCEEDED.value,
        "result": outcome.result,
        "label": outcome.label,
        "score": outcome.score,
        "answer": outcome.answer,
        "start_char": outcome.start_char,
        "end_char": outcome.end_char,
        "entity_count": outcome.entity_count,
        "error_code": None,
        "error_message": None,
        "finished_at": now,
    }
