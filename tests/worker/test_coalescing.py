"""Coalescing against real PostgreSQL: small jobs of one model run as one batch, results equal the pipeline's, and
a batch-mate's own message never loses nor repeats its chunk (deferred while the batch runs, released when the
batch's leader comes back after a crash, returned when the batch stops early)."""

from __future__ import annotations

import datetime as dt
import json
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update

from inferq.db import make_engine, make_sessionmaker
from inferq.schema import Chunk, utcnow
from inferq.settings import Settings
from inferq.store.chunks import claim_chunk, claim_mates
from inferq.store.dispatch import release_chunks
from tests.reference import assert_same_labels, classification_reference
from tests.support.records import StoredItem, stored_items
from tests.support.tiny_models import corpus
from tests.worker.jobs import a_job, job_row
from worker.model_cache import ModelCache
from worker.runner import Runner

pytestmark = pytest.mark.services

MODEL = "cls-distilbert"


@pytest.fixture
def settings(migrated_postgres: str, registry_json: str) -> Settings:
    """Chunks sent at submit (``direct``), as this protocol's story has it: any queued chunk may be a batch-mate.
    Under the dispatcher (``fair``) only released ones may (`test_under_the_dispatcher_only_released_chunks_*`).
    A message runs its own batch only (no continuation: `tests.worker.test_continuation`)."""
    return Settings(
        database_url=migrated_postgres,
        models=json.loads(registry_json),
        max_batch_tokens=1024,
        dispatch="direct",
        continue_chunks=0,
    )


@pytest.fixture
def queue() -> str:
    """A queue of the test's own: chunks left queued by other tests (same model, same parameters) stay out."""
    return f"q-{uuid.uuid4().hex[:8]}"


def small_jobs(runner: Runner, queue: str, texts: list[str], **params: Any) -> list[str]:
    return [a_job(runner, MODEL, [t], chunk_size=10, queue=queue, **params) for t in texts]


def chunk_row(runner: Runner, job_id: str, seq: int = 0) -> Chunk:
    with runner.sessions() as session:
        chunk = session.get(Chunk, (job_id, seq))
        assert chunk is not None
        return chunk


def items_of(runner: Runner, job_ids: list[str]) -> list[StoredItem]:
    with runner.sessions() as session:
        return stored_items(session, *job_ids)


def assert_pipeline_results(runner: Runner, tiny_models: dict[str, Path], job_ids: list[str], texts: list[str]) -> None:
    """Every job succeeded with exactly one result per item, equal to the pipeline's."""
    reference = classification_reference(tiny_models[MODEL], [{"text": t} for t in texts], top_k=1)
    for job_id, want in zip(job_ids, reference, strict=True):
        job = job_row(runner, job_id)
        assert (job.state, job.succeeded, job.failed) == ("succeeded", 1, 0), job_id
        [item] = items_of(runner, [job_id])
        assert item.state == "succeeded" and item.result is not None
        assert_same_labels(item.result, want, where=job_id)


def lead_without_writing(runner: Runner, job_id: str, worker: str = "crashed") -> list[tuple[str, int]]:
    """Claim a chunk and its batch-mates and commit, as a worker does before it computes; then nothing (the
    worker died). Returns the batch-mates' keys."""
    with runner.sessions.begin() as session:
        lead = claim_chunk(session, job_id, 0, worker=worker, lease_seconds=600)
        assert lead is not None and lead != "deferred"
        mates = claim_mates(session, lead, worker=worker, lease_seconds=600, max_items=256)
    return [(m.job_id, m.seq) for m in mates]


