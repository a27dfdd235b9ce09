"""The continuation: one message runs the chunks queued after its own, each next one claimed once the previous
forward ended and the previous write overlapping the next chunk's work, and the chunks' own messages, delivered
later, claim nothing."""

from __future__ import annotations

import threading
import uuid
from typing import Any

import pytest

from inferq.schema import Chunk, utcnow
from inferq.settings import Settings
from inferq.store.chunks import ChunkOutcome, Claim, claim_chunk, claim_next
from inferq.store.dispatch import release_chunks
from inferq.task_specs import TaskName
from tests.reference import assert_same_labels, classification_reference
from tests.support.records import stored_items
from tests.support.tiny_models import corpus
from tests.worker.jobs import a_job, job_row
from worker.runner import Runner

pytestmark = pytest.mark.services

MODEL = "cls-distilbert"


@pytest.fixture
def queue() -> str:
    """A queue of the test's own: chunks other tests left queued (same model, same parameters) stay out."""
    return f"q-{uuid.uuid4().hex[:8]}"


def continuing(runner: Runner, **settings: Any) -> Runner:
    """``runner`` with the continuation on (up to 64 chunks, the default seconds, unless ``settings`` say otherwise), chunks sent at
    submit (``direct``) unless ``settings`` say ``fair``, and no coalescing (these chunks are small: a batch would
    take other jobs' chunks, and the continuation's story is told alone)."""
    base = Settings.model_fields
    update = {
        "continue_chunks": 64,
        "continue_seconds": base["continue_seconds"].default,
        "dispatch": "direct",
        "coalesce_items": 0,
        **settings,
    }
    return Runner(runner.settings.model_copy(update=update), runner.sessions, runner.model_cache, worker="cont")


def chunks_of(runner: Runner, job_id: str) -> list[Chunk]:
    with runner.sessions() as session:
        return list(session.query(Chunk).filter(Chunk.job_id == job_id).order_by(Chunk.seq))


def test_one_message_runs_the_chunks_after_its_own_with_the_pipelines_results(
    runner: Runner, queue: str, tiny_models: dict[str, Any]
) -> None:
    # Given a job of four chunks, every message sent at submit
    texts = list(corpus()[:40])
    job_id = a_job(runner, MODEL, texts, chunk_size=10, queue=queue)
    cont = continuing(runner)

    # When its first chunk's message is delivered
    report = cont.run_chunk(job_id, 0)

    # Then that one message ran every chunk, each claimed once, and the job holds the pipeline's results once each
    assert (report.outcome, report.succeeded) == (ChunkOutcome.DONE, 10)
    assert [(c.state, c.attempts, c.leader) for c in chunks_of(runner, job_id)] == [("done", 1, None)] * 4
    job = job_row(runner, job_id)
    assert (job.state, job.succeeded, job.failed) == ("succeeded", 40, 0)
    with runner.sessions() as session:
        items = stored_items(session, job_id)
    assert [i.index for i in items] == list(range(40))
    reference = classification_reference(tiny_models[MODEL], [{"text": t} for t in texts], top_k=1)
    for item, want in zip(items, reference, strict=True):
        assert item.state == "succeeded" and item.result is not None
        assert_same_labels(item.result, want, f"item {item.index}")
    # And the other chunks' own messages, delivered later, find them done and claim nothing
    assert [cont.run_chunk(job_id, s).outcome for s in (1, 2, 3)] == [ChunkOutcome.SKIPPED] * 3
    assert [c.attempts for c in chunks_of(runner, job_id)] == [1] * 4


def test_the_continuation_stops_at_its_bound(runner: Runner, queue: str) -> None:
    # Given a job of four chunks and a continuation of at most one chunk after the message's own
    job_id = a_job(runner, MODEL, list(corpus()[:40]), chunk_size=10, queue=queue)
    cont = continuing(runner, continue_chunks=1)

    # When its first chunk's message is delivered
    cont.run_chunk(job_id, 0)

    # Then two chunks ran, the others wait for their own messages
    assert [c.state for c in chunks_of(runner, job_id)] == ["done", "done", "queued", "queued"]
    # And a bound of no seconds runs the message's own chunk only
    assert continuing(runner, continue_seconds=0).run_chunk(job_id, 2).outcome == ChunkOutcome.DONE
    assert [c.state for c in chunks_of(runner, job_id)] == ["done", "done", "done", "queued"]


