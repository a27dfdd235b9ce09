"""Issue 25: the dispatcher's order, on real PostgreSQL and a real Redis broker, without workers: each round's
messages are read back from the broker's queue in the order a worker would take them, and "taken" by marking the
chunks done, which opens the window again. Counting messages, not time, so that the load of the machine does not
matter. (The real-worker stories: tests/faults/test_fair_share.py.)"""

from __future__ import annotations

import base64
import datetime as dt
import json
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import redis
from sqlalchemy import insert, select, update
from sqlalchemy.orm import Session, sessionmaker

from inferq import api
from inferq.celery_app import create_celery
from inferq.db import make_engine, make_sessionmaker
from inferq.dispatcher import FairShare, Waiting, dispatch_round
from inferq.schema import Chunk, Job, Result, WebhookDelivery, utcnow
from inferq.settings import Settings
from inferq.states import ChunkState, ItemState, JobState
from inferq.store.results import items_with_results
from inferq.task_names import TaskName
from inferq.tenants import set_share
from producer.client import JobOptions, store_job

pytestmark = pytest.mark.services


@dataclass(frozen=True)
class Line:
    client_id: str | None
    data: dict[str, Any]


class Bench:
    """A database of this test's own, a Redis queue of its own, and the dispatcher's pieces."""

    def __init__(self, database_url: str, redis_url: str, queue: str, window: int) -> None:
        self.settings = Settings(
            database_url=database_url,
            broker_url=redis_url,
            default_queue=queue,
            dispatch_window=window,
            webhook_allow_private=True,
        )
        self.queue = queue
        self.engine = make_engine(self.settings)
        self.sessions: sessionmaker[Session] = make_sessionmaker(self.engine)
        self.celery = create_celery(self.settings, name="test-dispatcher")
        self.redis = redis.Redis.from_url(redis_url)
        self.fair = FairShare()

    def close(self) -> None:
        self.redis.delete(self.queue)
        self.engine.dispose()

    def job(self, tenant: str, chunks: int, *, priority: int = 5, **options: Any) -> str:
        job_id = uuid.uuid4().hex
        lines = [Line(None, {"text": f"{tenant} {i}"}) for i in range(chunks)]
        with self.sessions.begin() as session:
            store_job(
                session,
                job_id,
                TaskName.CLASSIFICATION,
                "m",
                {"top_k": 1},
                lines,
                1,
                self.queue,
                options=JobOptions(tenant=tenant, priority=priority, **options),
            )
        return job_id

    def share(self, tenant: str, **kwargs: Any) -> None:
        with self.sessions.begin() as session:
            set_share(session, tenant, **kwargs)

    def round(self) -> list[tuple[str, int]]:
        """One dispatcher round; the chunks whose messages reached the broker, in the order a worker takes them."""
        done = dispatch_round(self.settings, self.sessions, self.celery, self.fair)
        sent = self.take_messages()
        assert sent == [(job, seq) for _, job, seq, _ in done.released]
        return sent

    def take_messages(self) -> list[tuple[str, int]]:
        """Pop every message of the queue, oldest first (kombu pushes left and a worker pops right)."""
        taken = []
        while (raw := self.redis.rpop(self.queue)) is not None:
            message = json.loads(raw)
            args = json.loads(base64.b64decode(message["body"]))[0]
            taken.append((args[0], args[1]))
        return taken

    def finish(self, chunks: list[tuple[str, int]]) -> None:
        """What a worker does, in short: the chunks are done."""
        with self.sessions.begin() as session:
            for job_id, seq in chunks:
                session.execute(
                    update(Chunk).where(Chunk.job_id == job_id, Chunk.seq == seq).values(state=ChunkState.DONE)
                )

    def run(self, rounds: int) -> list[tuple[str, int]]:
        """``rounds`` rounds, each one's chunks taken and finished before the next: the order of service."""
        order = []
        for _ in range(rounds):
            sent = self.round()
            self.finish(sent)
            order += sent
        return order


@pytest.fixture
def bench(own_postgres: str, redis_url: str, queue_name: str) -> Iterator[Bench]:
    b = Bench(own_postgres, redis_url, queue_name, window=4)
    yield b
    b.close()


