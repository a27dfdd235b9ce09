"""Metrics and JSON logs of a real worker: ``inferq worker --concurrency 2 --metrics-port P`` on Redis and PostgreSQL,
JSON logs on, runs a real job (some of whose items fail) and a job whose model will not load. Its ``/metrics``,
scraped over HTTP, agrees with the jobs' counts, and each pool process's own files show that both of them worked
and that their numbers add up; its log is one JSON object a line, with the chunk's fields and no secret."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from inferq.settings import Settings
from producer.client import Client
from server.process import free_port
from tests.support.jobs import worker_env
from tests.support.records import wait_for
from tests.support.tiny_models import corpus
from worker.process import running_worker

pytestmark = pytest.mark.services

#: Rows kept in the broken model's embedding table (its tokenizer has 2,000 tokens): texts with a later token fail.
EMBEDDINGS = 1000
GOOD, BAD, CHUNK = 56, 4, 4
#: Secrets the second job's model source holds: the worker logs the path when the model will not load.
URL_PASSWORD = "pw-never-logged"
WEBHOOK_SECRET = "whsec_c2VjcmV0LW5ldmVyLWxvZ2dlZA=="
API_KEY = "iq_k3y1d_s3cr3tn3v3rl0gg3d"


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


def texts_for(model: Path) -> list[str]:
    """`GOOD` texts that run, with `BAD` texts that fail in the forward pass spread among them."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model)
    fits, poison = [], []
    for text in corpus():
        (fits if max(tokenizer(text, truncation=True)["input_ids"]) < EMBEDDINGS else poison).append(text)
    texts = fits[:GOOD]
    for i, bad in enumerate(poison[:BAD]):
        texts.insert(5 + 13 * i, bad)
    return texts


@dataclass
class Run:
    job_id: str
    status: Any
    lost_job_id: str
    lost_status: Any
    scraped: str
    #: Each pool process's own counters, read from its own file (pid → `inferq_items_total` samples).
    per_process: dict[int, dict[tuple[str, ...], float]]
    main_pid: int
    #: The worker's output while it ran (Celery writes its shutdown notice to the terminal, not to the log).
    log: str


def samples(text: str, name: str) -> dict[tuple[str, ...], float]:
    """The samples called ``name`` in an exposition, by their label values (sorted by label name)."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[tuple[str, ...], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                out[tuple(v for _, v in sorted(sample.labels.items()))] = sample.value
    return out


def total(text: str, name: str, **labels: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    found = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                found += sample.value
    return found


def items_of_each_process(multiproc_dir: Path, tmp: Path) -> dict[int, dict[tuple[str, ...], float]]:
    """Read each process's counter file on its own (copied into a directory of its own)."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.multiprocess import MultiProcessCollector

    out = {}
    for file in sorted(multiproc_dir.glob("counter_*.db")):
        pid = int(file.stem.split("_")[1])
        alone = tmp / f"pid-{pid}"
        alone.mkdir()
        shutil.copy(file, alone / file.name)
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=str(alone))
        out[pid] = samples(generate_latest(registry).decode(), "inferq_items_total")
    return out


@pytest.fixture(scope="module")
def run(
    tmp_path_factory: pytest.TempPathFactory, migrated_postgres: str, redis_url: str, broken_model: Path
) -> Iterator[Run]:
    tmp = tmp_path_factory.mktemp("metrics")
    (tmp / "tmpdir").mkdir()
    port = free_port()
    # A password in the database URL (PostgreSQL's trust authentication ignores it): it must never be logged.
    database_url = migrated_postgres.replace("postgresql://postgres@", f"postgresql://postgres:{URL_PASSWORD}@")
    assert URL_PASSWORD in database_url
    leaky_source = f"/nonexistent/{API_KEY}/postgresql://user:{URL_PASSWORD}@db/{WEBHOOK_SECRET}"
    registry = {
        "broken": {"source": str(broken_model), "task": "classification"},
        "leaky": {"source": leaky_source, "task": "classification"},
    }
    queue = f"inferq-test-{port}"
    env = worker_env(database_url, redis_url, queue, registry, max_batch_size=4, log_format="json")
    # The worker makes its metrics directory under TMPDIR: here, where the test can read each process's files.
    env["TMPDIR"] = str(tmp / "tmpdir")
    texts = texts_for(broken_model)
    log = tmp / "worker.log"
    settings = Settings(database_url=database_url, broker_url=redis_url, default_queue=queue, models=registry)
    args = ("--concurrency", "2", "--metrics-port", str(port), "--models", "broken")
    with running_worker(env, log, *args) as proc, Client(settings) as client:
        # Both pool processes up (each has loaded the model), so that both take chunks from the start.
        wait_for(lambda: log.read_text().count("loaded broken (") >= 2, timeout=300, what="both pool processes")
        job_id = client.submit("classification", "broken", [{"text": t} for t in texts], chunk_size=CHUNK).job_id
        lost_job_id = client.submit("classification", "leaky", [{"text": t} for t in texts[:3]]).job_id
        status = client.wait(job_id, timeout=120)
        lost_status = client.wait(lost_job_id, timeout=120)
        url = f"http://127.0.0.1:{port}/metrics"
        finished = status.succeeded + status.failed + lost_status.failed

        def scraped_all() -> str | None:
            # A job ends in the write's commit; its counters move right after it.
            text = httpx.get(url, timeout=10).text
            return text if total(text, "inferq_items_total") == finished else None

        scraped = wait_for(scraped_all, timeout=20, what="the items counter to reach the jobs' counts", interval=0.2)
        (multiproc_dir,) = (tmp / "tmpdir").glob("inferq-metrics-*")
        per_process = items_of_each_process(multiproc_dir, tmp)
        main_pid = proc.pid
        output = log.read_text()
    yield Run(job_id, status, lost_job_id, lost_status, scraped, per_process, main_pid, output)


