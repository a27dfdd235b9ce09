"""Running one chunk: claim it, infer outside any transaction, write every result in one bulk statement.

The SQL of each step (claim, lease, write) and its guarantees are `inferq.store.chunks`; `LeaseKeeper` renews the
leases while the batch computes. Idempotent: a chunk that is
already done writes nothing; an item gets a result only while it is still ``queued``, under a row lock, so two
deliveries of the same chunk never write an item twice. An unreachable database (`DatabaseUnavailable`) does not
lose computed results: storing them is tried again with backoff for a while.

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

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy.orm import Session, sessionmaker

from inferq import constants, metrics
from inferq.db import make_sessionmaker
from inferq.errors import AttemptsExhausted, DatabaseUnavailable, InferqError, ModelError, backoff
from inferq.settings import Settings
from inferq.store.chunks import (
    ChunkOutcome,
    Claim,
    NotClaimed,
    Written,
    claim_chunk,
    claim_mates,
    job_state,
    renew_leases,
    write_results,
)
from worker.engines.base import Outcome
from worker.model_cache import ModelCache
from worker.stages import StageClock

log = logging.getLogger(__name__)

#: Claims of one chunk before its unfinished items are recorded as failed (a chunk that kills its worker
#: every time must not loop forever).
MAX_CHUNK_ATTEMPTS = constants.MAX_CHUNK_ATTEMPTS

#: Seconds before a lease renewal that failed (the database unreachable for a moment) is tried again: a short
#: outage then costs no lease.
RENEW_RETRY_SECONDS = 2.0

#: Seconds between cancellation checks while a chunk computes (one primary-key read each).
CANCEL_CHECK_SECONDS = 1.0

#: Seconds a worker keeps trying to store a computed chunk while the database is unreachable (1, 2, 4, then every
#: 5 s: one connection attempt each, cheap) before it gives up and lets the task retry the chunk from scratch:
#: results already computed are worth waiting a couple of minutes for.
WRITE_RETRY_SECONDS = 120.0
WRITE_RETRY_FIRST_DELAY = 1.0
WRITE_RETRY_MAX_DELAY = 5.0


@dataclass
class ChunkReport:
    job_id: str
    seq: int
    #: What this delivery came to (done, skipped, stopped mid-way, handed back, deferred).
    outcome: ChunkOutcome
    #: Items of this chunk only.
    succeeded: int = 0
    failed: int = 0
    seconds: float = 0.0
    #: Chunks of other jobs that ran in the same batch.
    mates: int = 0
    #: Webhook deliveries recorded by this delivery's write (the jobs it ended), committed: the task enqueues them.
    webhooks: list[str] = field(default_factory=list)
    #: Seconds per stage (`worker.stages.STAGES`; ``gap`` before ``seconds``, the rest within it); empty for a
    #: delivery that claimed nothing.
    stages: dict[str, float] = field(default_factory=dict)
    #: When each stage began and ended (`worker.stages.StageClock.spans`, ``time.perf_counter``).
    spans: dict[str, tuple[float, float]] = field(default_factory=dict)


class Runner:
    """Runs chunks for one worker process. Holds the model cache; the caller owns nothing else.

    ``stopping`` says whether this worker is shutting down (warm shutdown): it is asked between micro-batches,
    and a chunk that has not finished is stored as far as it ran and handed back."""

    def __init__(
        self,
        settings: Settings,
        sessions: sessionmaker[Session],
        model_cache: ModelCache,
        worker: str,
        *,
        stopping: Callable[[], bool] = lambda: False,
    ) -> None:
        self.settings = settings
        self.sessions = sessions
        self.reader = make_sessionmaker(sessions.kw["bind"], read_only=True)
        self.model_cache = model_cache
        self.worker = worker
        self.stopping = stopping
        #: Chunks running now: one per pool thread under ``--pool threads``, which share this runner and its
        #: loaded models.
        self._running = 0
        self._running_lock = threading.Lock()
        #: Per thread: when its previous chunk ended (`time.perf_counter`), where the next chunk's ``gap`` starts.
        self._last = threading.local()

    @property
    def busy(self) -> bool:
        """Whether a chunk is running (a SIGTERM then waits for the current micro-batch instead of killing)."""
        return self._running > 0

    def run_chunk(self, job_id: str, seq: int) -> ChunkReport:
        if self.stopping():
            # Not even claimed: the message goes straight back.
            return ChunkReport(job_id, seq, ChunkOutcome.HANDED_BACK)
        with self._running_lock:
            self._running += 1
        clock = StageClock()
        last_end: float | None = getattr(self._last, "end", None)
        if last_end is not None:
            clock.add("gap", clock.started - last_end)
        try:
            return self._run_chunk(job_id, seq, clock)
        finally:
            with self._running_lock:
                self._running -= 1
            self._last.end = time.perf_counter()

    def _run_chunk(self, job_id: str, seq: int, clock: StageClock) -> ChunkReport:
        claims = self._claim(job_id, seq, clock)
        if not isinstance(claims, list):
            return ChunkReport(job_id, seq, claims)
        clock.lap("claim")
        with LeaseKeeper(self.sessions, claims, self.worker, self.settings.lease_seconds):
            outcomes, job_error = self._infer(claims, clock)
        clock.skip()
        written = self._write(claims, outcomes, job_error, clock)
        lead, *mates = written.chunks
        seconds = clock.wall()
        if lead.complete:
            outcome = ChunkOutcome.DONE
        else:
            outcome = ChunkOutcome.HANDED_BACK if self.stopping() else ChunkOutcome.STOPPED
        metrics.chunk_stored(claims, [lead, *mates], seconds)
        batch = (
            f", in one batch with {len(mates)} chunks of other jobs ({sum(len(c.indices) for c in claims)} items,"
            f" {sum(1 for m in mates if m.complete)} of their chunks done)"
            if mates
            else ""
        )
        log.info(
            "job %s chunk %d: %s, %d succeeded, %d failed in %.2fs%s; %s",
            job_id,
            seq,
            outcome.value,
            lead.succeeded,
            lead.failed,
            seconds,
            batch,
            clock.summary(seconds),
            extra={
                **chunk_fields(claims[0], outcome, lead.succeeded, lead.failed, seconds, len(mates)),
                "stages_ms": {k: round(1000 * v, 3) for k, v in clock.seconds.items()},
            },
        )
        return ChunkReport(
            job_id,
            seq,
            outcome,
            lead.succeeded,
            lead.failed,
            seconds,
            len(mates),
            webhooks=written.webhooks,
            stages=dict(clock.seconds),
            spans=dict(clock.spans),
        )

    def _claim(self, job_id: str, seq: int, clock: StageClock) -> list[Claim] | NotClaimed:
        """The chunk and its batch-mates, claimed in one transaction; or why there is nothing to run."""
        lease_seconds = self.settings.lease_seconds
        with self.sessions.begin() as session:
            claim = claim_chunk(
                session,
                job_id,
                seq,
                worker=self.worker,
                lease_seconds=lease_seconds,
                clock=clock,
                # Under the dispatcher, a released chunk taken off the broker makes room in its window: say so.
                wake_dispatcher=self.settings.fair_dispatch,
            )
            if claim is ChunkOutcome.DEFERRED:
                log.info("job %s chunk %d: running in another worker's batch; looking again later", job_id, seq)
            if not isinstance(claim, Claim):
                return claim
            mates = claim_mates(
                session,
                claim,
                worker=self.worker,
                lease_seconds=lease_seconds,
                max_items=self.settings.coalesce_items,
                # Under the dispatcher, only chunks it released: batch-mates keep the fair order and the caps.
                released_only=self.settings.fair_dispatch,
                clock=clock,
            )
        claims = [claim, *mates]
        metrics.chunk_claimed(claims)
        return claims

    def _write(
        self,
        claims: list[Claim],
        outcomes: list[list[Outcome | None]],
        job_error: InferqError | None,
        clock: StageClock,
    ) -> Written:
        """`write_results` in one transaction, tried again with `backoff` while the database is unreachable.
        Idempotent: a commit whose answer was lost is found done by the next try."""
        deadline = time.monotonic() + WRITE_RETRY_SECONDS
        tries = 0
        while True:
            try:
                with self.sessions.begin() as session:
                    stored = write_results(session, claims, outcomes, job_error=job_error)
                    session.flush()
                    clock.lap("write")
                clock.lap("commit")
                return stored
            except DatabaseUnavailable as exc:
                delay = backoff(tries, WRITE_RETRY_FIRST_DELAY, WRITE_RETRY_MAX_DELAY)
                if time.monotonic() + delay > deadline or self.stopping():
                    raise
                metrics.database_retry("write")
                log.warning(
                    "job %s chunk %d: results not stored, %s (%s); trying again in %.0fs",
                    claims[0].job_id,
                    claims[0].seq,
                    exc.message,
                    exc.kind,
                    delay,
                )
                time.sleep(delay)
                tries += 1

    def _infer(self, claims: list[Claim], clock: StageClock) -> tuple[list[list[Outcome | None]], InferqError | None]:
        """Outcomes per claim. The batch shares task, model and parameters (the leader's)."""
        lead = claims[0]
        if not any(c.inputs for c in claims):
            return [[] for _ in claims], None
        if lead.attempts > MAX_CHUNK_ATTEMPTS:  # a leader past its first attempt has no batch-mates
            exc = AttemptsExhausted(f"chunk {lead.seq} was started {lead.attempts - 1} times without finishing")
            log.error("job %s: %s; giving its %d unfinished items up", lead.job_id, exc, len(lead.inputs))
            metrics.chunk_exhausted(lead)
            return [[Outcome.failure(exc) for _ in lead.inputs]], None
        try:
            engine = self.model_cache.engine(lead.model, lead.task)
        except (ModelError, InferqError) as exc:
            # The model cannot run: every item records why, and so does every job of the batch.
            log.error("job %s: %s", lead.job_id, exc)
            return [[Outcome.failure(exc) for _ in c.inputs] for c in claims], exc
        # Cancelled or shutting down mid-chunk: items whose micro-batches did not run come back as None and stay
        # unwritten.
        should_stop = _StopCheck(self.reader, lead.job_id, self.stopping)
        inputs = [x for c in claims for x in c.inputs]
        clock.skip()
        flat = engine.run(inputs, lead.params, should_stop=should_stop, clock=clock)
        split: list[list[Outcome | None]] = []
        at = 0
        for c in claims:
            split.append(flat[at : at + len(c.inputs)])
            at += len(c.inputs)
        return split, None


class LeaseKeeper:
    """Renews claimed chunks' leases every third of ``lease_seconds`` while they compute (every `RENEW_RETRY_SECONDS`
    after a renewal failed), in a thread, so that an expired lease means a dead worker (or one cut off from the
    database), never a slow chunk: `inferq recover` re-enqueues chunks whose lease expired."""

    def __init__(self, sessions: sessionmaker[Session], claims: list[Claim], worker: str, lease_seconds: int) -> None:
        self.sessions = sessions
        self.claims = claims
        self.keys = [(c.job_id, c.seq) for c in claims]
        self.worker = worker
        self.lease_seconds = lease_seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="inferq-lease", daemon=True)

    def __enter__(self) -> LeaseKeeper:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        # Not waiting long: a renewal stuck on an unreachable database must not hold the chunk up (it would only
        # renew a lease the chunk no longer needs, and renews nothing once the chunk is no longer running).
        self._thread.join(timeout=5)

    def _loop(self) -> None:
        every = max(1.0, self.lease_seconds / 3)
        wait = every
        while not self._stop.wait(wait):
            try:
                with self.sessions.begin() as session:
                    renew_leases(session, self.keys, self.worker, self.lease_seconds)
                wait = every
            except Exception as exc:
                lead = self.claims[0]
                log.debug("job %s chunk %d: lease not renewed (%s)", lead.job_id, lead.seq, exc)
                wait = min(every, RENEW_RETRY_SECONDS)


def chunk_fields(
    lead: Claim, outcome: ChunkOutcome, succeeded: int, failed: int, seconds: float, mates: int
) -> dict[str, object]:
    """The structured fields of a chunk's log line (`inferq.logs`: the JSON format writes them out)."""
    return {
        "model": lead.model,
        "task": lead.task.value,
        "queue": lead.queue,
        "outcome": outcome.value,
        "succeeded": succeeded,
        "failed": failed,
        "seconds": round(seconds, 6),
        "mates": mates,
    }


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
                state = job_state(session, self.job_id)
        except DatabaseUnavailable:
            log.debug("job %s: cancellation check skipped, database unreachable", self.job_id)
            return False
        self.stopped = state is None or state.finished
        return self.stopped