def test_weights_3_to_1_give_3_to_1_of_the_chunks(bench: Bench) -> None:
    # Given two tenants of weights 3 and 1, each with a job far bigger than the window
    bench.share("heavy", weight=3)
    bench.share("light", weight=1)
    heavy = bench.job("heavy", 300)
    light = bench.job("light", 300)

    # When 200 chunks are dispatched, four at a time, each taken before the next round
    order = bench.run(50)

    # Then the broker got them 3:1, within 10%, over the whole run and over its second half alike
    assert len(order) == 200
    for part in (order, order[100:]):
        counts = Counter(job for job, _ in part)
        assert counts[heavy] / counts[light] == pytest.approx(3, rel=0.10), counts
    # And each job's chunks went in order
    assert [seq for job, seq in order if job == heavy] == list(range(150))


def test_a_new_tenant_gets_the_next_free_slot_not_the_end_of_the_line(bench: Bench) -> None:
    # Given a tenant whose big job has had the workers to itself for a while
    big = bench.job("alpha", 1_000)
    bench.run(10)

    # When a second tenant submits a small job
    small = bench.job("beta", 3)
    order = bench.run(3)

    # Then its chunks are among the very next ones sent, alternating with the big job's
    assert [job for job, _ in order[:6]] == [small, big, small, big, small, big]


def test_a_higher_priority_overtakes_a_lower_one_of_the_same_tenant(bench: Bench) -> None:
    # Given a tenant's low-priority job, running
    low = bench.job("acme", 50, priority=1)
    first = bench.run(2)
    assert {job for job, _ in first} == {low}

    # When it submits a high-priority job
    high = bench.job("acme", 10, priority=9)
    order = bench.run(4)

    # Then every chunk of the high-priority job goes before the low one's next
    assert [job for job, _ in order[:10]] == [high] * 10
    assert {job for job, _ in order[10:]} == {low}


def test_a_tenant_cap_bounds_its_chunks_in_flight(own_postgres: str, redis_url: str, queue_name: str) -> None:
    # Given a window of 10, a tenant capped at 2 chunks in flight and another uncapped
    bench = Bench(own_postgres, redis_url, queue_name, window=10)
    try:
        bench.share("capped", max_chunks_in_flight=2)
        capped = bench.job("capped", 20)
        free = bench.job("free", 20)

        # When rounds run and no chunk is finished
        sent = bench.round() + bench.round()

        # Then the capped tenant has 2 in flight, the other the rest of the window
        counts = Counter(job for job, _ in sent)
        assert counts == {capped: 2, free: 8}
        # And once its two are done, two more of it go
        bench.finish([c for c in sent if c[0] == capped])
        assert Counter(job for job, _ in bench.round()) == {capped: 2}
    finally:
        bench.close()


def test_chunks_of_a_cancelled_job_are_never_sent(bench: Bench) -> None:
    from inferq.schema import utcnow
    from inferq.store.jobs import cancel_job

    # Given two jobs of one tenant, one of them cancelled before any of its chunks was sent
    kept = bench.job("acme", 5)
    cancelled = bench.job("acme", 5, priority=9)
    with bench.sessions.begin() as session:
        assert cancel_job(session, cancelled, utcnow())

    # When the dispatcher runs until nothing is left
    order = bench.run(5)

    # Then only the other job's chunks were sent
    assert {job for job, _ in order} == {kept} and len(order) == 5


