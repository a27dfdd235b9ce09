"""The claim on both databases: PostgreSQL's one statement (lock, decide, lease, start the job, read the inputs as
one aggregated column) and SQLite's statement per step lease the same way and read the same items; a claim that
waited for the chunk's lock reads the items as the lock's holder left them. A batch's mates and a message's next
chunk read their unfinished items the same way, each within its own chunk's range."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

import pytest
from sqlalchemy import Engine, func, insert, select, text, update
from sqlalchemy.orm import Session, sessionmaker

from inferq.db import make_engine, make_sessionmaker
from inferq.schema import Chunk, Job, Result, utcnow
from inferq.settings import Settings
from inferq.states import ChunkState, ItemState, JobState
from inferq.store.chunks import (
    MAX_MATES,
    ChunkOutcome,
    Claim,
    claim_chunk,
    claim_mates,
    claim_next,
    decode_inputs,
    renew_leases,
    write_results,
)
from inferq.task_specs import TaskName
from producer.client import store_job
from producer.inputs import InputRecord
from worker.engines.base import Outcome

T = TypeVar("T")

#: Texts that a JSON round trip could change: non-ASCII, a line separator, quotes and backslashes, an empty string.
TEXTS = ["plain", "héllo wörld ✓", "line\u2028separator", 'quote " and \\ backslash', "", "日本語のテキスト", "x" * 300]


#: The parameters of every job here: one batch key for all.
PARAMS = {"top_k": 1, "function_to_apply": "default"}


@pytest.fixture
def sessions(either_database: sessionmaker[Session]) -> sessionmaker[Session]:
    return either_database


def a_job(sessions: sessionmaker[Session], inputs: list[dict[str, Any]], chunk_size: int, queue: str = "q") -> str:
    job_id = uuid.uuid4().hex
    records = [InputRecord(line=i + 1, client_id=str(i), data=d) for i, d in enumerate(inputs)]
    with sessions.begin() as session:
        store_job(
            session,
            job_id,
            TaskName.CLASSIFICATION,
            "m",
            PARAMS,
            records,
            chunk_size,
            queue,
        )
    return job_id


def a_lead(sessions: sessionmaker[Session]) -> Claim:
    """A claimed one-item chunk on a queue of its own: the jobs a test adds there are the only ones it may take."""
    lead = claim(sessions, a_job(sessions, [{"text": "lead"}], chunk_size=1, queue=uuid.uuid4().hex), 0)
    assert isinstance(lead, Claim)
    return lead


def claim(sessions: sessionmaker[Session], job_id: str, seq: int, worker: str = "w") -> Claim | ChunkOutcome:
    with sessions.begin() as session:
        return claim_chunk(session, job_id, seq, worker=worker, lease_seconds=60)


def end_items(sessions: sessionmaker[Session], job_id: str, indices: list[int], state: ItemState) -> None:
    """Give the items a result row (as a write does): they have ended."""
    with sessions.begin() as session:
        session.execute(insert(Result), [result_row(job_id, i, state) for i in indices])


def result_row(job_id: str, index: int, state: ItemState) -> dict[str, object]:
    return {"job_id": job_id, "index": index, "state": state, "attempts": 1, "finished_at": utcnow()}


def lock_waiters(engine: Engine) -> int:
    """Sessions of this database waiting for a lock. A transaction of its own each time: within one, PostgreSQL
    answers pg_stat_activity from the snapshot it took at the first read, and a waiter that came later never shows."""
    with engine.connect() as probe:
        return int(
            probe.execute(
                text(
                    "SELECT count(*) FROM pg_stat_activity"
                    " WHERE wait_event_type = 'Lock' AND datname = current_database()"
                )
            ).scalar_one()
        )


def the_chunk(sessions: sessionmaker[Session], job_id: str, seq: int) -> Chunk:
    with sessions() as session:
        chunk = session.get(Chunk, (job_id, seq))
        assert chunk is not None
        return chunk


def test_a_claim_leases_the_chunk_and_reads_its_unfinished_items_in_order(sessions: sessionmaker[Session]) -> None:
    # Given a job of two chunks whose first has two items ended already
    inputs = [{"text": t} for t in TEXTS] + [{"text": "a", "text_pair": "b"}, {"text": "c"}, {"text": "d"}]
    job_id = a_job(sessions, inputs, chunk_size=6)
    end_items(sessions, job_id, [1, 4], ItemState.SUCCEEDED)

    # When its first chunk is claimed
    got = claim(sessions, job_id, 0)

    # Then the claim holds the other items of the chunk, inputs exactly as stored, in index order
    assert isinstance(got, Claim)
    assert got.indices == [0, 2, 3, 5]
    assert got.inputs == [inputs[i] for i in got.indices]
    assert (got.task, got.model, got.attempts, got.queue) == (TaskName.CLASSIFICATION, "m", 1, "q")
    assert got.params.top_k == 1
    assert got.waiting_since is not None
    # and the chunk is leased to the worker, its job started, the other chunk untouched
    chunk = the_chunk(sessions, job_id, 0)
    assert (chunk.state, chunk.attempts, chunk.worker, chunk.leader) == (ChunkState.RUNNING, 1, "w", None)
    assert chunk.lease_until is not None
    assert the_chunk(sessions, job_id, 1).state == ChunkState.QUEUED
    with sessions() as session:
        job = session.get(Job, job_id)
        assert job is not None and job.state == JobState.RUNNING and job.started_at is not None

    # When the second chunk is claimed: the items past the first
    second = claim(sessions, job_id, 1)
    assert isinstance(second, Claim)
    assert second.indices == list(range(6, len(inputs)))
    assert second.inputs == inputs[6:]

    # When the first chunk's message comes again (its worker died): a second attempt, by another worker
    again = claim(sessions, job_id, 0, worker="w2")
    assert isinstance(again, Claim)
    assert (again.attempts, again.indices) == (2, [0, 2, 3, 5])
    assert the_chunk(sessions, job_id, 0).worker == "w2"


def test_a_claim_of_a_chunk_with_no_unfinished_item_reads_nothing(sessions: sessionmaker[Session]) -> None:
    job_id = a_job(sessions, [{"text": t} for t in "abc"], chunk_size=3)
    end_items(sessions, job_id, [0, 1, 2], ItemState.FAILED)
    got = claim(sessions, job_id, 0)
    assert isinstance(got, Claim)
    assert (got.indices, got.inputs) == ([], [])


def test_what_a_claim_does_not_lease(sessions: sessionmaker[Session]) -> None:
    job_id = a_job(sessions, [{"text": t} for t in "abcd"], chunk_size=2)
    # A chunk done: skipped, unchanged
    with sessions.begin() as session:
        session.execute(update(Chunk).where(Chunk.job_id == job_id, Chunk.seq == 0).values(state=ChunkState.DONE))
    assert claim(sessions, job_id, 0) is ChunkOutcome.SKIPPED
    assert the_chunk(sessions, job_id, 0).attempts == 0
    # A chunk in another worker's batch with a live lease: deferred, unchanged
    with sessions.begin() as session:
        session.execute(
            update(Chunk)
            .where(Chunk.job_id == job_id, Chunk.seq == 1)
            .values(state=ChunkState.RUNNING, leader="other/0", worker="w9", lease_until=utcnow().replace(year=3000))
        )
    assert claim(sessions, job_id, 1) is ChunkOutcome.DEFERRED
    assert (the_chunk(sessions, job_id, 1).worker, the_chunk(sessions, job_id, 1).attempts) == ("w9", 0)
    # A chunk whose job was cancelled: skipped, and the chunk is closed
    with sessions.begin() as session:
        session.execute(update(Job).where(Job.id == job_id).values(state=JobState.CANCELLED))
    assert claim(sessions, job_id, 1) is ChunkOutcome.SKIPPED
    closed = the_chunk(sessions, job_id, 1)
    assert (closed.state, closed.leader, closed.attempts) == (ChunkState.DONE, None, 0)
    assert closed.finished_at is not None
    # A chunk that is gone: skipped
    assert claim(sessions, job_id, 7) is ChunkOutcome.SKIPPED


def test_a_second_attempt_releases_the_batch_it_led(sessions: sessionmaker[Session]) -> None:
    lead = a_job(sessions, [{"text": "a"}], chunk_size=1)
    mate = a_job(sessions, [{"text": "b"}], chunk_size=1)
    assert isinstance(claim(sessions, lead, 0), Claim)
    with sessions.begin() as session:
        session.execute(
            update(Chunk)
            .where(Chunk.job_id == mate)
            .values(state=ChunkState.RUNNING, leader=f"{lead}/0", worker="w", attempts=1, lease_until=utcnow())
        )
    # The lead's message comes back (its worker died): its unfinished batch-mate goes back to its own message
    again = claim(sessions, lead, 0)
    assert isinstance(again, Claim) and again.attempts == 2
    released = the_chunk(sessions, mate, 0)
    assert (released.state, released.leader, released.worker, released.lease_until) == (
        ChunkState.QUEUED,
        None,
        None,
        None,
    )


@pytest.mark.services
def test_a_claim_that_waited_for_the_chunk_reads_the_items_as_its_holder_left_them(migrated_postgres: str) -> None:
    """PostgreSQL: the claim's statement sees the database as of its start; a writer that held the chunk's lock and
    ended items commits after that, while the claim waits. The claim must read those items as ended."""
    engine = make_engine(Settings(database_url=migrated_postgres))
    sessions = make_sessionmaker(engine)
    try:
        job_id = a_job(sessions, [{"text": t} for t in "abcdef"], chunk_size=6)
        # Given a writer holding the chunk's row lock (as `write_results` does) that ends items 0-2
        writer = sessions()
        writer.begin()
        writer.execute(select(Chunk).where(Chunk.job_id == job_id).with_for_update())
        writer.execute(insert(Result), [result_row(job_id, i, ItemState.SUCCEEDED) for i in range(3)])
        writer.execute(update(Chunk).where(Chunk.job_id == job_id).values(state=ChunkState.QUEUED, attempts=1))
        # When a claim of the chunk starts meanwhile, and waits for the lock
        got: list[Claim | ChunkOutcome] = []
        claimer = threading.Thread(target=lambda: got.append(claim(sessions, job_id, 0)))
        claimer.start()
        deadline = time.monotonic() + 60
        while not lock_waiters(engine):
            assert time.monotonic() < deadline, "the claim never waited for the chunk's lock"
            time.sleep(0.05)
        # and the writer commits
        writer.commit()
        writer.close()
        claimer.join(timeout=60)
        # Then the claim reads only the items still unfinished after the writer's commit
        assert len(got) == 1 and isinstance(got[0], Claim)
        assert got[0].indices == [3, 4, 5]
        assert got[0].inputs == [{"text": t} for t in "def"]
        assert got[0].attempts == 2
    finally:
        engine.dispose()


@pytest.mark.services
def test_a_claim_reads_the_results_of_its_own_chunk_only(migrated_postgres: str) -> None:
    """PostgreSQL: the claim's read of unfinished items looks up results within the chunk's range, whatever plan
    the database picks. A million-item job's claims slowed with every chunk stored (a hash anti join over every
    result of the job: the null device's run took 268 s instead of 61)."""
    engine = make_engine(Settings(database_url=migrated_postgres))
    sessions = make_sessionmaker(engine)
    try:
        # Given a job of 20 chunks of 50 items whose first 19 chunks have ended
        job_id = a_job(sessions, [{"text": f"text {i}"} for i in range(1_000)], chunk_size=50)
        end_items(sessions, job_id, list(range(950)), ItemState.SUCCEEDED)
        # When its last chunk is claimed under the plan a big job's statistics lead to
        claimed, read = results_read_hashing(
            engine, sessions, lambda session: claim_chunk(session, job_id, 19, worker="w", lease_seconds=60)
        )
        # Then it read its 50 items and looked at no other chunk's results
        assert isinstance(claimed, Claim) and claimed.indices == list(range(950, 1_000))
        assert read <= 50, f"the claim read {read} rows of results for a chunk of 50"
    finally:
        engine.dispose()


