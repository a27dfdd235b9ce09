"""The runner against real PostgreSQL: idempotent chunks, one result per item, failures recorded per item."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import func, select, text, update

from inferq.db import make_engine, make_sessionmaker
from inferq.errors import InferenceError
from inferq.schema import Chunk, Result
from inferq.settings import Settings
from inferq.states import ItemState
from inferq.store.chunks import Claim, claim_chunk, write_results
from tests.reference import assert_same_labels, classification_reference
from tests.support.records import stored_items
from tests.support.tiny_models import corpus
from tests.worker.jobs import a_job, job_row
from worker.engines.base import Outcome
from worker.runner import Runner

pytestmark = pytest.mark.services


def test_a_redelivered_chunk_writes_nothing_twice(runner: Runner, tiny_models: dict[str, Path]) -> None:
    # Given a job of two chunks whose first chunk already ran
    texts = list(corpus()[:40])
    job_id = a_job(runner, "cls-distilbert", texts, chunk_size=25)
    first = runner.run_chunk(job_id, 0)
    assert (first.outcome, first.succeeded) == ("done", 25)

    # When the same chunk is delivered again, then the second chunk runs
    again = runner.run_chunk(job_id, 0)
    runner.run_chunk(job_id, 1)

    # Then the redelivery was skipped, the counts are exact, and every result equals the pipeline's
    assert again.outcome == "skipped"
    job = job_row(runner, job_id)
    assert (job.state, job.succeeded, job.failed, job.total) == ("succeeded", 40, 0, 40)
    with runner.sessions() as session:
        items = stored_items(session, job_id)
        assert all(i.attempts == 1 for i in items)
        reference = classification_reference(tiny_models["cls-distilbert"], [{"text": t} for t in texts], top_k=1)
        for item, want in zip(items, reference, strict=True):
            assert item.result is not None
            assert_same_labels(item.result, want, where=str(item.index))


def test_concurrent_duplicate_deliveries_give_one_result_per_item(runner: Runner, settings: Settings) -> None:
    # Given one chunk delivered to two workers at the same time
    job_id = a_job(runner, "cls-roberta", list(corpus()[:60]), chunk_size=60)
    engine2 = make_engine(settings)
    other = Runner(settings, make_sessionmaker(engine2), runner.model_cache, worker="other")
    reports: list[Any] = []
    barrier = threading.Barrier(2)

    def deliver(r: Runner) -> None:
        barrier.wait()
        reports.append(r.run_chunk(job_id, 0))

    threads = [threading.Thread(target=deliver, args=(r,)) for r in (runner, other)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    engine2.dispose()

    # Then the items were counted once, whichever delivery wrote them
    job = job_row(runner, job_id)
    assert (job.state, job.succeeded, job.failed) == ("succeeded", 60, 0)
    assert sum(r.succeeded for r in reports) == 60
    with runner.sessions() as session:
        n = session.scalar(select(func.count()).where(Result.job_id == job_id, Result.state == "succeeded"))
        assert n == 60
        chunk = session.get(Chunk, (job_id, 0))
        assert chunk is not None and chunk.state == "done"


def test_a_model_that_will_not_load_fails_the_job_with_a_code(runner: Runner, tmp_path: Path) -> None:
    # Given a job naming a directory that holds no model
    empty = tmp_path / "not-a-model"
    empty.mkdir()
    job_id = a_job(runner, str(empty), ["hello", "world"], chunk_size=10)

    # When its chunk runs
    report = runner.run_chunk(job_id, 0)

    # Then every item failed with model_load_error, and so did the job
    assert report.failed == 2
    job = job_row(runner, job_id)
    assert (job.state, job.failed, job.error_code) == ("failed", 2, "model_load_error")
    with runner.sessions() as session:
        codes = {item.error_code for item in stored_items(session, job_id)}
    assert codes == {"model_load_error"}


def test_a_cancelled_job_runs_no_more_chunks(runner: Runner) -> None:
    from producer.client import Client

    # Given a job of three chunks, the first done, then cancelled
    job_id = a_job(runner, "cls-distilbert", list(corpus()[:30]), chunk_size=10)
    runner.run_chunk(job_id, 0)
    client = Client(runner.settings)
    status = client.cancel(job_id)
    assert status.state.value == "cancelled" and status.succeeded == 10

    # When the remaining chunks are delivered
    reports = [runner.run_chunk(job_id, s) for s in (1, 2)]

    # Then they are skipped; the first chunk's results stay, the rest are cancelled
    assert [r.outcome for r in reports] == ["skipped", "skipped"]
    states = [r.status for r in client.results(job_id)]
    assert states == ["succeeded"] * 10 + ["cancelled"] * 20
    client.close()


def test_every_outcome_column_is_stored_exactly(runner: Runner) -> None:
    # Given a claimed chunk of four items and outcomes that fill every column an outcome sets: unicode and quotes in
    # the result and the text columns, a score that only its full repr keeps, a vector's raw bytes, an error
    job_id = a_job(runner, "cls-distilbert", ["a", "b", "c", "d"], chunk_size=4)
    with runner.sessions.begin() as session:
        claim = claim_chunk(session, job_id, 0, worker="w", lease_seconds=60)
    assert isinstance(claim, Claim)
    result = {"labels": ['정답 "q"', "b\\n"], "scores": [0.1 + 0.2, 1e-300], "nested": {"k": [None, True]}}
    vector = np.arange(7, dtype="<f4").tobytes() + b"\x00\xff"
    outcomes: list[Outcome | None] = [
        Outcome(result=result, label='정답 "q"', score=0.1 + 0.2, answer="ans\\wer\n", start_char=3, end_char=9),
        Outcome(result={"dim": 2}, entity_count=5, vector=vector),
        Outcome.failure(InferenceError("item 3: bad 'text' ✗ " + "x" * 3000)),
        None,
    ]

    # When they are written on PostgreSQL (one binary COPY for the results)
    with runner.sessions.begin() as session:
        written = write_results(session, [claim], [outcomes])

    # Then every column reads back equal to what the outcome said, the result as the JSON text SQLAlchemy writes,
    # and the item without an outcome stays queued
    assert written.chunks[0].succeeded == 2 and written.chunks[0].failed == 1
    with runner.sessions() as session:
        items = stored_items(session, job_id)
        raw = session.execute(
            text("SELECT result::text FROM results WHERE job_id = :j AND index = 0"), {"j": job_id}
        ).scalar_one()
    assert raw == json.dumps(result)
    for item, outcome in zip(items[:3], outcomes[:3], strict=True):
        assert outcome is not None
        for name, value in outcome.columns().items():
            assert getattr(item, name) == value, (item.index, name)
    assert items[3].state == ItemState.QUEUED and items[3].result is None
    # And an item's attempts come with its result (its chunk's one claim); the claim itself wrote no item row
    assert [i.attempts for i in items] == [1, 1, 1, 0]

    # And a second write of the same claim (a redelivery that raced it: the chunk was re-queued, not done) adds no
    # result twice: only the item without one gets it
    with runner.sessions.begin() as session:
        session.execute(update(Chunk).where(Chunk.job_id == job_id).values(state="queued", attempts=2))
    with runner.sessions.begin() as session:
        again = write_results(session, [claim], [[Outcome(result=[1])] * 4])
    assert (again.chunks[0].succeeded, again.chunks[0].failed, again.chunks[0].complete) == (1, 0, True)
    with runner.sessions() as session:
        rewritten = stored_items(session, job_id)
    assert [i.result for i in rewritten[:3]] == [i.result for i in items[:3]]
    assert (rewritten[3].state, rewritten[3].result, rewritten[3].attempts) == (ItemState.SUCCEEDED, [1], 2)