def test_small_jobs_run_as_one_batch_with_the_pipelines_results(
    runner: Runner, queue: str, tiny_models: dict[str, Path]
) -> None:
    # Given 30 one-item jobs of one model and parameters, and a 5-item job
    texts = list(corpus()[100:130])
    jobs = small_jobs(runner, queue, texts)
    five = a_job(runner, MODEL, list(corpus()[200:205]), chunk_size=10, queue=queue)

    # When the first job's message is delivered
    report = runner.run_chunk(jobs[0], 0)

    # Then every other job ran in its batch, each job finished with its own counts and the pipeline's results
    assert (report.outcome, report.succeeded, report.mates) == ("done", 1, 30)
    assert_pipeline_results(runner, tiny_models, jobs, texts)
    assert (job_row(runner, five).state, job_row(runner, five).succeeded) == ("succeeded", 5)
    assert all(i.attempts == 1 for i in items_of(runner, [*jobs, five]))
    assert all(chunk_row(runner, j).leader is None for j in jobs)

    # And the other jobs' own messages, delivered afterwards, find nothing to do
    later = [runner.run_chunk(j, 0) for j in [*jobs[1:], five]]
    assert {r.outcome for r in later} == {"skipped"}
    assert job_row(runner, five).succeeded == 5


def test_a_batch_mixes_only_jobs_of_the_same_model_parameters_and_queue(runner: Runner, queue: str) -> None:
    # Given jobs that differ from the first in parameters, model or queue, and one that does not
    texts = list(corpus()[:5])
    first = a_job(runner, MODEL, texts[:1], chunk_size=10, queue=queue)
    other_params = a_job(runner, MODEL, texts[1:2], chunk_size=10, queue=queue, top_k=2)
    other_model = a_job(runner, "cls-roberta", texts[2:3], chunk_size=10, queue=queue)
    other_queue = a_job(runner, MODEL, texts[3:4], chunk_size=10, queue=queue + "-other")
    same = a_job(runner, MODEL, texts[4:5], chunk_size=10, queue=queue)

    # When the first runs
    report = runner.run_chunk(first, 0)

    # Then only the like job joined it
    assert report.mates == 1
    assert job_row(runner, same).state == "succeeded"
    assert [job_row(runner, j).state for j in (other_params, other_model, other_queue)] == ["queued"] * 3


def test_a_jobs_own_chunks_and_full_chunks_do_not_coalesce(runner: Runner, queue: str) -> None:
    # Given a job of three chunks of 10, with coalescing up to 10 items
    settings = runner.settings.model_copy(update={"coalesce_items": 10})
    capped = Runner(settings, runner.sessions, runner.model_cache, worker="test")
    job = a_job(runner, MODEL, list(corpus()[:30]), chunk_size=10, queue=queue)
    one = a_job(runner, MODEL, list(corpus()[30:31]), chunk_size=10, queue=queue)

    # When its first chunk runs
    report = capped.run_chunk(job, 0)

    # Then it ran alone: its own chunks wait for their messages, and a full chunk takes no batch-mate
    assert (report.succeeded, report.mates) == (10, 0)
    assert [chunk_row(runner, job, s).state for s in (1, 2)] == ["queued", "queued"]
    assert job_row(runner, one).state == "queued"


def test_coalescing_can_be_turned_off(runner: Runner, queue: str) -> None:
    settings = runner.settings.model_copy(update={"coalesce_items": 0})
    alone = Runner(settings, runner.sessions, runner.model_cache, worker="test")
    jobs = small_jobs(runner, queue, list(corpus()[:3]))
    assert alone.run_chunk(jobs[0], 0).mates == 0
    assert [job_row(runner, j).state for j in jobs] == ["succeeded", "queued", "queued"]