def test_batch_mates_read_their_unfinished_items_in_order(sessions: sessionmaker[Session]) -> None:
    # Given a leading one-item job and, on its queue with its batch key, a job of two chunks some of whose items
    # have a result (from an earlier partial run), and a job whose every item has one
    lead = a_lead(sessions)
    inputs = [{"text": t} for t in TEXTS]
    partial = a_job(sessions, inputs, chunk_size=4, queue=lead.queue)
    end_items(sessions, partial, [1, 2, 5], ItemState.SUCCEEDED)
    ended = a_job(sessions, [{"text": "x"}, {"text": "y"}], chunk_size=2, queue=lead.queue)
    end_items(sessions, ended, [0, 1], ItemState.FAILED)

    # When the leader takes its batch-mates
    with sessions.begin() as session:
        mates = claim_mates(session, lead, worker="w", lease_seconds=60, max_items=100)

    # Then each mate holds its own chunk's unfinished items, inputs exactly as stored, in index order
    assert [(m.job_id, m.seq) for m in mates] == [(partial, 0), (partial, 1), (ended, 0)]
    assert [m.indices for m in mates] == [[0, 3], [4, 6], []]
    assert [m.inputs for m in mates] == [[inputs[0], inputs[3]], [inputs[4], inputs[6]], []]
    # and runs in the leader's batch
    for mate in mates:
        chunk = the_chunk(sessions, mate.job_id, mate.seq)
        assert (chunk.state, chunk.leader, chunk.worker, chunk.attempts) == (ChunkState.RUNNING, lead.key, "w", 1)


