"""Issue 23: the dispatcher's leader wakes on PostgreSQL's notifications instead of polling, on real PostgreSQL (a
database of each test's own, so that no other test's leader or notification meets it) and a real Redis broker,
without workers: a claim is `claim_chunk` itself, as a worker calls it.

Counting rounds and messages, not seconds: where a heartbeat of 30 s is set, a chunk released within the generous
bound of 15 s was released because a notification woke the leader (the bound only ends a broken run early)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from sqlalchemy import func, select, update

from inferq.dispatcher import Dispatcher
from inferq.schema import Chunk, utcnow
from inferq.store.chunks import claim_chunk
from inferq.store.jobs import cancel_job
from tests.inferq.test_dispatcher import Bench
from tests.support.records import wait_for

pytestmark = pytest.mark.services

#: Far longer than any wait of these tests: what happens within it was woken by a notification.
LONG_HEARTBEAT = 30.0
#: The generous bound of a wait for what a notification causes (the machine may be loaded).
WOKEN_WITHIN = 15.0


@pytest.fixture
def bench(own_postgres: str, redis_url: str, queue_name: str) -> Iterator[Bench]:
    bench = Bench(own_postgres, redis_url, queue_name, window=1)
    try:
        yield bench
    finally:
        bench.close()


def leading(bench: Bench, **settings: float) -> Dispatcher:
    """A dispatcher on ``bench``'s database with ``settings``, started, once it leads and ran its first round."""
    bench.settings = bench.settings.model_copy(update=settings)
    leader = Dispatcher(bench.settings, bench.engine, bench.sessions, bench.celery)
    leader.start()
    wait_for(lambda: leader.state.leader and leader.rounds >= 1, WOKEN_WITHIN, "the dispatcher to lead")
    return leader


def next_message(bench: Bench, what: str, within: float = WOKEN_WITHIN) -> tuple[str, int]:
    taken = wait_for(bench.take_messages, within, what)
    assert len(taken) == 1, taken
    return taken[0]


def claim(bench: Bench, job_id: str, seq: int) -> None:
    """A worker's claim of the chunk, as `worker.runner` makes it under ``INFERQ_DISPATCH=fair``."""
    with bench.sessions.begin() as session:
        claimed = claim_chunk(session, job_id, seq, worker="w", lease_seconds=600, wake_dispatcher=True)
    assert not isinstance(claimed, str) and getattr(claimed, "seq", None) == seq, claimed


def test_a_submit_a_claim_and_a_cancel_wake_the_leader_long_before_its_heartbeat(bench: Bench) -> None:
    # Given a job stored before any leader listened (its notification went to nobody), and a window of 1
    early = bench.job("a", 2)

    # When a dispatcher with a heartbeat of 30 s takes the lead
    leader = leading(bench, dispatch_heartbeat=LONG_HEARTBEAT)
    try:
        # Then its first round, at once, releases the early job's first chunk: nothing missed
        assert next_message(bench, "the first round's chunk") == (early, 0)

        # When a worker claims it (room in the window), the claim's notification wakes the leader for the next one
        wakes = leader.wakes
        claim(bench, early, 0)
        assert next_message(bench, "the chunk released after a claim") == (early, 1)
        assert leader.wakes > wakes

        # When that one is claimed too and another tenant submits, the submit wakes it
        claim(bench, early, 1)
        later = bench.job("b", 2)
        assert next_message(bench, "the chunk released after a submit") == (later, 0)

        # When the later job is cancelled with its chunk still on the broker (the window full), the cancel frees
        # the window: the leader wakes and releases the next job's chunk
        third = bench.job("c", 1)
        time.sleep(0.5)  # give a (wrong) release of the third job a chance to show; none may come
        assert bench.take_messages() == []
        with bench.sessions.begin() as session:
            assert cancel_job(session, later, utcnow())
        assert next_message(bench, "the chunk released after a cancel") == (third, 0)

        # And every round was woken, not a heartbeat's: a handful for six changes
        assert leader.rounds <= leader.wakes + 1
    finally:
        leader.stop()


def test_an_idle_leader_runs_about_one_round_a_heartbeat(bench: Bench) -> None:
    # Given a leader with a heartbeat of 1 s and nothing to do (a polling leader would run a round every 0.05 s)
    leader = leading(bench, dispatch_heartbeat=1.0, dispatch_interval=0.05)
    try:
        # When it idles for 4 s
        start_rounds, start = leader.rounds, time.monotonic()
        time.sleep(4.0)
        rounds, seconds = leader.rounds - start_rounds, time.monotonic() - start

        # Then it ran about a round a second: never more (a loaded machine only makes it fewer), and at least one
        assert 1 <= rounds <= seconds / 1.0 + 1, (rounds, seconds)
        assert leader.wakes == 0
    finally:
        leader.stop()


def test_a_change_that_sent_no_notification_is_caught_at_the_heartbeat(bench: Bench) -> None:
    # Given a leader with a heartbeat of 2 s, whose one chunk reached the broker and was lost there
    job = bench.job("a", 1)
    leader = leading(bench, dispatch_heartbeat=2.0)
    try:
        assert next_message(bench, "the first round's chunk") == (job, 0)
        wakes = leader.wakes

        # When the chunk is given back to SQL by a statement that notifies nobody
        with bench.sessions.begin() as session:
            session.execute(update(Chunk).where(Chunk.job_id == job).values(enqueued_at=None))

        # Then the heartbeat's round releases it again, with no notification
        assert next_message(bench, "the chunk released at the heartbeat", within=30.0) == (job, 0)
        assert leader.wakes == wakes
    finally:
        leader.stop()


def test_a_leader_whose_connection_is_cut_while_it_sleeps_gives_the_lead_up(bench: Bench) -> None:
    # Given a leader asleep for its heartbeat of 30 s
    leader = leading(bench, dispatch_heartbeat=LONG_HEARTBEAT)
    try:
        assert leader._lock_conn is not None
        pid = leader._lock_conn.connection.driver_connection.info.backend_pid  # type: ignore[union-attr]
        first = leader.state.leader_since

        # When PostgreSQL ends its lock's connection (and the lock with it)
        with bench.sessions.begin() as session:
            assert session.scalar(select(func.pg_terminate_backend(pid)))

        # Then it gives the lead up, and takes it again on a connection of its own (nobody else tries)
        wait_for(
            lambda: leader.state.leader and leader.state.leader_since != first,
            WOKEN_WITHIN,
            "the lead given up and taken again",
        )
    finally:
        leader.stop()