def test_a_mates_message_is_deferred_while_the_batch_runs_then_runs_it_once_its_lease_expires(
    runner: Runner, queue: str, tiny_models: dict[str, Path]
) -> None:
    # Given a batch claimed by a worker that then stopped answering (its leases are live)
    texts = list(corpus()[300:304])
    jobs = small_jobs(runner, queue, texts)
    mates = lead_without_writing(runner, jobs[0])
    assert sorted(mates) == sorted((j, 0) for j in jobs[1:])

    # When a batch-mate's own message is delivered
    report = runner.run_chunk(jobs[1], 0)

    # Then it is deferred: nothing claimed, nothing counted
    assert report.outcome == "deferred"
    chunk = chunk_row(runner, jobs[1])
    assert (chunk.state, chunk.attempts, chunk.worker, chunk.leader) == ("running", 1, "crashed", f"{jobs[0]}/0")

    # When the batch's lease has expired and the message comes back
    with runner.sessions.begin() as session:
        session.execute(update(Chunk).where(Chunk.job_id.in_(jobs)).values(lease_until=utcnow() - dt.timedelta(1)))
    again = runner.run_chunk(jobs[1], 0)

    # Then it runs the chunk (on its second attempt: it takes no batch-mates), with the pipeline's result
    assert (again.outcome, again.succeeded, again.mates) == ("done", 1, 0)
    assert_pipeline_results(runner, tiny_models, jobs[1:2], texts[1:2])
    [item] = items_of(runner, [jobs[1]])
    assert item.attempts == 2


def test_a_redelivered_leader_releases_its_unfinished_batch_to_the_mates_messages(
    runner: Runner, queue: str, tiny_models: dict[str, Path]
) -> None:
    # Given a batch whose worker died before it stored anything
    texts = list(corpus()[400:406])
    jobs = small_jobs(runner, queue, texts)
    lead_without_writing(runner, jobs[0])

    # When the leader's message is redelivered
    report = runner.run_chunk(jobs[0], 0)

    # Then the leader runs alone and its former batch-mates are queued again, leaderless
    assert (report.outcome, report.mates) == ("done", 0)
    for job in jobs[1:]:
        chunk = chunk_row(runner, job)
        assert (chunk.state, chunk.leader, chunk.worker) == ("queued", None, None)

    # And their own messages run them, each once, with the pipeline's results
    reports = [runner.run_chunk(j, 0) for j in jobs[1:]]
    assert [r.outcome for r in reports] == ["done"] * 5
    assert_pipeline_results(runner, tiny_models, jobs, texts)
    assert [i.attempts for i in items_of(runner, jobs[1:])] == [2] * 5


def test_a_batch_stopped_by_a_shutdown_returns_its_mates_to_their_messages(
    settings: Settings, runner: Runner, queue: str, tiny_models: dict[str, Path]
) -> None:
    # Given a worker that starts shutting down after its first micro-batch (2 items per micro-batch)
    asked = 0

    def stopping() -> bool:
        nonlocal asked
        asked += 1
        return asked > 2  # run_chunk asks once before claiming, the engine once before each micro-batch

    small = settings.model_copy(update={"max_batch_size": 2})
    stopper = Runner(small, runner.sessions, ModelCache(small), worker="stopping", stopping=stopping)
    texts = list(corpus()[500:508])
    jobs = small_jobs(runner, queue, texts)

    # When the first job's message runs
    report = stopper.run_chunk(jobs[0], 0)

    # Then two items were stored; every unfinished chunk is queued again without a leader
    done = [j for j in jobs if job_row(runner, j).state == "succeeded"]
    assert len(done) == 2
    for job in set(jobs) - set(done):
        chunk = chunk_row(runner, job)
        assert (chunk.state, chunk.leader, chunk.lease_until) == ("queued", None, None)
    assert report.outcome == ("done" if jobs[0] in done else "handed_back")

    # And the messages (the leader's handed back, the others' never taken) complete every job once
    for job in jobs:
        runner.run_chunk(job, 0)
    assert_pipeline_results(runner, tiny_models, jobs, texts)


def test_chunks_tried_before_never_join_a_batch(runner: Runner, queue: str) -> None:
    # Given a chunk that went back to queued after a crash (attempts 1), and a fresh one
    jobs = small_jobs(runner, queue, list(corpus()[:3]))
    with runner.sessions.begin() as session:
        session.execute(update(Chunk).where(Chunk.job_id == jobs[1]).values(attempts=1))

    # When the first job runs
    report = runner.run_chunk(jobs[0], 0)

    # Then only the fresh one joined
    assert report.mates == 1
    assert [job_row(runner, j).state for j in jobs] == ["succeeded", "queued", "succeeded"]