def test_the_next_chunk_reads_its_unfinished_items_in_order(sessions: sessionmaker[Session]) -> None:
    # Given a claimed chunk and, on its queue with its batch key, a job whose first chunk has an item with a result
    lead = a_lead(sessions)
    inputs = [{"text": t} for t in TEXTS]
    job_id = a_job(sessions, inputs, chunk_size=3, queue=lead.queue)
    end_items(sessions, job_id, [1], ItemState.SUCCEEDED)

    # When the leader's message takes the next chunk
    with sessions.begin() as session:
        nxt = claim_next(session, lead, worker="w", lease_seconds=60, leader=lead.key)

    # Then it holds that chunk's unfinished items in index order
    assert nxt is not None and (nxt.job_id, nxt.seq) == (job_id, 0)
    assert (nxt.indices, nxt.inputs) == ([0, 2], [inputs[0], inputs[2]])


@pytest.mark.services
@pytest.mark.parametrize("take", ["mates", "next"])
def test_a_batch_mate_reads_the_results_of_its_own_chunk_only(migrated_postgres: str, take: str) -> None:
    """PostgreSQL: a batch-mate's (and a message's next chunk's) read of unfinished items looks up results within
    the chunk's range, whatever plan the database picks. A mate read joined with its chunk's row hashed every
    result of the mate's job."""
    engine = make_engine(Settings(database_url=migrated_postgres))
    sessions = make_sessionmaker(engine)
    try:
        # Given a claimed one-item chunk and, on its queue with its batch key, a job of 2,000 items whose every
        # chunk but one of 50 has ended
        lead = a_lead(sessions)
        mate = a_job(sessions, [{"text": f"text {i}"} for i in range(2_000)], chunk_size=50, queue=lead.queue)
        end_items(sessions, mate, [i for i in range(2_000) if not 1_000 <= i < 1_050], ItemState.SUCCEEDED)
        with sessions.begin() as session:
            session.execute(update(Chunk).where(Chunk.job_id == mate, Chunk.seq != 20).values(state=ChunkState.DONE))

        # When the leader takes that chunk, as a batch-mate or as its next, under the plan a big job's statistics
        # lead to
        def taking(session: Session) -> list[Claim]:
            if take == "mates":
                return claim_mates(session, lead, worker="w", lease_seconds=60, max_items=51)
            nxt = claim_next(session, lead, worker="w", lease_seconds=60, leader=lead.key)
            return [nxt] if nxt is not None else []

        taken, read = results_read_hashing(engine, sessions, taking)
        # Then it read the chunk's 50 items and looked at no other chunk's results
        assert [(c.job_id, c.seq, c.indices) for c in taken] == [(mate, 20, list(range(1_000, 1_050)))]
        assert read <= 50, f"the read looked at {read} rows of results for a chunk of 50"
    finally:
        engine.dispose()


