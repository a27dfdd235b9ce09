"""A batch of the OpenAI-compatible API is validated in the background (`server.openai.validation`), durably: created
``validating``; a batch whose validator died is taken over (by a server's sweep at its start, or by the next read
of it); a validator that lost its lease stores no job, and of two that race one stores the job; a cancel while
validating ends the batch ``cancelled`` without a job; an error of the batch as a whole fails it. On SQLite and on
PostgreSQL (the app in this process, no worker)."""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from inferq.db import make_engine, make_sessionmaker
from inferq.schema import Job, OpenAIBatch, as_utc, utcnow
from inferq.settings import Settings
from inferq.store import openai as stored
from producer.client import Client
from server.app import create_app
from server.openai import files
from server.openai.validation import LeaseLost, ValidationStopped, validate
from tests.server.conftest import OpenAISetup, bearer, lines, stored_file
from tests.support.records import wait_for

#: Seconds a test waits for a batch's validation before it gives up (a guard against hanging, not a measure).
WAIT_SECONDS = 120


def validating_batch(setup: OpenAISetup, file_id: str, *, owner: str, lease_until: dt.datetime) -> str:
    """A batch stored as ``POST /v1/batches`` stores it, validating, leased by ``owner`` until ``lease_until``."""
    batch_id = files.new_id("batch_")
    with setup.sessions.begin() as session:
        row = OpenAIBatch(
            id=batch_id,
            tenant=setup.tenant,
            endpoint="/v1/classifications",
            input_file_id=file_id,
            completion_window="24h",
            total_lines=3,
            bad_lines=0,
            one_item_per_line=True,
            lease_owner=owner,
            lease_until=lease_until,
        )
        stored.add_batch(session, row)
    return batch_id


def row_of(setup: OpenAISetup, batch_id: str) -> OpenAIBatch:
    with setup.sessions() as session:
        row = session.get(OpenAIBatch, batch_id)
        assert row is not None
        session.expunge(row)
        return row


def jobs_of(setup: OpenAISetup, batch_id: str) -> int:
    with setup.sessions() as session:
        return int(
            session.scalar(
                select(func.count()).select_from(Job).where(Job.meta["openai_batch"].as_string() == batch_id)
            )
            or 0
        )


def until(check: Callable[[], Any]) -> Any:
    """``check()`` called again until it is true; its value."""
    return wait_for(check, WAIT_SECONDS, "the batch's validation")


def read(http: TestClient, setup: OpenAISetup, batch_id: str) -> dict[str, Any]:
    answer = http.get(f"/v1/batches/{batch_id}", headers=bearer(setup.key))
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


def test_a_batch_is_created_validating_then_gets_its_job(setup: OpenAISetup) -> None:
    with TestClient(create_app(setup.settings)) as http:
        # Given an uploaded file of three requests
        up = http.post(
            "/v1/files",
            headers=bearer(setup.key),
            files={"file": ("in.jsonl", lines(), "application/jsonl")},
            data={"purpose": "batch"},
        )
        assert up.status_code == 200, up.text
        # When a batch is made of it
        made = http.post(
            "/v1/batches",
            headers=bearer(setup.key),
            json={"input_file_id": up.json()["id"], "endpoint": "/v1/classifications"},
        )
        # Then the answer is validating, without a job
        assert made.status_code == 200, made.text
        created = made.json()
        assert created["status"] == "validating" and created["in_progress_at"] is None and created["model"] is None
        # And the batch then is in progress, with one job of its three lines
        batch = until(lambda: (b := read(http, setup, created["id"]))["status"] != "validating" and b)
        assert batch["status"] == "in_progress" and batch["model"] == "cls" and batch["in_progress_at"] is not None
        assert batch["request_counts"]["total"] == 3 and jobs_of(setup, created["id"]) == 1
        row = row_of(setup, created["id"])
        assert row.validated_at is not None and row.lease_owner is None and row.lease_until is None


def test_a_batch_whose_validator_died_is_taken_over(setup: OpenAISetup) -> None:
    # Given a batch left validating by a server that died: its lease ended a minute ago
    file_id = stored_file(setup, lines())
    ended = utcnow() - dt.timedelta(minutes=1)
    swept = validating_batch(setup, file_id, owner="gone", lease_until=ended)
    with TestClient(create_app(setup.settings)) as http:
        # When a server starts, its sweep takes it over (nobody reads it) and gets its job made
        until(lambda: row_of(setup, swept).validated_at is not None)
        assert jobs_of(setup, swept) == 1 and read(http, setup, swept)["status"] == "in_progress"
        # And a batch left so while the server runs is taken over by the next read of it
        read_one = validating_batch(setup, file_id, owner="gone", lease_until=ended)
        assert read(http, setup, read_one)["status"] == "validating"
        batch = until(lambda: (b := read(http, setup, read_one))["status"] != "validating" and b)
        assert batch["status"] == "in_progress" and jobs_of(setup, read_one) == 1
    # And a batch whose lease holds is not taken: its validator lives
    held = validating_batch(setup, file_id, owner="alive", lease_until=utcnow() + dt.timedelta(minutes=5))
    with TestClient(create_app(setup.settings)) as http:
        assert read(http, setup, held)["status"] == "validating"
    assert row_of(setup, held).lease_owner == "alive" and jobs_of(setup, held) == 0