def test_a_job_past_its_deadline_ends_expired_with_what_finished_kept(bench: Bench) -> None:
    # Given a job with a one-second completion window and a webhook, of which two chunks ran
    job_id = bench.job("acme", 10, deadline=dt.timedelta(seconds=1), webhook_url="http://127.0.0.1:9/hook")
    bench.redis.delete(bench.settings.webhook_queue)
    ran = bench.round()[:2]
    with bench.sessions.begin() as session:
        for job_id_, seq in ran:
            session.execute(
                insert(Result).values(
                    job_id=job_id_, index=seq, state=ItemState.SUCCEEDED, attempts=1, finished_at=utcnow()
                )
            )
            session.execute(update(Job).where(Job.id == job_id_).values(succeeded=Job.succeeded + 1))
    bench.finish(ran)

    # When the window has passed and the dispatcher runs
    time.sleep(1.2)
    done = dispatch_round(bench.settings, bench.sessions, bench.celery, bench.fair)

    # Then the job ended expired, its finished items kept, the others expired with the code "expired"
    assert done.expired == [job_id] and done.released == []
    with bench.sessions() as session:
        job = session.get(Job, job_id)
        assert job is not None and job.state is JobState.EXPIRED
        items = items_with_results(session, job_id)
        assert [i.state for i in items[:2]] == [ItemState.SUCCEEDED] * 2
        assert {(i.state, i.error_code) for i in items[2:]} == {(ItemState.EXPIRED, "expired")}
        # And its webhook says so
        events = session.scalars(select(WebhookDelivery.event).where(WebhookDelivery.job_id == job_id)).all()
        assert events == ["job.expired"]
    # And nothing more of it is sent
    bench.take_messages()
    assert bench.round() == []
    bench.redis.delete(bench.settings.webhook_queue)


def test_a_round_that_skips_the_deadlines_expires_nothing_and_sends_nothing_past_one(bench: Bench) -> None:
    # Given a job whose one-second completion window has passed before any chunk went out
    job_id = bench.job("acme", 3, deadline=dt.timedelta(seconds=1))
    time.sleep(1.2)

    # When a round runs that does not look at the deadlines (the leader looks once a heartbeat)
    skipped = dispatch_round(bench.settings, bench.sessions, bench.celery, bench.fair, deadlines=False)

    # Then the job is not expired yet, and none of its chunks is sent all the same
    assert skipped.expired == [] and skipped.released == [] and bench.take_messages() == []
    with bench.sessions() as session:
        assert session.get(Job, job_id).state is JobState.QUEUED  # type: ignore[union-attr]
    # And the next round that looks ends it expired
    looked = dispatch_round(bench.settings, bench.sessions, bench.celery, bench.fair)
    assert looked.expired == [job_id] and looked.released == []


def test_a_busy_leader_writes_its_row_a_few_times_a_second_not_every_round(
    bench: Bench, monkeypatch: pytest.MonkeyPatch
) -> None:
    from inferq import dispatcher
    from inferq.dispatcher import Dispatcher
    from inferq.store.dispatch import last_round

    # Given a leader (as after taking the lock) and a job of ten chunks, a window of one
    leader = Dispatcher(bench.settings, bench.engine, bench.sessions, bench.celery)
    leader.state.leader, leader.state.leader_since = True, utcnow()
    bench.job("acme", 10)

    def shown() -> dt.datetime:
        with bench.sessions() as session:
            row, _ = last_round(session)
        assert row is not None
        return row.last_round

    def round_published() -> None:
        """A round that releases one chunk (each says something new), published; its chunk then done."""
        leader.state.last_round = utcnow()
        leader._publish(dispatch_round(bench.settings, bench.sessions, bench.celery, bench.fair, window=1))
        sent = bench.take_messages()
        assert len(sent) == 1
        bench.finish(sent)

    # When four such rounds follow one another within the least time between two writes (a minute here, so that a
    # slow machine tells the same)
    monkeypatch.setattr(dispatcher, "DISPATCH_STATE_MIN_SECONDS", 60.0)
    round_published()
    first = shown()
    for _ in range(3):
        round_published()
    # Then the row was written once, by the first
    assert shown() == first
    # And a round once that time has passed writes what it says
    monkeypatch.setattr(dispatcher, "DISPATCH_STATE_MIN_SECONDS", 0.0)
    round_published()
    assert shown() > first


def test_fair_share_alone_interleaves_by_weight() -> None:
    # Given the planner alone, tenants of weights 2 and 1 with plenty waiting
    now = dt.datetime.now(dt.UTC)
    jobs = [Waiting("a", "alpha", 5, now, 100), Waiting("b", "beta", 5, now, 100)]

    # When it plans 30 chunks, 3 at a time
    fair = FairShare()
    plan = [j for _ in range(10) for j in fair.plan("q", 3, jobs, {"alpha": 2, "beta": 1}, {})]

    # Then alpha gets two for each of beta's, in every stretch of three
    for i in range(0, 30, 3):
        assert sorted(plan[i : i + 3]) == ["a", "a", "b"]