def results_read_hashing(engine: Engine, sessions: sessionmaker[Session], run: Callable[[Session], T]) -> tuple[T, int]:
    """What ``run`` returns, run in a transaction of its own under the plan a big job's statistics lead to (fresh
    statistics, no nested loop: an anti join hashes the results it looks at), and the rows of ``results`` it read."""
    with engine.connect() as conn:
        conn.execute(text("ANALYZE items, results"))
    with sessions.begin() as session:
        conn = session.connection()
        conn.execute(text("SET LOCAL enable_nestloop = off"))
        before = results_rows_read(conn)
        got = run(session)
        return got, results_rows_read(conn) - before


def results_rows_read(conn: Any) -> int:
    """Rows of ``results`` this transaction has read so far, by index or by scan (PostgreSQL's statistics)."""
    return int(
        conn.execute(
            text(
                "SELECT coalesce(idx_tup_fetch, 0) + coalesce(seq_tup_read, 0) FROM pg_stat_xact_user_tables"
                " WHERE relname = 'results'"
            )
        ).scalar()
        or 0
    )


def test_inputs_are_decoded_in_one_call_even_where_orjson_refuses() -> None:
    assert decode_inputs('[{"text": "a"}, {"text": "\\u00e9"}]') == [{"text": "a"}, {"text": "é"}]
    # A lone surrogate's escape (what json.dumps writes for it): orjson refuses it, the standard library reads it.
    assert decode_inputs('[{"text": "\\ud800"}]') == [{"text": "\ud800"}]


