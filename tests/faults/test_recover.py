"""`recover`'s rule, chunk by chunk, against a real (private) Redis and PostgreSQL: which chunks get a new message,
which do not, and that running it again, or twice at once, sends nothing twice."""

from __future__ import annotations

import datetime as dt
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from kombu import Connection
from sqlalchemy import update

from inferq.brokers import listed_chunk_messages
from inferq.celery_app import create_celery
from inferq.db import make_engine, make_sessionmaker
from inferq.recovery import Recovery, recover
from inferq.schema import Chunk, Job, utcnow
from inferq.settings import Settings
from inferq.task_specs import RUN_CHUNK, TaskName
from producer.client import store_job
from producer.inputs import InputRecord
from tests.support.brokers import PrivateRedis, ready_messages, require_amqp

pytestmark = pytest.mark.services

HOUR_AGO = dt.timedelta(hours=1)


@pytest.fixture
def settings(migrated_postgres: str, redis_server: PrivateRedis, queue_name: str) -> Settings:
    # The producer sends every chunk itself (``direct``), so a chunk never enqueued is one it failed to send. With
    # the dispatcher (``fair``), such a chunk is the dispatcher's: see the last test.
    return Settings(
        database_url=migrated_postgres, broker_url=redis_server.url, default_queue=queue_name, dispatch="direct"
    )


class World:
    """One job whose chunks are put, by hand, in every state `recover` must tell apart."""

    def __init__(self, settings: Settings, n_chunks: int) -> None:
        self.settings = settings
        self.engine = make_engine(settings)
        self.sessions = make_sessionmaker(self.engine)
        self.celery = create_celery(settings, name="test-recover")
        self.queue = settings.default_queue
        self.job_id = uuid.uuid4().hex
        records = [InputRecord(line=i + 1, client_id=None, data={"text": f"t{i}"}) for i in range(n_chunks)]
        params = {"top_k": 1, "function_to_apply": "default"}
        with self.sessions.begin() as session:
            store_job(session, self.job_id, TaskName.CLASSIFICATION, "m", params, records, 1, self.queue)
            session.execute(update(Job).where(Job.id == self.job_id).values(created_at=utcnow() - HOUR_AGO))

    def chunk(self, seq: int, **values: Any) -> None:
        with self.sessions.begin() as session:
            session.execute(update(Chunk).where(Chunk.job_id == self.job_id, Chunk.seq == seq).values(**values))

    def job(self, **values: Any) -> None:
        with self.sessions.begin() as session:
            session.execute(update(Job).where(Job.id == self.job_id).values(**values))

    def send(self, seq: int) -> None:
        self.celery.send_task(RUN_CHUNK, args=[self.job_id, seq], queue=self.queue)

    def get(self, seq: int) -> Chunk:
        with self.sessions() as session:
            chunk = session.get(Chunk, (self.job_id, seq))
            assert chunk is not None
            return chunk

    def recover(self, **kw: Any) -> Recovery:
        kw.setdefault("grace", 0.2)
        return recover(self.settings, self.sessions, self.celery, job_id=self.job_id, **kw)

    def close(self) -> None:
        self.engine.dispose()


@pytest.fixture
def world(settings: Settings) -> Iterator[World]:
    w = World(settings, n_chunks=9)
    yield w
    w.close()


def test_each_rule_re_enqueues_exactly_the_chunks_whose_message_is_gone(world: World, settings: Settings) -> None:
    now, long_ago = utcnow(), utcnow() - HOUR_AGO
    # Given chunks in every state (the job is running, its messages were sent an hour ago unless said otherwise)
    world.job(state="running")
    for seq in range(9):
        world.chunk(seq, enqueued_at=long_ago)
    world.send(0)  # 0: queued, its message waiting in the queue
    # 1: queued, its message gone (Redis restarted empty)
    world.chunk(2, state="running", lease_until=now - dt.timedelta(seconds=5), worker="dead:1")  # 2: lease expired
    world.chunk(3, state="running", lease_until=now + dt.timedelta(minutes=5), worker="alive:1")  # 3: lease held
    world.chunk(4, enqueued_at=None)  # 4: stored, never enqueued (the producer lost the broker)
    world.chunk(5, state="done")  # 5: done
    world.send(6)  # 6: queued, its message delivered to a worker a moment ago, not yet acknowledged
    world.chunk(7, enqueued_at=now)  # 7: queued, message gone, but enqueued a moment ago
    world.send(8)  # 8: queued, its message delivered two hours ago to a worker that died, never acknowledged
    with Connection(settings.broker_url) as conn:
        delivered = conn.SimpleQueue(world.queue, no_ack=False)
        taken = {}
        while len(taken) < 2:  # take messages 6 and 8 (and leave them unacknowledged), put message 0 back
            message = delivered.get(timeout=5)
            if message.payload[0][1] in (6, 8):
                taken[message.payload[0][1]] = message
            else:
                message.requeue()
        conn.default_channel.client.zadd("unacked_index", {taken[8].delivery_tag: time.time() - 7200})

        # When recover runs
        report = world.recover(older_than=60)

        # Then it re-enqueued the lost chunks, each once, saying why; the others were left alone
        assert report.broker_listed and report.checked == 8
        assert sorted((c.seq, c.reason) for c in report.requeued) == [
            (1, "message_missing"),
            (2, "lease_expired"),
            (4, "never_enqueued"),
            (8, "message_stranded"),
        ]
        assert world.get(2).state == "queued" and world.get(2).lease_until is None
        assert all(world.get(s).enqueued_at > now for s in (1, 2, 4, 8))  # type: ignore[operator]
        found = listed_chunk_messages(world.celery, {world.queue}, stranded_after=settings.lease_seconds)
        assert found is not None and {seq for _, seq in found.live} == {0, 1, 2, 4, 6, 8}

        # And running it again sends nothing; chunk 7 gets its message once it is older than the threshold
        assert world.recover(older_than=60).requeued == []
        assert [(c.seq, c.reason) for c in world.recover(older_than=0).requeued] == [(7, "message_missing")]
        assert world.recover(older_than=0).requeued == []
        delivered.close()


