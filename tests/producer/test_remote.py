"""RemoteClient against the HTTP API contract, through httpx's MockTransport: how requests are sent (streamed
bodies, the Idempotency-Key and its one resend) and how answers and errors read back into inferq's objects. The
same client against a real ``inferq serve`` is in tests/e2e/test_cli_over_http.py."""

from __future__ import annotations

import datetime as dt
import io
import json
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from inferq.errors import (
    DatabaseUnavailable,
    IdempotencyConflict,
    InferqError,
    InvalidInput,
    InvalidParameter,
    JobNotFound,
    LineError,
    QuotaExceeded,
    ServerUnavailable,
    TransientError,
    Unauthorized,
)
from inferq.settings import ModelSpec, Settings
from inferq.states import ItemState, JobState
from inferq.task_specs import TaskName
from producer.client import JobOptions, JobStatus
from producer.protocol import Exported
from producer.remote import RemoteClient
from producer.results import ResultRow
from server.routes.jobs import write_top_jsonl

JOB_ID = "0123456789abcdef0123456789abcdef"
T0 = dt.datetime(2026, 11, 30, 10, 0, 0, 123456, tzinfo=dt.UTC)

Handler = Callable[[httpx.Request], httpx.Response]


def remote(handler: Handler) -> RemoteClient:
    return RemoteClient("http://inferq.test/", "iq_abc_secret", transport=httpx.MockTransport(handler))


def a_status(**changes: Any) -> JobStatus:
    fields: dict[str, Any] = dict(
        id=JOB_ID,
        task="classification",
        model="sst2",
        state=JobState.SUCCEEDED,
        total=3,
        succeeded=2,
        failed=1,
        params={"top_k": 2},
        created_at=T0,
        started_at=T0 + dt.timedelta(seconds=1),
        finished_at=T0 + dt.timedelta(seconds=4),
        error=None,
        tenant="acme",
        metadata={"team": "search"},
        webhook_url="https://hooks.example.com/x",
        retry_of="f" * 32,
        chunk_size=2,
    )
    fields.update(changes)
    return JobStatus(**fields)


def job_object(status: JobStatus) -> dict[str, Any]:
    """The API's Job object for ``status``: its JSON, as the server writes it."""
    return status.model_dump(mode="json")


def error_answer(status: int, code: str, message: str, **extra: Any) -> httpx.Response:
    return httpx.Response(status, json={"error": {"code": code, "message": message, **extra}})


# -- reads ---------------------------------------------------------------------------------------------------------


def test_status_reads_the_job_object_into_the_same_job_status() -> None:
    # Given a server that answers with the Job object of a finished job, with a job-level error
    status = a_status(state=JobState.FAILED, error={"code": "model_load_error", "message": "no such model"})
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=job_object(status))

    # When the client asks for it
    with remote(handler) as client:
        got = client.status(JOB_ID)

    # Then it is the same JobStatus, whose JSON the CLI prints is the same, and the key went as a bearer token
    assert got == status and got.model_dump(mode="json") == status.model_dump(mode="json")
    assert seen[0].url == f"http://inferq.test/v1/jobs/{JOB_ID}"
    assert seen[0].headers["Authorization"] == "Bearer iq_abc_secret"


def test_a_job_id_is_one_path_segment_whatever_it_holds() -> None:
    paths: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        paths.append(request.url.raw_path.decode())
        return error_answer(404, "job_not_found", "no job '../models'")

    with remote(handler) as client, pytest.raises(JobNotFound):
        client.status("../models")
    assert paths == ["/v1/jobs/..%2Fmodels"]