def test_the_dispatchers_state_is_shown_from_its_row_to_any_process(
    own_postgres: str, redis_url: str, queue_name: str
) -> None:
    from inferq.dispatcher import Dispatcher
    from inferq.store.dispatch import last_round, record_round
    from producer.client import dispatcher_status, job_status, with_position
    from tests.support.jobs import inferq_cli
    from tests.support.records import wait_for

    # Given a window of 10, tenant "capped" held to 2 chunks in flight and "free" uncapped, 20 chunks each, and no
    # dispatcher yet
    bench = Bench(own_postgres, redis_url, queue_name, window=10)
    leader = Dispatcher(bench.settings, bench.engine, bench.sessions, bench.celery)
    try:
        bench.share("capped", max_chunks_in_flight=2)
        capped = bench.job("capped", 20)
        bench.job("free", 20)

        def state(**kwargs: Any) -> Any:
            with bench.sessions() as session:
                return dispatcher_status(session, bench.settings, **kwargs)

        assert state() == api.Dispatcher(mode="fair")

        # When a dispatcher leads, and its rounds have filled the window (no chunk is taken)
        leader.start()
        shown = wait_for(lambda: (s := state()).released == 0 and s.queues and s, 30, "a round that released 0")

        # Then every process reads its leader, its last round, and the queue: the window full, the capped tenant's
        # 18 other chunks held back by its cap, the free tenant's 12 others by the window
        assert shown.leader == leader.name and shown.leader_since is not None
        assert shown.last_round is not None and (utcnow() - shown.last_round).total_seconds() < 5
        assert shown.queues == [
            api.DispatchQueue(
                queue=queue_name, window=10, waiting=10, running=0, held=30, held_by_cap=18, capped=["capped"]
            )
        ]
        # And a tenant sees how much caps hold back, not whose caps they are but its own
        assert state(tenant="free").queues[0].capped == [] and state(tenant="free").queues[0].held_by_cap == 18
        # And a job's status carries it, its queue only
        with bench.sessions() as session:
            status = with_position(session, job_status(session.get(Job, capped)), bench.settings)
        assert status.dispatcher is not None and status.dispatcher.leader == leader.name
        assert [q.queue for q in status.dispatcher.queues] == [queue_name]
        assert status.dispatcher.queues[0].capped == ["capped"]
        # And the CLI prints it, for the job and for the dispatcher itself
        env = {
            "INFERQ_DATABASE_URL": own_postgres,
            "INFERQ_BROKER_URL": redis_url,
            "INFERQ_DEFAULT_QUEUE": queue_name,
        }
        shown_status = inferq_cli(env, "status", capped)
        assert shown_status.returncode == 0, shown_status.stderr
        assert f"dispatch   fair: leader {leader.name}" in shown_status.stdout
        assert f"queue      {queue_name}: 10/10 waiting, 0 running, 30 held back (18 by tenant caps: capped)" in (
            shown_status.stdout
        )
        shown_dispatcher = inferq_cli(env, "dispatcher", "--json")
        assert shown_dispatcher.returncode == 0, shown_dispatcher.stderr
        assert json.loads(shown_dispatcher.stdout)["leader"] == leader.name

        # When the leader stops, its row goes with it: nobody leads
        leader.stop()
        assert state() == api.Dispatcher(mode="fair")

        # And a row whose leader died without a word (its last round long ago) reads as no leader, not a lie
        long_ago = utcnow() - dt.timedelta(minutes=5)
        with bench.sessions.begin() as session:
            record_round(session, leader="gone:1", leader_since=long_ago, last_round=long_ago, released=3, queues={})
        with bench.sessions() as session:
            assert last_round(session)[0] is not None
        assert state() == api.Dispatcher(mode="fair", last_round=long_ago)

        # And without the dispatcher it says so
        direct = bench.settings.model_copy(update={"dispatch": "direct"})
        with bench.sessions() as session:
            assert dispatcher_status(session, direct) == api.Dispatcher(mode="direct")
    finally:
        leader.stop()
        bench.close()
