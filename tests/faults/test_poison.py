"""Issue 5, point 5: poison. An input whose forward pass raises fails alone, with a code and a message, while its
neighbours in the same micro-batch get their results. A chunk that kills its worker every time is given up after
`MAX_CHUNK_ATTEMPTS` claims, with its items recorded as failed: no message loops forever.

The poison is real: a model whose embedding table is smaller than its tokenizer's vocabulary. A text holding a
token id beyond the table makes the embedding lookup raise inside ``forward`` (IndexError), exactly as a corrupt or
mismatched checkpoint does in production."""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path

import pytest
from sqlalchemy import update

from inferq.constants import MAX_CHUNK_ATTEMPTS
from inferq.schema import Chunk
from tests.reference import assert_same_labels, classification_reference
from tests.support.brokers import PrivateRedis, ready_messages
from tests.support.jobs import client_for, pid_of, sentences, worker_env
from tests.support.records import Record, wait_for
from tests.support.tiny_models import corpus
from tests.support.worker_process import worker_log
from worker.process import running_worker

pytestmark = pytest.mark.services

#: Celery's line for a chunk's task that returned.
TASK_SUCCEEDED = re.compile(r"Task inferq\.run_chunk\[[^\]]+\] succeeded")

#: Rows kept in the broken model's embedding table (its tokenizer has 2,000 tokens).
EMBEDDINGS = 1000


@pytest.fixture(scope="module")
def broken_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny classifier whose embedding table was cut to its first `EMBEDDINGS` rows."""
    from transformers import AutoModelForSequenceClassification

    from inferq.task_specs import TaskName
    from tests.support.tiny_models import build_model

    path = build_model(tmp_path_factory.mktemp("models") / "broken", TaskName.CLASSIFICATION, "distilbert")
    model = AutoModelForSequenceClassification.from_pretrained(path)
    model.resize_token_embeddings(EMBEDDINGS)
    model.save_pretrained(path)
    return path


def split_corpus(model: Path) -> tuple[list[str], list[str]]:
    """Sentences whose tokens all fit the table, and sentences holding at least one that does not."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model)
    fits, poison = [], []
    for text in corpus():
        ids = tokenizer(text, truncation=True)["input_ids"]
        (fits if max(ids) < EMBEDDINGS else poison).append(text)
    return fits, poison


def test_poison_items_fail_alone_and_their_neighbours_get_results(
    tmp_path: Path,
    migrated_postgres: str,
    redis_server: PrivateRedis,
    queue_name: str,
    broken_model: Path,
    record: Record,
) -> None:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    # Given 37 good texts and 3 poison texts, spread through one chunk of micro-batches of 8
    fits, poison = split_corpus(broken_model)
    texts = fits[:37]
    for at, bad in zip((3, 17, 30), poison[:3], strict=True):
        texts.insert(at, bad)
    # (the poison really raises inside the model's forward pass)
    model = AutoModelForSequenceClassification.from_pretrained(broken_model).eval()
    tokenizer = AutoTokenizer.from_pretrained(broken_model)
    with pytest.raises(IndexError), torch.inference_mode():
        model(**tokenizer([poison[0]], return_tensors="pt"))

    registry = {"broken": {"source": str(broken_model), "task": "classification"}}
    env = worker_env(migrated_postgres, redis_server.url, queue_name, registry, max_batch_size=8)
    with running_worker(env, tmp_path / "worker.log", "--models", "broken"), client_for(env) as client:
        # When they run as one job
        job_id = client.submit("classification", "broken", [{"text": t} for t in texts], chunk_size=40).job_id
        status = client.wait(job_id, timeout=120)

    # Then the job ended with each poison item failed on its own, code and message recorded
    assert (status.state.value, status.succeeded, status.failed) == ("succeeded", 37, 3)
    items = record.assert_every_item_once(job_id)
    failed = [i for i in items if i.state == "failed"]
    assert [i.index for i in failed] == [3, 17, 30]
    for item in failed:
        assert item.error_code == "inference_error"
        assert item.error_message is not None and item.error_message.startswith("IndexError")
    # And every neighbour got exactly the pipeline's result
    good = [i for i in items if i.state == "succeeded"]
    reference = classification_reference(broken_model, [{"text": texts[i.index]} for i in good], top_k=1)
    for item, want in zip(good, reference, strict=True):
        assert item.result is not None
        assert_same_labels(item.result, want, where=str(item.index))
    assert "splitting it" in worker_log(tmp_path / "worker.log")