def test_jobs_follows_the_cursor_until_the_limit() -> None:
    # Given 5 jobs served 2 a page at most
    ids = [f"{i:032x}" for i in range(5, 0, -1)]
    asked: list[dict[str, str]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        query = dict(request.url.params)
        asked.append(query)
        start = ids.index(query["after"]) + 1 if "after" in query else 0
        page = ids[start : start + min(int(query["limit"]), 2)]
        more = start + len(page) < len(ids)
        return httpx.Response(
            200,
            json={
                "object": "list",
                "data": [job_object(a_status(id=i, state=JobState.RUNNING)) for i in page],
                "has_more": more,
                "next_after": page[-1] if more else None,
            },
        )

    # When 4 running jobs are asked for, with every filter of `Client.jobs`
    with remote(handler) as client:
        got = client.jobs(4, JobState.RUNNING, task="classification", model="sst2", metadata={"team": "search"})

    # Then the pages were followed and no more than 4 came back, newest first, each page with the filters
    assert [s.id for s in got] == ids[:4]
    filters = {"state": "running", "task": "classification", "model": "sst2", "metadata[team]": "search"}
    assert all(q.items() >= filters.items() for q in asked)
    assert [q.get("after") for q in asked] == [None, ids[1]]


def test_jobs_starts_after_the_cursor_given() -> None:
    asked: list[dict[str, str]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        asked.append(dict(request.url.params))
        return httpx.Response(200, json={"object": "list", "data": [], "has_more": False, "next_after": None})

    with remote(handler) as client:
        assert client.jobs(3, after="a" * 32) == []
    assert asked == [{"limit": "3", "after": "a" * 32}]


def test_models_read_into_model_specs() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/v1/models"
        entry = {"name": "sst2", "source": "org/sst2", "task": "classification", "queue": None, "precision": "fp32"}
        return httpx.Response(200, json={"object": "list", "data": [{**entry, "description": "sentiment"}]})

    with remote(handler) as client:
        got = client.models()
    assert got == {
        "sst2": ModelSpec(source="org/sst2", task=TaskName.CLASSIFICATION, precision="fp32", description="sentiment")
    }


ROWS: dict[TaskName, list[ResultRow]] = {
    TaskName.CLASSIFICATION: [
        ResultRow(0, "a", "succeeded", [{"label": "POS", "score": 0.1 + 0.2}], None, label="POS", score=0.1 + 0.2),
        ResultRow(1, None, "failed", None, {"code": "inference_error", "message": 'bad, "quoted"\nline'}),
        ResultRow(2, "c,d", "queued", None, None),
        ResultRow(3, "é", "cancelled", None, None),
        # Characters that str.splitlines cuts at, inside a JSON string
        ResultRow(
            4, "a\u2028b\x85c\rd", "succeeded", [{"label": "P\u2029", "score": 1.0}], None, label="P\u2029", score=1.0
        ),
    ],
    TaskName.QUESTION_ANSWERING: [
        # The null answer of handle_impossible_answer: an empty string with a score, not a missing answer
        ResultRow(
            0, None, "succeeded", [{"answer": "", "score": 0.5, "start": 0, "end": 0}], None, None, 0.5, "", 0, 0
        ),
        ResultRow(
            1,
            "b",
            "succeeded",
            [{"answer": "Paris", "score": 1e-7, "start": 3, "end": 8}],
            None,
            None,
            1e-7,
            "Paris",
            3,
            8,
        ),
        ResultRow(2, "c", "failed", None, {"code": "invalid_input", "message": ""}),
    ],
    TaskName.TOKEN_CLASSIFICATION: [
        ResultRow(0, None, "succeeded", [], None, entity_count=0),
        ResultRow(
            1,
            None,
            "succeeded",
            [{"entity_group": "PER", "score": 0.9, "word": "Ann", "start": 0, "end": 3}],
            None,
            label="PER",
            score=0.9,
            entity_count=1,
        ),
    ],
    TaskName.EMBEDDING: [
        ResultRow(0, "x", "succeeded", {"dim": 2, "dtype": "float32", "embedding": [0.10000000149011612, -2.5]}, None),
    ],
}


@pytest.mark.parametrize("task", list(ROWS))
def test_results_read_back_the_jsonl_export_into_equal_rows(task: TaskName) -> None:
    # Given a server whose JSONL export with the top columns is what the server writes for these rows
    rows = [ResultRow(**{**_fields(r), "task": task}) for r in ROWS[task]]
    out = io.StringIO(newline="")
    write_top_jsonl(rows, out)
    body = out.getvalue().encode()
    queries: list[dict[str, str]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/results"):
            queries.append(dict(request.url.params))
            # Sent in small pieces, cut anywhere (inside a line, a UTF-8 character)
            return httpx.Response(200, content=_pieces(body, 7), headers={"Content-Type": "application/jsonl"})
        return httpx.Response(200, json=job_object(a_status(task=task.value)))

    # When the client reads the results with filters
    with remote(handler) as client:
        got = list(client.results(JOB_ID, label="POS", min_score=0.25, failed=True, state=ItemState.FAILED))

    # Then the rows are equal to the ones exported, field for field, and the filters went to the server
    assert got == rows
    assert queries == [
        {"format": "jsonl", "label": "POS", "min_score": "0.25", "failed": "true", "state": "failed", "top": "true"}
    ]


def _fields(row: ResultRow) -> dict[str, Any]:
    return {name: getattr(row, name) for name in ResultRow.__dataclass_fields__}


def _pieces(data: bytes, size: int) -> Iterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


def test_export_writes_the_servers_bytes_as_they_come_and_nothing_on_a_refusal(tmp_path: Path) -> None:
    body = b"PAR1" + bytes(range(256)) * 100

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == f"/v1/jobs/{JOB_ID}/results":
            return httpx.Response(200, content=_pieces(body, 1000))
        return error_answer(404, "job_not_found", "no job 'nope'")

    out = io.BytesIO()
    with remote(handler) as client:
        # To a stream, and to a file
        assert client.export(JOB_ID, out, format="csv") == Exported("csv", None)
        assert client.export(JOB_ID, tmp_path / "x.parquet", format="parquet") == Exported(
            "parquet", tmp_path / "x.parquet"
        )
        refused = io.BytesIO()
        with pytest.raises(JobNotFound):
            client.export("nope", refused, format="csv")
        with pytest.raises(JobNotFound):
            client.export("nope", tmp_path / "no.parquet", format="parquet")
    assert out.getvalue() == body and (tmp_path / "x.parquet").read_bytes() == body
    assert refused.getvalue() == b"" and sorted(p.name for p in tmp_path.iterdir()) == ["x.parquet"]


def test_an_npy_export_comes_with_its_rows_file(tmp_path: Path) -> None:
    # Given a server that answers an NPY export that accepts a tar with the matrix and its rows file
    matrix = b"\x93NUMPY\x01\x00" + bytes(range(256)) * 100
    rows = b'{"index":0,"id":"a","status":"succeeded","row":0,"error":null}\n'
    packed = io.BytesIO()
    with tarfile.open(fileobj=packed, mode="w") as tar:
        for name, data in (("matrix.npy", matrix), ("rows.jsonl", rows)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    accepted: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        accepted.append(request.headers.get("Accept", ""))
        assert request.url.params["format"] == "npy"
        return httpx.Response(
            200, content=_pieces(packed.getvalue(), 999), headers={"Content-Type": "application/x-tar"}
        )

    # When the client exports it to a file
    with remote(handler) as client:
        done = client.export(JOB_ID, tmp_path / "out.npy", format="npy")

    # Then the matrix and the rows file lie where the database path writes them, and nothing else
    assert done == Exported("npy", tmp_path / "out.npy", tmp_path / "out.rows.jsonl")
    assert (tmp_path / "out.npy").read_bytes() == matrix and (tmp_path / "out.rows.jsonl").read_bytes() == rows
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.npy", "out.rows.jsonl"]
    assert accepted == ["application/x-tar"]
    # And an NPY export to a stream is refused before asking the server
    with remote(handler) as client, pytest.raises(InvalidParameter):
        client.export(JOB_ID, io.BytesIO(), format="npy")
    assert len(accepted) == 1


# -- submit --------------------------------------------------------------------------------------------------------


def created(request: httpx.Request, total: int = 3, **extra: Any) -> httpx.Response:
    return httpx.Response(201, json={**job_object(a_status(total=total, state=JobState.QUEUED)), **extra})


def test_submit_streams_a_file_with_its_options_and_an_idempotency_key(tmp_path: Path) -> None:
    # Given a CSV file
    source = tmp_path / "in.csv"
    source.write_bytes(b"id,text\n1,great\n2,awful\n3,fine\n")
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        request.read()
        seen.append(request)
        return created(request, skipped=[{"line": 9, "field": "text", "message": "is empty"}], skipped_total=4)

    # When it is submitted with parameters, a chunk size and metadata
    with remote(handler) as client:
        sub = client.submit(
            "classification",
            "sst2",
            source,
            {"top_k": 2},
            chunk_size=2,
            skip_invalid=True,
            options=JobOptions(metadata={"team": "search"}, webhook_url="https://hooks.example.com/x"),
        )

    # Then the file went as the body, as CSV, its size known, with the options in the query string
    [request] = seen
    assert request.method == "POST" and request.url.path == "/v1/jobs"
    assert request.content == source.read_bytes()
    assert request.headers["Content-Type"] == "text/csv"
    assert request.headers["Content-Length"] == str(source.stat().st_size)
    assert dict(request.url.params) == {
        "task": "classification",
        "model": "sst2",
        "format": "csv",
        "params": '{"top_k": 2}',
        "metadata": '{"team": "search"}',
        "chunk_size": "2",
        "webhook_url": "https://hooks.example.com/x",
        "skip_invalid": "true",
    }
    assert len(request.headers["Idempotency-Key"]) == 32
    # And the answer reads as Client.submit's Submission
    assert (sub.job_id, sub.total, sub.chunks) == (JOB_ID, 3, 2)
    assert (sub.skipped, sub.skipped_total) == ([LineError(9, "text", "is empty")], 4)


def test_submit_writes_python_rows_as_jsonl_while_sending() -> None:
    bodies: list[bytes] = []

    def rows() -> Iterator[Any]:
        yield from ["plain text", {"id": 7, "text": "dict, é"}, {"text": {1, 2}}]

    def handler(request: httpx.Request) -> httpx.Response:
        bodies.append(request.read())
        assert request.headers["Content-Type"] == "application/jsonl"
        assert "Content-Length" not in request.headers  # chunked: never built whole
        return created(request)

    with remote(handler) as client:
        client.submit(TaskName.CLASSIFICATION, "sst2", rows(), format="csv")

    # A string is the text of a one-text task; a row that is not JSON is a line that is not JSON either
    assert bodies[0].decode().split("\n") == [
        '{"text":"plain text"}',
        '{"id":7,"text":"dict, é"}',
        "<not JSON: dict>",
        "",
    ]


def test_a_network_error_resends_the_same_request_with_the_same_key(tmp_path: Path) -> None:
    # Given a server whose first answer is lost after it has read the request
    source = tmp_path / "in.jsonl"
    source.write_text('{"text": "a"}\n{"text": "b"}\n{"text": "c"}\n')
    seen: list[tuple[str, bytes]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append((request.headers["Idempotency-Key"], request.read()))
        if len(seen) == 1:
            raise httpx.ReadError("connection reset by peer", request=request)
        return httpx.Response(200, json=job_object(a_status()), headers={"Idempotent-Replayed": "true"})

    # When a file is submitted, and when a list of rows is
    with remote(handler) as client:
        sub = client.submit("classification", "sst2", source)
        seen_file, seen[:] = list(seen), []
        client.submit("classification", "sst2", [{"text": "a"}], options=JobOptions(idempotency_key="mine"))

    # Then each went twice, the same body under the same key, and the job the first made came back
    assert len(seen_file) == 2 and seen_file[0] == seen_file[1] and seen_file[0][1] == source.read_bytes()
    assert sub.job_id == JOB_ID
    assert seen == [("mine", b'{"text":"a"}\n')] * 2
    assert sub.replayed


def test_a_body_that_cannot_be_read_twice_is_not_resent() -> None:
    calls: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        request.read()
        raise httpx.ReadError("connection reset by peer", request=request)

    rows = iter([{"text": "a"}])  # an iterator, read once
    with remote(handler) as client, pytest.raises(ServerUnavailable) as caught:
        client.submit("classification", "sst2", rows)
    assert len(calls) == 1
    assert "ReadError" in caught.value.message and "secret" not in caught.value.message


def test_a_refused_connection_is_tried_twice_then_server_unavailable() -> None:
    calls: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        raise httpx.ConnectError("connection refused", request=request)

    transport = httpx.MockTransport(handler)
    with (
        RemoteClient("http://me:pw@inferq.test", "k", transport=transport) as client,
        pytest.raises(ServerUnavailable) as caught,
    ):
        client.status(JOB_ID)
    assert len(calls) == 2 and isinstance(caught.value, TransientError)
    assert caught.value.code == "server_unavailable" and "http://inferq.test" in caught.value.message
    assert "pw" not in caught.value.message


# -- errors ----------------------------------------------------------------------------------------------------------


def test_invalid_input_comes_back_with_its_lines_and_the_clis_message() -> None:
    lines = [LineError(2, "text", "must be a string, got int"), LineError(3, None, "malformed JSON: x (column 2)")]
    local = InvalidInput(lines, 60)

    def handler(request: httpx.Request) -> httpx.Response:
        return error_answer(
            400,
            "invalid_input",
            "60 invalid input line(s); nothing was submitted",
            lines=[{"line": e.line, "field": e.field, "message": e.message} for e in lines],
            lines_total=60,
        )

    with remote(handler) as client, pytest.raises(InvalidInput) as caught:
        client.submit("classification", "sst2", [{"text": 1}])
    assert caught.value.errors == lines and caught.value.total_bad == 60
    assert caught.value.message == local.message


@pytest.mark.parametrize(
    ("status", "code", "cls"),
    [
        (404, "job_not_found", JobNotFound),
        (503, "database_unavailable", DatabaseUnavailable),
        (422, "invalid_parameter", InvalidParameter),
        (401, "unauthorized", Unauthorized),
        (409, "idempotency_conflict", IdempotencyConflict),
        (418, "a_code_of_tomorrow", InferqError),
        (500, "internal_error", TransientError),
    ],
)
def test_each_error_code_comes_back_as_the_error_of_that_code(status: int, code: str, cls: type[Exception]) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return error_answer(status, code, f"the {code} message", field="top_k")

    with remote(handler) as client, pytest.raises(cls) as caught:
        client.cancel(JOB_ID)
    err = caught.value
    assert isinstance(err, InferqError)
    assert (err.code, err.message, str(err)) == (code, f"the {code} message", f"the {code} message")
    assert err.details["field"] == "top_k" and err.details["status"] == status


def test_a_quota_refusal_says_when_to_come_back() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        answer = error_answer(429, "quota_exceeded", "tenant 'acme' has 900 unfinished items")
        answer.headers["Retry-After"] = "30"
        return answer

    with remote(handler) as client, pytest.raises(QuotaExceeded) as caught:
        client.submit("classification", "sst2", ["a"])
    assert caught.value.code == "quota_exceeded" and caught.value.retry_after == 30


@pytest.mark.parametrize(
    ("answer", "code", "cls"),
    [
        (httpx.Response(502, text="<html>Bad Gateway</html>"), "server_unavailable", ServerUnavailable),
        (httpx.Response(401, json={"detail": "Not authenticated"}), "unauthorized", Unauthorized),
        (httpx.Response(404, json={"detail": "Not Found"}), "http_error", InferqError),
    ],
)
def test_an_answer_without_a_code_is_read_by_its_status(
    answer: httpx.Response, code: str, cls: type[Exception]
) -> None:
    with remote(lambda request: answer) as client, pytest.raises(cls) as caught:
        client.status(JOB_ID)
    assert isinstance(caught.value, InferqError) and caught.value.code == code


def test_the_client_of_the_settings_needs_both_url_and_key() -> None:
    with pytest.raises(InferqError, match="INFERQ_API_KEY"):
        RemoteClient.from_settings(Settings(server_url="http://inferq.test"))
    with RemoteClient.from_settings(Settings(server_url="http://inferq.test/", api_key="iq_a_b")) as client:  # type: ignore[arg-type,unused-ignore]
        assert client.base_url == "http://inferq.test"


def test_job_objects_from_json_round_trip() -> None:
    status = a_status(started_at=None, finished_at=None, state=JobState.QUEUED, succeeded=0, failed=0)
    text = json.dumps(job_object(status))
    with remote(lambda request: httpx.Response(200, content=text.encode())) as client:
        assert client.status(JOB_ID).model_dump(mode="json") == status.model_dump(mode="json")


def test_an_answer_cut_off_while_it_streams_is_server_unavailable() -> None:
    def cut_off() -> Iterator[bytes]:
        yield b'{"index":0}\n'
        raise httpx.RemoteProtocolError("peer closed connection without sending complete message body")

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=cut_off())

    out = io.BytesIO()
    with remote(handler) as client, pytest.raises(ServerUnavailable, match="cut off"):
        client.export(JOB_ID, out)
    assert out.getvalue() == b'{"index":0}\n'


def test_retry_submits_the_failed_items_as_a_new_job() -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(f"{request.method} {request.url.path}")
        return httpx.Response(201, json=job_object(a_status(id="e" * 32, total=5, retry_of=JOB_ID)))

    with remote(handler) as client:
        sub = client.retry(JOB_ID)
    assert seen == [f"POST /v1/jobs/{JOB_ID}/retry"]
    assert (sub.job_id, sub.total, sub.chunks, sub.replayed) == ("e" * 32, 5, 3, False)
