"""The metrics a worker keeps (in this process, on a registry of the test's own), the state read from SQL with its
cache, and metrics that cost nothing when they are off."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from inferq import metrics
from inferq.db import make_engine, make_sessionmaker
from inferq.settings import Settings
from inferq.task_specs import TaskName


@dataclass
class FakeClaim:
    task: TaskName
    model: str
    queue: str | None
    attempts: int
    waiting_since: dt.datetime | None


@dataclass
class FakeStored:
    succeeded: int
    failed: int


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def recorder(registry: CollectorRegistry) -> Iterator[metrics.WorkerMetrics]:
    m = metrics.WorkerMetrics(registry)
    metrics.activate(m)
    yield m
    metrics.activate(None)


def value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    found = registry.get_sample_value(name, labels)
    return 0.0 if found is None else found


def test_a_stored_batch_counts_the_items_of_the_chunk_and_its_mates(
    registry: CollectorRegistry, recorder: metrics.WorkerMetrics
) -> None:
    # Given a batch of a chunk and two batch-mates of other jobs, the same task, model and queue
    claims = [FakeClaim(TaskName.CLASSIFICATION, "sst2", "q", 1, None) for _ in range(3)]

    # When it is stored with some failures, then a second batch
    metrics.chunk_stored(claims, [FakeStored(3, 1), FakeStored(2, 0), FakeStored(0, 2)], 1.5)
    metrics.chunk_stored(claims[:1], [FakeStored(4, 0)], 0.5)

    # Then its items count by outcome, and each batch's time once
    labels = {"task": "classification", "model": "sst2", "queue": "q"}
    assert value(registry, "inferq_items_total", outcome="succeeded", **labels) == 9
    assert value(registry, "inferq_items_total", outcome="failed", **labels) == 3
    assert value(registry, "inferq_chunk_seconds_count", task="classification", model="sst2") == 2
    assert value(registry, "inferq_chunk_seconds_sum", task="classification", model="sst2") == 2.0


def test_a_first_claim_observes_the_wait_and_a_later_one_counts_a_redelivery(
    registry: CollectorRegistry, recorder: metrics.WorkerMetrics
) -> None:
    # Given chunks enqueued 30 s ago (one claimed for the first time, one again), one without a time of its own
    ago = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=30)
    first = FakeClaim(TaskName.CLASSIFICATION, "sst2", "q", 1, ago)
    again = FakeClaim(TaskName.CLASSIFICATION, "sst2", "q", 2, ago)
    ahead = FakeClaim(TaskName.CLASSIFICATION, "sst2", "q", 1, dt.datetime.now(dt.UTC) + dt.timedelta(seconds=5))

    # When they are claimed
    metrics.chunk_claimed([first, again, ahead])

    # Then the first claims' waits are observed (never below zero: another machine's clock), the other redelivered
    assert value(registry, "inferq_chunk_wait_seconds_count", queue="q") == 2
    assert 30 <= value(registry, "inferq_chunk_wait_seconds_sum", queue="q") < 40
    assert value(registry, "inferq_chunk_wait_seconds_bucket", queue="q", le="0.01") == 1
    assert value(registry, "inferq_chunks_redelivered_total", task="classification", model="sst2", queue="q") == 1


def test_micro_batches_count_real_and_padded_tokens(
    registry: CollectorRegistry, recorder: metrics.WorkerMetrics
) -> None:
    # Given features of 5, 3, 3 and 1 tokens run as two micro-batches: [5, 3] and [3, 1]
    lengths = np.array([5, 3, 3, 1])
    batches = [(np.array([0, 1]), {}), (np.array([2, 3]), {})]

    # When they are reported
    recorder.micro_batches_ran(TaskName.FILL_MASK, "m", lengths, batches)

    # Then 2 micro-batches, 12 real tokens and 2×5 + 2×3 = 16 padded ones
    labels = {"task": "fill_mask", "model": "m"}
    assert value(registry, "inferq_micro_batches_total", **labels) == 2
    assert value(registry, "inferq_tokens_total", **labels) == 12
    assert value(registry, "inferq_padded_tokens_total", **labels) == 16


def test_forward_passes_are_timed_and_one_that_raises_is_not(
    registry: CollectorRegistry, recorder: metrics.WorkerMetrics
) -> None:
    # Given a forward function timed by the metrics
    def forward(rows: list[int]) -> int:
        if not rows:
            raise RuntimeError("poison")
        return len(rows)

    def collect(launched: int) -> int:
        if launched == 3:
            raise RuntimeError("failed on the device")
        return launched * 10

    timed, timed_collect = recorder.timed_forward(TaskName.CLASSIFICATION, "m", forward, collect)

    # When two micro-batches launch and are collected, one raises at its launch and one at its collection
    assert timed_collect(timed([1, 2])) == 20 and timed_collect(timed([3])) == 10
    with pytest.raises(RuntimeError):
        timed([])
    with pytest.raises(RuntimeError):
        timed_collect(timed([1, 2, 3]))

    # Then two passes are observed
    assert value(registry, "inferq_forward_seconds_count", task="classification", model="m") == 2


def test_requeues_retries_deliveries_and_loads_are_counted(
    registry: CollectorRegistry, recorder: metrics.WorkerMetrics
) -> None:
    from inferq.recovery import LostChunk

    # When the reconciler re-enqueues chunks, a write is retried, deliveries end and a model loads
    metrics.chunks_requeued([LostChunk("j", 0, "q", "lease_expired"), LostChunk("j", 1, "q", "lease_expired")])
    metrics.database_retry("write")
    metrics.chunk_delivered("done")
    metrics.chunk_delivered("deferred")
    metrics.model_loaded(TaskName.CLASSIFICATION, "m", 2.0)
    with metrics.chunk_in_progress():
        running = value(registry, "inferq_chunks_in_progress")

    # Then each shows under its name and labels
    assert value(registry, "inferq_chunks_requeued_total", queue="q", reason="lease_expired") == 2
    assert value(registry, "inferq_database_retries_total", operation="write") == 1
    assert value(registry, "inferq_chunk_deliveries_total", outcome="done") == 1
    assert value(registry, "inferq_chunk_deliveries_total", outcome="deferred") == 1
    assert value(registry, "inferq_model_load_seconds_sum", task="classification", model="m") == 2.0
    assert running == 1 and value(registry, "inferq_chunks_in_progress") == 0


def test_every_exported_name_is_listed(registry: CollectorRegistry, recorder: metrics.WorkerMetrics) -> None:
    # Given the names the worker's metrics register
    names = {m.name + ("_total" if m.type == "counter" else "") for m in registry.collect()}

    # Then `WORKER_METRICS` (which the dashboard is checked against) lists exactly them
    assert names == set(metrics.WORKER_METRICS)


def test_the_dispatchers_sends_and_lead_are_shown(registry: CollectorRegistry, recorder: metrics.WorkerMetrics) -> None:
    # When this worker's dispatcher takes the lead and sends three chunks of two tenants
    metrics.dispatcher_leads(True)
    metrics.chunks_dispatched([("q", "j1", 0, "acme"), ("q", "j1", 1, "acme"), ("q", "j2", 0, "beta")])
    leading = value(registry, "inferq_dispatcher_leader")
    metrics.dispatcher_leads(False)

    # Then they show by queue and tenant, and the lead while it lasted
    assert value(registry, "inferq_chunks_dispatched_total", queue="q", tenant="acme") == 2
    assert value(registry, "inferq_chunks_dispatched_total", queue="q", tenant="beta") == 1
    assert leading == 1 and value(registry, "inferq_dispatcher_leader") == 0


def test_metrics_that_are_off_import_nothing_and_record_nothing() -> None:
    # When a fresh interpreter runs the worker's metric calls with metrics off
    code = (
        "import sys\n"
        "from inferq import metrics\n"
        "import worker.runner, worker.tasks, worker.engines.base\n"
        "metrics.chunk_claimed([]); metrics.chunk_stored([], [], 0.0); metrics.chunk_delivered('done')\n"
        "metrics.database_retry('write'); metrics.model_loaded('t', 'm', 1.0); metrics.chunks_requeued([])\n"
        "with metrics.chunk_in_progress(): pass\n"
        "assert metrics.active() is None\n"
        "print('prometheus_client' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)

    # Then prometheus-client was never even imported
    assert out.stdout.strip() == "False"


# -- the state from SQL --------------------------------------------------------------------------------------------


def store(settings: Settings, queue: str, model: str, n: int, chunk_size: int) -> str:
    from producer.client import store_job
    from producer.inputs import InputRecord

    job_id = uuid.uuid4().hex
    engine = make_engine(settings)
    with make_sessionmaker(engine).begin() as session:
        records = [InputRecord(i + 1, None, {"text": f"t{i}"}) for i in range(n)]
        store_job(session, job_id, TaskName.CLASSIFICATION, model, {}, records, chunk_size, queue)
    engine.dispose()
    return job_id


def families(collector: metrics.StateCollector) -> dict[str, dict[tuple[str, ...], float]]:
    return {f.name: {tuple(s.labels.values()): s.value for s in f.samples} for f in collector.collect()}


@pytest.mark.services
def test_the_state_shows_unfinished_items_and_the_oldest_queued_chunk_and_is_cached(migrated_postgres: str) -> None:
    # Given two stored jobs on a queue of this test's own (never sent to a broker: their chunks wait)
    settings = Settings(database_url=migrated_postgres)
    queue = f"q-{uuid.uuid4().hex[:8]}"
    store(settings, queue, "sst2", 10, 4)
    store(settings, queue, "mrpc", 3, 4)
    engine = make_engine(settings)
    collector = metrics.StateCollector(make_sessionmaker(engine, read_only=True), cache_seconds=60)

    # When it is collected twice
    first = families(collector)
    second = families(collector)

    # Then the unfinished items of each model and the age of the oldest queued chunk show, read from SQL once
    assert first["inferq_state_up"] == {(): 1.0}
    assert first["inferq_unfinished_items"][(queue, "sst2")] == 10
    assert first["inferq_unfinished_items"][(queue, "mrpc")] == 3
    assert 0 <= first["inferq_oldest_queued_chunk_age_seconds"][(queue,)] < 60
    assert first["inferq_jobs"][("queued",)] >= 2
    assert set(first["inferq_jobs"]) >= {("queued",), ("running",), ("succeeded",), ("failed",), ("cancelled",)}
    assert collector.reads == 1 and second["inferq_unfinished_items"] == first["inferq_unfinished_items"]

    # And once the cache has expired it reads again
    collector.cache_seconds = 0
    families(collector)
    assert collector.reads == 2
    engine.dispose()


@pytest.mark.services
def test_the_state_shows_the_dispatchers_last_round_and_its_queues_while_it_is_fresh(own_postgres: str) -> None:
    from inferq.schema import utcnow
    from inferq.store.dispatch import record_round

    # Given no dispatcher's row yet
    engine = make_engine(Settings(database_url=own_postgres))
    sessions = make_sessionmaker(engine)
    collector = metrics.StateCollector(make_sessionmaker(engine, read_only=True), cache_seconds=0)
    none_yet = families(collector)
    assert none_yet["inferq_dispatcher_last_round_age_seconds"] == {} and none_yet["inferq_dispatch_chunks"] == {}

    # When a leader records a round
    queues = {"q": {"window": 16, "waiting": 5, "running": 2, "held": 40, "held_by_cap": 9, "capped": ["acme"]}}
    now = utcnow()
    with sessions.begin() as session:
        record_round(session, leader="h:1", leader_since=now, last_round=now, released=4, queues=queues)
    fresh = families(collector)

    # Then its age, its queue's chunks by state and its window show
    assert 0 <= fresh["inferq_dispatcher_last_round_age_seconds"][()] < 10
    assert fresh["inferq_dispatch_chunks"] == {
        ("q", "waiting"): 5,
        ("q", "running"): 2,
        ("q", "held"): 40,
        ("q", "held_by_cap"): 9,
    }
    assert fresh["inferq_dispatch_window"] == {("q",): 16}

    # And once its leader is long gone, only the age shows (its counts would be a lie)
    long_ago = now - dt.timedelta(minutes=5)
    with sessions.begin() as session:
        record_round(session, leader="h:1", leader_since=long_ago, last_round=long_ago, released=4, queues=queues)
    stale = families(collector)
    assert stale["inferq_dispatcher_last_round_age_seconds"][()] >= 300
    assert stale["inferq_dispatch_chunks"] == {} and stale["inferq_dispatch_window"] == {}
    engine.dispose()


def test_an_unreachable_database_shows_as_state_down() -> None:
    # Given a database nobody listens for
    settings = Settings(database_url="postgresql://inferq:secret@127.0.0.1:1/inferq")
    engine = make_engine(settings)
    collector = metrics.StateCollector(make_sessionmaker(engine, read_only=True), cache_seconds=0)

    # When it is collected
    found = families(collector)

    # Then the state is down and nothing else is made up
    assert found == {"inferq_state_up": {(): 0.0}}
    engine.dispose()


def test_the_reconcilers_re_enqueues_are_counted_by_reason(
    sqlite_settings: Settings, registry: CollectorRegistry, recorder: metrics.WorkerMetrics
) -> None:
    from inferq.celery_app import create_celery
    from inferq.recovery import recover

    # Given a job of three chunks whose messages were never sent (on the embedded SQLite database and broker)
    store(sqlite_settings, "q-lost", "sst2", 9, 3)
    engine = make_engine(sqlite_settings)
    celery = create_celery(sqlite_settings, name="test-reconciler")

    # When recovery runs with metrics on
    report = recover(sqlite_settings, make_sessionmaker(engine), celery, older_than=0, grace=0)

    # Then each re-enqueued chunk is counted under its queue and reason
    assert len(report.requeued) == 3
    assert value(registry, "inferq_chunks_requeued_total", queue="q-lost", reason="never_enqueued") == 3
    engine.dispose()


def test_a_dead_process_keeps_its_counts_and_loses_its_share_of_the_live_gauge(tmp_path: Path) -> None:
    from prometheus_client import generate_latest
    from prometheus_client.multiprocess import MultiProcessCollector

    # Given a process that counted an item and held a chunk in progress when it died (killed: no goodbye)
    code = (
        "import os\n"
        "from inferq import metrics\n"
        "from inferq.task_specs import TaskName\n"
        "m = metrics.WorkerMetrics()\n"
        "m.items.labels('classification', 'm', 'q', 'succeeded').inc()\n"
        "m.chunks_in_progress.inc()\n"
        "print(os.getpid())\n"
        "os._exit(0)\n"
    )
    env = {**os.environ, metrics.MULTIPROC_ENV: str(tmp_path)}
    pid = int(subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout)
    assert (tmp_path / f"gauge_livesum_{pid}.db").exists()

    # When the endpoint's collector sweeps the directory
    metrics._forget_dead_processes(tmp_path)
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(tmp_path))
    text = generate_latest(registry).decode()

    # Then its item still counts, and its chunk is no longer in progress
    assert not (tmp_path / f"gauge_livesum_{pid}.db").exists()
    assert 'inferq_items_total{model="m",outcome="succeeded",queue="q",task="classification"} 1.0' in text
    assert "inferq_chunks_in_progress 0.0" in text or "inferq_chunks_in_progress" not in text