def test_a_validator_that_lost_its_lease_stores_nothing(setup: OpenAISetup) -> None:
    # Given a batch leased by process b
    batch_id = validating_batch(
        setup, stored_file(setup, lines()), owner="b", lease_until=utcnow() + dt.timedelta(minutes=5)
    )
    with Client(setup.settings) as client:
        # When process a, whose lease was taken over, validates it
        with pytest.raises(LeaseLost):
            validate(client, batch_id, "a")
        # Then it stores no job, and leaves no plan
        assert jobs_of(setup, batch_id) == 0 and row_of(setup, batch_id).validated_at is None
        assert not list(setup.settings.files_dir.glob(f".{batch_id}*"))
        # And b, validating it, makes its one job; validating it again makes none
        validate(client, batch_id, "b")
        with pytest.raises(LeaseLost):
            validate(client, batch_id, "b")
    assert jobs_of(setup, batch_id) == 1 and row_of(setup, batch_id).job_id is not None


@pytest.mark.services
def test_of_two_validators_racing_one_stores_the_job(
    own_postgres: str, redis_url: str, queue_name: str, tmp_path: Path, tiny_models: dict[str, Path]
) -> None:
    # Given batches on PostgreSQL, each with two processes acting as its lease's holder (one of them was taken over
    # without knowing yet)
    model = {"cls": {"source": str(tiny_models["cls-distilbert"]), "task": "classification"}}
    settings = Settings(
        database_url=own_postgres,
        broker_url=redis_url,
        default_queue=queue_name,
        files_dir=tmp_path / "files",
        models=model,
    )
    engine = make_engine(settings)
    setup = OpenAISetup(settings, make_sessionmaker(engine), "")
    file_id = stored_file(setup, lines())

    def run(batch_id: str) -> str:
        with Client(settings) as client:
            try:
                validate(client, batch_id, "b")
            except LeaseLost:
                return "lost"
            return "ended"

    for _ in range(3):
        batch_id = validating_batch(setup, file_id, owner="b", lease_until=utcnow() + dt.timedelta(minutes=5))
        # When both validate it at once
        with ThreadPoolExecutor(2) as pool:
            outcomes = sorted(pool.map(run, [batch_id, batch_id]))
        # Then one of them made its job, the other stored nothing
        assert outcomes == ["ended", "lost"]
        assert jobs_of(setup, batch_id) == 1 and row_of(setup, batch_id).job_id is not None
    engine.dispose()


def test_a_cancel_while_validating_ends_the_batch_cancelled_without_a_job(setup: OpenAISetup) -> None:
    # Given a batch being validated by another process
    batch_id = validating_batch(
        setup, stored_file(setup, lines()), owner="elsewhere", lease_until=utcnow() + dt.timedelta(minutes=5)
    )
    with TestClient(create_app(setup.settings)) as http:
        # When it is cancelled
        answer = http.post(f"/v1/batches/{batch_id}/cancel", headers=bearer(setup.key))
        # Then it is cancelled at once, without a job or files
        assert answer.status_code == 200, answer.text
        batch = answer.json()
        assert batch["status"] == "cancelled" and batch["cancelled_at"] is not None and batch["model"] is None
        assert batch["output_file_id"] is None and batch["error_file_id"] is None
    # And its validator, when it comes to end its validation, stores no job
    with Client(setup.settings) as client, pytest.raises(LeaseLost):
        validate(client, batch_id, "elsewhere")
    assert jobs_of(setup, batch_id) == 0
    # And leaves no plan behind (nothing would ever read it)
    assert not [p.name for p in setup.settings.files_dir.iterdir() if p.name.startswith(f".{batch_id}")]


def test_a_batch_of_an_unknown_model_fails_with_the_error(setup: OpenAISetup) -> None:
    with TestClient(create_app(setup.settings)) as http:
        # Given a file of requests to a model that is not registered
        file_id = stored_file(setup, lines("unregistered"))
        # When a batch is made of it
        made = http.post(
            "/v1/batches", headers=bearer(setup.key), json={"input_file_id": file_id, "endpoint": "/v1/classifications"}
        ).json()
        assert made["status"] == "validating"
        # Then it fails, the model named in its errors, without a job or files
        batch = until(lambda: (b := read(http, setup, made["id"]))["status"] != "validating" and b)
        assert batch["status"] == "failed" and batch["failed_at"] is not None
        assert [e["code"] for e in batch["errors"]["data"]] == ["unknown_model"]
        assert batch["output_file_id"] is None and batch["error_file_id"] is None and jobs_of(setup, made["id"]) == 0


def test_a_validator_of_a_stopping_server_gives_its_lease_up(setup: OpenAISetup) -> None:
    # Given a batch leased by this process, whose server is stopping
    batch_id = validating_batch(
        setup, stored_file(setup, lines()), owner="me", lease_until=utcnow() + dt.timedelta(minutes=5)
    )
    stop = threading.Event()
    stop.set()
    # When it would validate the batch
    with Client(setup.settings) as client, pytest.raises(ValidationStopped):
        validate(client, batch_id, "me", stop)
    # Then its lease has ended (the next sweep takes it over), and no job was made
    row = row_of(setup, batch_id)
    assert row.validated_at is None and row.lease_until is not None and as_utc(row.lease_until) <= utcnow()
    assert jobs_of(setup, batch_id) == 0


def test_a_batch_whose_input_bytes_are_gone_fails(setup: OpenAISetup) -> None:
    # Given a batch whose input file's bytes are missing from the files directory
    file_id = stored_file(setup, lines())
    (setup.settings.files_dir / file_id).unlink()
    batch_id = validating_batch(setup, file_id, owner="me", lease_until=utcnow() + dt.timedelta(minutes=5))
    # When it is validated
    with Client(setup.settings) as client:
        validate(client, batch_id, "me")
    # Then it has failed, saying so, without a job
    row = row_of(setup, batch_id)
    assert row.validated_at is not None and row.finalized_at is not None and row.job_id is None
    assert row.errors is not None and [e["code"] for e in row.errors] == ["file_not_found"]