def test_concurrent_leaders_take_disjoint_batch_mates(runner: Runner, settings: Settings, queue: str) -> None:
    # Given 40 one-item jobs and two workers leading batches at the same moment
    jobs = small_jobs(runner, queue, list(corpus()[600:640]))
    engine2 = make_engine(settings)
    other = Runner(settings, make_sessionmaker(engine2), runner.model_cache, worker="other")
    barrier = threading.Barrier(2)
    reports: list[Any] = []

    def deliver(r: Runner, job_id: str) -> None:
        barrier.wait()
        reports.append(r.run_chunk(job_id, 0))

    threads = [threading.Thread(target=deliver, args=a) for a in ((runner, jobs[0]), (other, jobs[1]))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    engine2.dispose()

    # Then between them they ran every job once: no item counted or attempted twice
    assert all(r.outcome in ("done", "deferred") for r in reports)
    for r in [runner.run_chunk(j, 0) for j in jobs]:
        assert r.outcome == "skipped"
    rows = items_of(runner, jobs)
    assert [i.state for i in rows] == ["succeeded"] * 40 and {i.attempts for i in rows} == {1}
    assert all((job_row(runner, j).succeeded, job_row(runner, j).failed) == (1, 0) for j in jobs)


def test_small_jobs_share_a_batch_on_the_embedded_sqlite_database(
    sqlite_settings: Settings, registry_json: str, tiny_models: dict[str, Path]
) -> None:
    import json

    # Given one-item jobs in the embedded default's SQLite database (no row locks there: the database is the lock)
    settings = Settings(database_url=sqlite_settings.database_url, models=json.loads(registry_json), continue_chunks=0)
    engine = make_engine(settings)
    lite = Runner(settings, make_sessionmaker(engine), ModelCache(settings), worker="lite")
    texts = list(corpus()[800:812])
    jobs = small_jobs(lite, "q", texts)

    # When the first job's message runs, then the others'
    first = lite.run_chunk(jobs[0], 0)
    later = [lite.run_chunk(j, 0) for j in jobs[1:]]
    engine.dispose()

    # Then they ran as one batch, each with the pipeline's result
    assert (first.outcome, first.mates) == ("done", 11)
    assert {r.outcome for r in later} == {"skipped"}
    assert_pipeline_results(lite, tiny_models, jobs, texts)


def test_under_the_dispatcher_only_released_chunks_join_a_batch(runner: Runner, queue: str) -> None:
    # Given the dispatcher's fair order (INFERQ_DISPATCH=fair on PostgreSQL) and six one-item jobs, of which the
    # dispatcher released the first four (the others it holds back: a tenant's cap, or the window)
    fair = Runner(
        runner.settings.model_copy(update={"dispatch": "fair"}), runner.sessions, runner.model_cache, worker="t"
    )
    assert fair.settings.fair_dispatch
    jobs = small_jobs(runner, queue, list(corpus()[:6]))
    with runner.sessions.begin() as session:
        for job_id in jobs[:4]:
            assert release_chunks(session, job_id, 1, utcnow()) == [0]

    # When the first one's message is delivered
    report = fair.run_chunk(jobs[0], 0)

    # Then its batch took the three other released chunks, never the two held back
    assert (report.outcome, report.mates) == ("done", 3)
    assert [job_row(runner, j).state for j in jobs] == ["succeeded"] * 4 + ["queued"] * 2
    assert [chunk_row(runner, j).enqueued_at is None for j in jobs[4:]] == [True, True]

    # And a batch-mate's own message, delivered later, claims nothing: its chunk ran once
    assert fair.run_chunk(jobs[1], 0).outcome == "skipped"
    assert all(chunk_row(runner, j).attempts == 1 for j in jobs[:4])