def test_two_reconcilers_at_once_send_one_message_per_lost_chunk(world: World) -> None:
    # Given a running job whose nine queued chunks all lost their messages
    world.job(state="running")
    for seq in range(9):
        world.chunk(seq, enqueued_at=utcnow() - HOUR_AGO)

    # When two reconcilers run at the same moment
    reports: list[Recovery] = []
    barrier = threading.Barrier(2)

    def run() -> None:
        barrier.wait()
        reports.append(world.recover(older_than=60, grace=0))

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    # Then each chunk was re-enqueued by one of them, once
    assert sorted(c.seq for r in reports for c in r.requeued) == list(range(9))
    assert ready_messages(world.settings.broker_url, world.queue) == 9


def test_finished_jobs_and_dry_runs_send_nothing(world: World) -> None:
    # Given a cancelled job whose queued chunks have no message
    world.job(state="cancelled", finished_at=utcnow())
    assert world.recover(older_than=0).checked == 0

    # And a running one, recovered with --dry-run
    world.job(state="running", finished_at=None)
    report = world.recover(older_than=0, dry_run=True)
    assert len(report.requeued) == 9
    assert ready_messages(world.settings.broker_url, world.queue) == 0
    assert world.get(0).enqueued_at is None


def test_on_rabbitmq_only_expired_leases_and_unsent_chunks_count(migrated_postgres: str, queue_name: str) -> None:
    from tests.support.brokers import delete_queue

    amqp = require_amqp()
    settings = Settings(database_url=migrated_postgres, broker_url=amqp, default_queue=queue_name, dispatch="direct")
    w = World(settings, n_chunks=3)
    try:
        # Given a running job: chunk 0 waits for its message, chunk 1's lease expired, chunk 2 was never sent
        w.job(state="running")
        w.chunk(0, enqueued_at=utcnow() - HOUR_AGO)
        w.chunk(1, state="running", enqueued_at=utcnow() - HOUR_AGO, lease_until=utcnow() - dt.timedelta(seconds=1))

        # When recover runs (RabbitMQ cannot list its messages)
        report = w.recover(older_than=60)

        # Then only what SQL alone proves lost was re-enqueued
        assert report.broker_listed is False
        assert sorted((c.seq, c.reason) for c in report.requeued) == [(1, "lease_expired"), (2, "never_enqueued")]
        assert ready_messages(amqp, queue_name) == 2
    finally:
        w.close()
        delete_queue(amqp, queue_name)


def test_the_reconcilers_frequent_rounds_look_at_expired_leases_alone(world: World) -> None:
    # Given a running job: chunk 0's lease expired, chunk 1 lost its message, chunk 2 was never enqueued
    world.job(state="running")
    for seq in range(9):
        world.chunk(seq, enqueued_at=utcnow() - HOUR_AGO)
    world.chunk(0, state="running", lease_until=utcnow() - dt.timedelta(seconds=1), worker="dead:1")
    world.chunk(2, enqueued_at=None)
    for seq in range(3, 9):
        world.send(seq)

    # When recover runs its expired-lease rule alone (the reconciler's rounds between two full ones)
    report = world.recover(older_than=60, leases_only=True)

    # Then only the expired lease was re-enqueued, without reading the broker; a full round finds the others
    assert [(c.seq, c.reason) for c in report.requeued] == [(0, "lease_expired")]
    assert report.checked == 1 and report.broker_listed is None
    assert sorted((c.seq, c.reason) for c in world.recover(older_than=60).requeued) == [
        (1, "message_missing"),
        (2, "never_enqueued"),
    ]


def test_with_the_dispatcher_a_chunk_never_released_is_left_to_it(settings: Settings) -> None:
    # Given the dispatcher's mode, and a job whose chunk 0 lost its message and whose others were never released
    w = World(settings.model_copy(update={"dispatch": "fair"}), n_chunks=3)
    try:
        w.job(state="running")
        w.chunk(0, enqueued_at=utcnow() - HOUR_AGO)

        # When recover runs
        report = w.recover(older_than=60)

        # Then only the lost message is sent again: the unreleased chunks wait for the dispatcher's fair order
        assert [(c.seq, c.reason) for c in report.requeued] == [(0, "message_missing")]
        assert w.get(1).enqueued_at is None and w.get(2).enqueued_at is None
    finally:
        w.close()