def test_a_batch_of_a_thousand_one_chunk_jobs_is_leased_renewed_and_written(sessions: sessionmaker[Session]) -> None:
    # Given a leader and, on its queue with its batch key, as many one-item jobs as a batch may take
    lead = a_lead(sessions)
    records = [InputRecord(line=1, client_id="0", data={"text": "mate"})]
    with sessions.begin() as session:
        for _ in range(MAX_MATES):
            store_job(session, uuid.uuid4().hex, TaskName.CLASSIFICATION, "m", PARAMS, records, 1, lead.queue)

    # When the leader takes them all into its batch, renews their leases and writes their results
    with sessions.begin() as session:
        mates = claim_mates(session, lead, worker="w", lease_seconds=60, max_items=MAX_MATES + 1)
    claims = [lead, *mates]
    keys = [(c.job_id, c.seq) for c in claims]
    with sessions.begin() as session:
        renew_leases(session, keys, "w", 120)
    with sessions.begin() as session:
        written = write_results(session, claims, [[Outcome(result=[], label="x", score=1.0)] for _ in claims])

    # Then every chunk ran in the batch and is done (on SQLite too, whose parser refuses a condition of a thousand
    # OR-ed terms)
    assert len(mates) == MAX_MATES
    assert all(chunk.complete and chunk.succeeded == 1 for chunk in written.chunks)
    with sessions() as session:
        done = session.scalar(
            select(func.count())
            .select_from(Chunk)
            .join(Job, Job.id == Chunk.job_id)
            .where(Job.queue == lead.queue, Chunk.state == ChunkState.DONE)
        )
    assert done == MAX_MATES + 1