def test_a_continued_chunks_own_message_is_deferred_while_it_runs(runner: Runner, queue: str) -> None:
    # Given a job of two chunks whose first a message runs, and the second claimed as its continuation
    job_id = a_job(runner, MODEL, list(corpus()[:20]), chunk_size=10, queue=queue)
    with runner.sessions.begin() as session:
        lead = claim_chunk(session, job_id, 0, worker="w", lease_seconds=60)
        assert isinstance(lead, Claim)
        nxt = claim_next(session, lead, worker="w", lease_seconds=60, leader=lead.key)
    assert nxt is not None and (nxt.job_id, nxt.seq, len(nxt.inputs)) == (job_id, 1, 10)

    # When the second chunk's own message is delivered meanwhile (another worker)
    with runner.sessions.begin() as session:
        again = claim_chunk(session, job_id, 1, worker="other", lease_seconds=60)

    # Then it claims nothing and comes back later
    assert again == ChunkOutcome.DEFERRED
    second = chunks_of(runner, job_id)[1]
    assert (second.state, second.attempts, second.leader) == ("running", 1, lead.key)


def test_a_lost_continuation_is_released_by_its_leaders_redelivery(runner: Runner, queue: str) -> None:
    # Given a message whose worker died while it ran a continued chunk, before its own chunk was stored
    job_id = a_job(runner, MODEL, list(corpus()[:20]), chunk_size=10, queue=queue)
    with runner.sessions.begin() as session:
        lead = claim_chunk(session, job_id, 0, worker="dead", lease_seconds=60)
        assert isinstance(lead, Claim)
        assert claim_next(session, lead, worker="dead", lease_seconds=60, leader=lead.key) is not None

    # When the message comes back (its lease live still) and runs its chunk alone
    report = runner.run_chunk(job_id, 0)

    # Then the continued chunk went back to its own message, which runs it: each item once
    assert report.outcome == ChunkOutcome.DONE
    assert [(c.state, c.leader) for c in chunks_of(runner, job_id)] == [("done", None), ("queued", None)]
    assert runner.run_chunk(job_id, 1).outcome == ChunkOutcome.DONE
    assert [c.attempts for c in chunks_of(runner, job_id)] == [2, 2]
    job = job_row(runner, job_id)
    assert (job.state, job.succeeded) == ("succeeded", 20)


def test_under_the_dispatcher_a_continuation_takes_released_chunks_only_in_release_order(
    runner: Runner, queue: str
) -> None:
    # Given two jobs of three chunks under the dispatcher, which released chunk 0 of each, then chunk 1 of the
    # second, and holds the rest back (a tenant's cap, the window)
    cont = continuing(runner, dispatch="fair")
    assert cont.settings.fair_dispatch
    first = a_job(runner, MODEL, list(corpus()[:30]), chunk_size=10, queue=queue)
    second = a_job(runner, MODEL, list(corpus()[30:60]), chunk_size=10, queue=queue)
    with runner.sessions.begin() as session:
        assert release_chunks(session, first, 1, utcnow()) == [0]
        assert release_chunks(session, second, 1, utcnow()) == [0]
        assert release_chunks(session, second, 1, utcnow()) == [1]

    # When the first released chunk's message is delivered
    cont.run_chunk(first, 0)

    # Then it ran the released chunks, and none held back
    assert [c.state for c in chunks_of(runner, first)] == ["done", "queued", "queued"]
    assert [c.state for c in chunks_of(runner, second)] == ["done", "done", "queued"]


def test_a_cancel_mid_continuation_stops_it(runner: Runner, queue: str) -> None:
    from producer.client import Client

    # Given a job of four chunks, cancelled while its message runs its second chunk
    job_id = a_job(runner, MODEL, list(corpus()[:40]), chunk_size=10, queue=queue)
    cont = continuing(runner)
    engine: Any = cont.model_cache.engine(MODEL, TaskName.CLASSIFICATION)
    client = Client(runner.settings)
    run = engine.run
    runs = 0
    cancelled = threading.Event()

    def cancel_in_second(*args: Any, **kwargs: Any) -> Any:
        nonlocal runs
        runs += 1
        if runs == 2:
            client.cancel(job_id)
            cancelled.set()
        return run(*args, **kwargs)

    engine.run = cancel_in_second
    try:
        report = cont.run_chunk(job_id, 0)
    finally:
        del engine.run
        client.close()

    # Then the first chunk's results stay, the continuation ran no chunk after the cancel, and the job is cancelled
    assert cancelled.is_set() and report.outcome == ChunkOutcome.DONE
    assert runs == 2
    job = job_row(runner, job_id)
    assert job.state == "cancelled" and job.succeeded == 10
    assert [c.state for c in chunks_of(runner, job_id)][2:] == ["queued", "queued"]
