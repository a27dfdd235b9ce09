"""Files and batches of the OpenAI-compatible API on SQLite (the app in this process, no worker): the bytes go to
the files directory and come back the same, a page at a time listing, the line limit, another tenant's 404, and a
batch whose every line is bad (failed at once, its error file naming each line in order), and a batch past its
completion window (expired by a dispatcher round, its finished lines kept), read with the official client."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, update

from inferq import constants
from inferq.celery_app import create_celery
from inferq.db import make_engine, make_sessionmaker
from inferq.dispatcher import FairShare, dispatch_round
from inferq.keys import create_key
from inferq.schema import Job, utcnow
from inferq.settings import Settings
from inferq.states import ItemState
from server.app import create_app
from tests.server.conftest import bearer
from tests.support.records import put_result, wait_for


@pytest.fixture
def app_keys(sqlite_settings: Settings, tmp_path: Path) -> Iterator[tuple[TestClient, str, str, Path]]:
    files_dir = tmp_path / "files"
    settings = sqlite_settings.model_copy(update={"files_dir": files_dir})
    engine = make_engine(settings)
    with make_sessionmaker(engine).begin() as session:
        mine, _ = create_key(session, "mine")
        theirs, _ = create_key(session, "theirs")
    engine.dispose()
    with TestClient(create_app(settings)) as client:
        yield client, mine, theirs, files_dir


#: Seconds a test waits for a batch's validation before it gives up (a guard against hanging, not a measure).
VALIDATION_WAIT_SECONDS = 120


def validated(read: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """The batch ``read`` gives, read again until it is no longer ``validating``."""
    return wait_for(
        lambda: (batch := read())["status"] != "validating" and batch, VALIDATION_WAIT_SECONDS, "validation"
    )


def validated_batch(client: openai.OpenAI, batch_id: str) -> Any:
    """The batch, as the official client reads it, once it is no longer ``validating``."""
    validated(lambda: client.batches.retrieve(batch_id).model_dump())
    return client.batches.retrieve(batch_id)


def upload(client: TestClient, key: str, data: bytes, name: str = "in.jsonl") -> dict[str, Any]:
    answer = client.post(
        "/v1/files", headers=bearer(key), files={"file": (name, data, "application/jsonl")}, data={"purpose": "batch"}
    )
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


def test_a_file_goes_in_and_comes_back_byte_for_byte(app_keys: tuple[TestClient, str, str, Path]) -> None:
    client, mine, theirs, files_dir = app_keys
    # Given a file of several pieces' worth of bytes, its last line without a newline
    data = b"".join(b'{"n": %d, "pad": "%s"}\n' % (i, b"x" * 300) for i in range(8000)) + b'{"last": true}'
    assert len(data) > 2 * constants.FILE_STREAM_BYTES
    # When it is uploaded
    made = upload(client, mine, data, "big.jsonl")
    # Then its object says what it holds, and its bytes lie in the files directory under its id
    assert made["object"] == "file" and made["bytes"] == len(data) and made["filename"] == "big.jsonl"
    assert made["purpose"] == "batch" and made["id"].startswith("file-")
    assert (files_dir / made["id"]).read_bytes() == data
    # And they come back the same
    assert client.get(f"/v1/files/{made['id']}/content", headers=bearer(mine)).content == data
    # And another tenant sees nothing of it, in OpenAI's error shape
    for method, path in (
        ("GET", f"/v1/files/{made['id']}"),
        ("GET", f"/v1/files/{made['id']}/content"),
        ("DELETE", f"/v1/files/{made['id']}"),
    ):
        answer = client.request(method, path, headers=bearer(theirs))
        assert answer.status_code == 404
        assert answer.json()["error"] == {
            "message": f"No such File object: {made['id']}",
            "type": "not_found_error",
            "param": None,
            "code": "file_not_found",
        }
    assert client.get("/v1/files", headers=bearer(theirs)).json()["data"] == []
    # And deleting it removes its bytes
    assert client.delete(f"/v1/files/{made['id']}", headers=bearer(mine)).json()["deleted"] is True
    assert not (files_dir / made["id"]).exists()
    assert client.get(f"/v1/files/{made['id']}", headers=bearer(mine)).status_code == 404


def test_a_filename_that_cannot_be_stored_is_refused(app_keys: tuple[TestClient, str, str, Path]) -> None:
    client, mine, _, _ = app_keys
    # A body written by hand: clients escape such a name, a hostile caller need not
    body = (
        b'--B\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n'
        b'--B\r\nContent-Disposition: form-data; name="file"; filename="a\x00b.jsonl"\r\n\r\n{}\n\r\n--B--\r\n'
    )
    answer = client.post(
        "/v1/files", headers={**bearer(mine), "Content-Type": "multipart/form-data; boundary=B"}, content=body
    )
    assert answer.status_code == 400 and answer.json()["error"]["code"] == "malformed_value"
    assert client.get("/v1/files", headers=bearer(mine)).json()["data"] == []


def test_files_are_listed_newest_first_a_page_at_a_time(app_keys: tuple[TestClient, str, str, Path]) -> None:
    client, mine, _, _ = app_keys
    ids = [upload(client, mine, b"{}\n", f"f{i}.jsonl")["id"] for i in range(5)]
    seen: list[str] = []
    after = None
    while True:
        page = client.get("/v1/files", headers=bearer(mine), params={"limit": 2, **({"after": after} if after else {})})
        body = page.json()
        seen += [f["id"] for f in body["data"]]
        if not body["has_more"]:
            break
        after = body["last_id"]
    assert seen == ids[::-1]


def test_a_file_over_the_line_limit_is_refused(
    app_keys: tuple[TestClient, str, str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    client, mine, _, files_dir = app_keys
    monkeypatch.setattr(constants, "MAX_FILE_LINES", 3)
    answer = client.post(
        "/v1/files", headers=bearer(mine), files={"file": ("x.jsonl", b"{}\n" * 4)}, data={"purpose": "batch"}
    )
    assert answer.status_code == 400 and answer.json()["error"]["param"] == "file"
    assert "at most 3" in answer.json()["error"]["message"]
    assert not files_dir.exists() or not any(files_dir.iterdir())


def test_a_batch_of_bad_lines_only_fails_with_each_line_in_its_error_file(
    app_keys: tuple[TestClient, str, str, Path],
) -> None:
    client, mine, theirs, _ = app_keys
    # Given a file whose every line is refused
    lines = [
        "[1, 2]",
        json.dumps({"custom_id": "a", "method": "GET", "url": "/v1/embeddings", "body": {}}),
        json.dumps({"custom_id": "b", "method": "POST", "url": "/v1/embeddings", "body": {"input": "x"}}),
        json.dumps({"method": "POST", "url": "/v1/embeddings", "body": {"model": "m", "input": "x"}}),
        json.dumps({"custom_id": "c", "method": "POST", "url": "/v1/embeddings", "body": {"model": "m", "input": [1]}}),
    ]
    source = upload(client, mine, "\n".join(lines).encode())
    # When a batch is made of it
    answer = client.post(
        "/v1/batches",
        headers=bearer(mine),
        json={"input_file_id": source["id"], "endpoint": "/v1/embeddings", "completion_window": "24h"},
    )
    # Then it is validating at first, without a job
    assert answer.status_code == 200, answer.text
    created = answer.json()
    assert created["status"] == "validating" and created["model"] is None and created["in_progress_at"] is None
    # And then it has failed, naming each line
    batch = validated(lambda: client.get(f"/v1/batches/{created['id']}", headers=bearer(mine)).json())
    assert batch["status"] == "failed" and batch["failed_at"] is not None and batch["output_file_id"] is None
    assert batch["request_counts"] == {"total": 5, "completed": 0, "failed": 5}
    codes = ["invalid_json_line", "invalid_method", "missing_model", "missing_custom_id", "invalid_input"]
    assert [(e["line"], e["code"]) for e in batch["errors"]["data"]] == list(enumerate(codes, start=1))
    # And its error file holds one line per input line, in order
    content = client.get(f"/v1/files/{batch['error_file_id']}/content", headers=bearer(mine)).text
    errors = [json.loads(line) for line in content.splitlines()]
    assert [e["error"]["code"] for e in errors] == codes
    assert [e["custom_id"] for e in errors] == [None, "a", "b", None, "c"]
    # And another tenant can neither see it nor cancel it
    assert client.get(f"/v1/batches/{batch['id']}", headers=bearer(theirs)).status_code == 404
    assert client.post(f"/v1/batches/{batch['id']}/cancel", headers=bearer(theirs)).status_code == 404
    assert client.get("/v1/batches", headers=bearer(theirs)).json()["data"] == []
    listed = client.get("/v1/batches", headers=bearer(mine)).json()
    assert [b["id"] for b in listed["data"]] == [batch["id"]] and listed["has_more"] is False


def test_a_batch_past_its_window_expires_keeping_its_finished_lines(
    sqlite_settings: Settings, tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    # Given the app with a classification model, and the official client pointed at it
    model = {"source": str(tiny_models["cls-distilbert"]), "task": "classification"}
    settings = Settings.model_validate(
        {**sqlite_settings.model_dump(), "files_dir": tmp_path / "files", "models": {"cls": model}}
    )
    engine = make_engine(settings)
    sessions = make_sessionmaker(engine)
    with sessions.begin() as session:
        key, _ = create_key(session, "mine")
    with TestClient(create_app(settings)) as http:
        client = openai.OpenAI(base_url=f"{http.base_url}/v1", api_key=key, http_client=http, max_retries=0)
        # And a batch of five requests, a bad line among them, of which the 1st and 4th requests finished
        lines = [
            {"custom_id": f"r{i}", "method": "POST", "url": "/v1/classifications", "body": {"model": "cls", "input": t}}
            for i, t in enumerate(["good", "bad", "fine", "awful", "okay"])
        ]
        data = "".join(json.dumps(line) + "\n" for line in lines[:2]) + "{not json\n"
        data += "".join(json.dumps(line) + "\n" for line in lines[2:])
        source = client.files.create(file=("in.jsonl", data.encode()), purpose="batch")
        batch = client.batches.create(input_file_id=source.id, endpoint="/v1/classifications", completion_window="1h")
        assert batch.status == "validating"
        batch = validated_batch(client, batch.id)
        assert batch.status == "in_progress" and batch.in_progress_at is not None
        with sessions.begin() as session:
            job = session.scalars(select(Job).where(Job.meta["openai_batch"].as_string() == batch.id)).one()
            assert job.deadline_at is not None
            labels = {0: [{"label": "POSITIVE", "score": 0.75}], 3: [{"label": "NEGATIVE", "score": 0.5}]}
            for index, result in labels.items():
                put_result(session, job.id, index, state=ItemState.SUCCEEDED, result=result, finished_at=utcnow())
            session.execute(update(Job).where(Job.id == job.id).values(succeeded=len(labels)))
            # When its window has passed and the dispatcher runs a round
            session.execute(update(Job).where(Job.id == job.id).values(deadline_at=utcnow() - dt.timedelta(minutes=1)))
        done = dispatch_round(settings, sessions, create_celery(settings), FairShare())
        assert done.expired == [job.id]
        # Then the client sees the batch expired, with OpenAI's counts
        expired = client.batches.retrieve(batch.id)
        assert expired.status == "expired" and expired.expired_at is not None and expired.completed_at is None
        assert expired.request_counts is not None
        assert (expired.request_counts.total, expired.request_counts.completed, expired.request_counts.failed) == (
            6,
            2,
            4,
        )
        # And the output file holds exactly the finished lines, in input order, with their results
        assert expired.output_file_id is not None and expired.error_file_id is not None
        out = [json.loads(line) for line in client.files.content(expired.output_file_id).text.splitlines()]
        assert [(o["custom_id"], o["response"]["body"]["data"][0]["labels"]) for o in out] == [
            ("r0", labels[0]),
            ("r3", labels[3]),
        ]
        # And the error file holds the others, in input order: the bad line, then the unrun ones batch_expired
        errors = [json.loads(line) for line in client.files.content(expired.error_file_id).text.splitlines()]
        assert [(e["custom_id"], e["error"]["code"]) for e in errors] == [
            ("r1", "batch_expired"),
            (None, "invalid_json_line"),
            ("r2", "batch_expired"),
            ("r4", "batch_expired"),
        ]
    engine.dispose()
