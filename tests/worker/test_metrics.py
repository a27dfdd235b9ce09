"""A runner in this process with metrics on: a coalesced batch of small jobs counts each job's items, each chunk's
wait in its queue (the leader's and its batch-mates'), and its micro-batches, forward passes and tokens."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy import update

from inferq import metrics
from inferq.schema import Chunk
from tests.support.tiny_models import corpus
from tests.worker.jobs import a_job, job_row
from worker.runner import Runner

pytestmark = pytest.mark.services

MODEL = "cls-distilbert"


@pytest.fixture
def registry() -> Iterator[CollectorRegistry]:
    registry = CollectorRegistry()
    metrics.activate(metrics.WorkerMetrics(registry))
    yield registry
    metrics.activate(None)


def value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


def test_a_coalesced_batch_counts_every_jobs_items_and_every_chunks_wait(
    runner: Runner, registry: CollectorRegistry
) -> None:
    # Given 8 one-item jobs on a queue of their own, enqueued a minute ago
    queue = f"q-{uuid.uuid4().hex[:8]}"
    jobs = [a_job(runner, MODEL, [t], chunk_size=10, queue=queue) for t in corpus()[:8]]
    with runner.sessions.begin() as session:
        session.execute(
            update(Chunk)
            .where(Chunk.job_id.in_(jobs))
            .values(enqueued_at=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=60))
        )

    # When the first job's message runs them all as one batch
    report = runner.run_chunk(jobs[0], 0)

    # Then every job's item counts, and every chunk's wait (leader and batch-mates) was observed once, about a minute
    assert report.mates == 7 and all(job_row(runner, j).state == "succeeded" for j in jobs)
    labels = {"task": "classification", "model": MODEL}
    assert value(registry, "inferq_items_total", queue=queue, outcome="succeeded", **labels) == 8
    assert value(registry, "inferq_chunk_wait_seconds_count", queue=queue) == 8
    assert 8 * 60 <= value(registry, "inferq_chunk_wait_seconds_sum", queue=queue) < 8 * 120
    assert value(registry, "inferq_chunk_seconds_count", **labels) == 1
    # And its micro-batches were counted and timed, with real tokens no more than padded ones
    batches = value(registry, "inferq_micro_batches_total", **labels)
    assert batches >= 1 and value(registry, "inferq_forward_seconds_count", **labels) == batches
    assert (
        0 < value(registry, "inferq_tokens_total", **labels) <= value(registry, "inferq_padded_tokens_total", **labels)
    )