def test_the_items_counter_equals_the_jobs_counts(run: Run) -> None:
    # Given a finished job with some failed items, and a job whose model would not load
    assert (run.status.state.value, run.status.succeeded, run.status.failed) == ("succeeded", GOOD, BAD)
    assert (run.lost_status.state.value, run.lost_status.failed) == ("failed", 3)

    # When the worker's endpoint was scraped over HTTP
    items = samples(run.scraped, "inferq_items_total")

    # Then its items by model and outcome are the jobs' counts (labels: model, outcome, queue, task)
    by_model_outcome = {(model, outcome): value for (model, outcome, _, _), value in items.items()}
    assert by_model_outcome == {("broken", "succeeded"): GOOD, ("broken", "failed"): BAD, ("leaky", "failed"): 3}


def test_both_pool_processes_counted_and_their_counts_add_up(run: Run) -> None:
    # Given each process's own counter file
    # When the items each one stored are read from its file alone
    stored = {pid: sum(values.values()) for pid, values in run.per_process.items()}

    # Then both pool processes stored items (the main process none), and their sum is what the endpoint served
    workers = {pid: n for pid, n in stored.items() if n > 0}
    assert len(workers) == 2, stored
    assert run.main_pid not in workers
    assert sum(workers.values()) == total(run.scraped, "inferq_items_total") == GOOD + BAD + 3


def test_batches_tokens_times_and_deliveries_agree_with_the_job(run: Run) -> None:
    # Given the scrape after the jobs
    text = run.scraped
    chunks = (GOOD + BAD) // CHUNK + 1  # the broken model's chunks, and the lost job's one chunk

    # Then every chunk was delivered once and done, waited in the queue once, and ran once
    assert total(text, "inferq_chunk_deliveries_total", outcome="done") == chunks
    assert total(text, "inferq_chunk_deliveries_total") == chunks
    assert total(text, "inferq_chunk_wait_seconds_count") == chunks
    assert total(text, "inferq_chunk_seconds_count") == chunks
    # And micro-batches ran with their forward passes timed, never more padded tokens than real ones below
    batches = total(text, "inferq_micro_batches_total", model="broken")
    assert batches >= (GOOD + BAD) / 4
    assert total(text, "inferq_forward_seconds_count", model="broken") == batches
    real, padded = total(text, "inferq_tokens_total"), total(text, "inferq_padded_tokens_total")
    assert 0 < real <= padded
    # And each pool process loaded the preloaded model once; nothing was redelivered, exhausted or retried
    assert total(text, "inferq_model_load_seconds_count", model="broken") == 2
    for name in ("inferq_chunks_redelivered_total", "inferq_chunks_exhausted_total", "inferq_database_retries_total"):
        assert total(text, name) == 0, name
    assert total(text, "inferq_chunks_in_progress") == 0
    # And the state read from SQL is there: this database's finished jobs, nothing left unfinished on this queue
    assert total(text, "inferq_state_up") == 1
    assert total(text, "inferq_jobs", state="succeeded") >= 1
    assert total(text, "inferq_jobs", state="failed") >= 1
    assert "job_id" not in text


def test_the_log_is_one_json_object_a_line_with_the_chunks_fields_and_no_secret(run: Run) -> None:
    # Given the worker's whole output
    raw = run.log

    # When every line is read as JSON
    lines = [json.loads(line) for line in raw.splitlines() if line.strip()]

    # Then each chunk of the job has its line, with the job, chunk, model, outcome and timing
    done = [e for e in lines if e.get("job_id") == run.job_id and "outcome" in e]
    assert sorted(e["chunk"] for e in done) == list(range((GOOD + BAD) // CHUNK))
    for entry in done:
        assert entry["model"] == "broken" and entry["outcome"] == "done" and entry["task"] == "classification"
        assert isinstance(entry["seconds"], float) and entry["seconds"] > 0
        assert entry["succeeded"] + entry["failed"] == CHUNK
        assert {"time", "level", "logger", "message", "process"} <= entry.keys()
    # And the model that would not load is logged with its source, its secrets redacted
    lost = [e for e in lines if e.get("job_id") == run.lost_job_id and "could not load model" in e["message"]]
    assert lost, "the load error was not logged"
    message = lost[0]["message"]
    assert "iq_***/postgresql://user:***@db/whsec_***" in message, message
    for secret in (URL_PASSWORD, WEBHOOK_SECRET, API_KEY, WEBHOOK_SECRET.removeprefix("whsec_")):
        assert secret not in raw, secret