def test_a_chunk_that_kills_its_worker_every_time_is_given_up(
    tmp_path: Path,
    redis_server: PrivateRedis,
    redis_env: dict[str, str],
    queue_name: str,
    record: Record,
) -> None:
    # Given a job of one chunk that already killed the worker that claimed it, all but twice of the allowed times
    # (counted on the chunk, as claims count them: the kill tests show each claim counting one)
    env = redis_env
    earlier = MAX_CHUNK_ATTEMPTS - 2
    with client_for(env) as client:
        job_id = client.submit("classification", "slow", sentences(400), chunk_size=400).job_id
        with client.sessions.begin() as session:
            session.execute(update(Chunk).where(Chunk.job_id == job_id).values(attempts=earlier))

        # When a worker's pool process that starts it dies (SIGKILL), and so does the next one
        with running_worker(env, tmp_path / "worker.log", "--models", "slow", "--concurrency", "2"):
            for attempt in range(earlier + 1, MAX_CHUNK_ATTEMPTS + 1):
                chunk = wait_for(lambda n=attempt: _claimed(record, job_id, n), 60, f"claim number {attempt}")
                os.kill(pid_of(chunk.worker), signal.SIGKILL)
            status = client.wait(job_id, timeout=60)
            # (and the delivery that gave the chunk up has returned: the worker logs the task's success after it)
            gave_up = f"chunk 0 was started {MAX_CHUNK_ATTEMPTS} times without finishing"
            wait_for(
                lambda: TASK_SUCCEEDED.search(worker_log(tmp_path / "worker.log").partition(gave_up)[2]),
                60,
                "the task that gave the chunk up to return",
            )
            final = record.chunks(job_id)[0]

    # Then the next delivery gave its items up, each recorded as failed with attempts_exhausted
    assert (status.state.value, status.succeeded, status.failed) == ("succeeded", 0, 400)
    items = record.assert_every_item_once(job_id)
    assert {(i.error_code, i.attempts) for i in items} == {("attempts_exhausted", MAX_CHUNK_ATTEMPTS + 1)}
    assert f"chunk 0 was started {MAX_CHUNK_ATTEMPTS} times without finishing" in worker_log(tmp_path / "worker.log")
    # And the message was acknowledged: no further claim, nothing left on the broker
    assert (final.state, final.attempts) == ("done", MAX_CHUNK_ATTEMPTS + 1)
    assert ready_messages(redis_server.url, queue_name) == 0


def _claimed(record: Record, job_id: str, attempts: int) -> Chunk | None:
    return next((c for c in record.chunks(job_id) if c.attempts == attempts and c.state == "running"), None)


def test_a_run_whose_every_item_is_poison_gives_each_its_error(broken_model: Path) -> None:
    # (found by the soak: its reference ran a handful of poison texts alone, and postprocess met no outputs at all)
    from inferq.settings import ModelSpec, Settings
    from inferq.task_specs import TaskName
    from worker.model_cache import ModelCache

    # Given the broken model's engine, and only texts that poison it
    settings = Settings(models={"broken": ModelSpec(source=str(broken_model), task=TaskName.CLASSIFICATION)})
    engine = ModelCache(settings).engine("broken", TaskName.CLASSIFICATION)
    _, poison = split_corpus(broken_model)

    # When a run holds nothing else
    outcomes = engine.run([{"text": t} for t in poison[:6]], {})

    # Then each item gets the inference error, and nothing else is raised
    assert len(outcomes) == 6
    for outcome in outcomes:
        assert outcome is not None and not outcome.ok
        assert outcome.error is not None and outcome.error.code == "inference_error"
        assert "IndexError" in str(outcome.error)
