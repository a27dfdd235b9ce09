"""Webhooks on real components: a real ``inferq worker``, Redis, PostgreSQL, and a real HTTP receiver on a loopback
port. A job's end reaches the receiver exactly as recorded, signed; a receiver that fails at first gets the same
bytes later, every attempt on record; cancelled and failed jobs send their events; and a worker killed between a
job's end and the delivery loses nothing: the next worker's reconciler sends it. A batch of the OpenAI-compatible
API, made with inferq's ``webhook_url``, delivers its job's event the same way."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import io
import json
import os
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from sqlalchemy import Engine, select, update

from inferq import constants
from inferq.db import make_engine, make_sessionmaker
from inferq.keys import create_key
from inferq.schema import Tenant, WebhookDelivery, utcnow
from inferq.settings import Settings
from inferq.store.outbox import delivery_history
from producer.client import Client, JobOptions
from server.process import running_server
from tests.support.brokers import private_redis, ready_messages
from tests.support.jobs import sentences, settings_of, worker_env
from tests.support.records import wait_for
from tests.support.webhook_receiver import Received, Receiver
from tests.support.worker_process import worker_log
from worker.process import running_worker

pytestmark = pytest.mark.services

#: Settings of these tests' workers: loopback receivers allowed, a short timeout and retry schedule, a reconciler
#: every second that sends deliveries due for two seconds.
WEBHOOK_ENV = {
    "INFERQ_WEBHOOK_ALLOW_PRIVATE": "true",
    "INFERQ_WEBHOOK_TIMEOUT": "1",
    "INFERQ_WEBHOOK_RETRY_DELAYS": "0,0.5,0.5,0.5",
    "INFERQ_RECOVER_INTERVAL": "1",
    "INFERQ_RECOVER_OLDER_THAN": "2",
    "OMP_NUM_THREADS": "1",
}


@pytest.fixture(scope="module")
def broken_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory that holds no model: a job on it fails as a whole."""
    return tmp_path_factory.mktemp("not-a-model")


@pytest.fixture(scope="module")
def worker_models(tiny_models: dict[str, Path], broken_model: Path) -> dict[str, dict[str, Any]]:
    tiny = str(tiny_models["cls-distilbert"])
    return {
        "cls": {"source": tiny, "task": "classification"},
        # Routed to a queue no worker consumes: its jobs wait, to be cancelled.
        "parked": {"source": tiny, "task": "classification", "queue": f"parked-{uuid.uuid4().hex[:8]}"},
        "broken": {"source": str(broken_model), "task": "classification"},
    }


@pytest.fixture(scope="module")
def worker_extra_env() -> dict[str, str]:
    return dict(WEBHOOK_ENV)


@pytest.fixture
def hooks_client(worker_env: dict[str, str]) -> Iterator[Client]:
    settings = Settings(
        database_url=worker_env["INFERQ_DATABASE_URL"],
        broker_url=worker_env["INFERQ_BROKER_URL"],
        models=json.loads(worker_env["INFERQ_MODELS"]),
        default_queue=worker_env["INFERQ_DEFAULT_QUEUE"],
        webhook_allow_private=True,
    )
    with Client(settings) as c:
        yield c


def signature(secret: str, headers: dict[str, str], body: bytes) -> str:
    """The Standard Webhooks signature of a received request, computed here from the spec's text."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def assert_signed(engine: Engine, tenant: str, call: Received) -> None:
    with make_sessionmaker(engine)() as session:
        secret = session.scalar(select(Tenant.webhook_secret).where(Tenant.name == tenant))
    assert secret is not None
    assert call.headers["webhook-signature"] == signature(secret, call.headers, call.body)
    assert abs(int(call.headers["webhook-timestamp"]) - call.at) < 5


def history(client: Client, job_id: str) -> list[dict[str, Any]]:
    with client.reader() as session:
        return delivery_history(session, job_id)


def settled(client: Client, job_id: str, attempts: int) -> list[dict[str, Any]]:
    """The job's deliveries once the first has left ``pending`` with ``attempts`` attempts recorded."""

    def done() -> list[dict[str, Any]] | None:
        h = history(client, job_id)
        return h if h and h[0]["state"] != "pending" and h[0]["attempts"] >= attempts else None

    return wait_for(done, 120, f"job {job_id}'s webhook to settle")


def stored_payload(client: Client, delivery_id: str) -> bytes:
    with client.reader() as session:
        return session.get_one(WebhookDelivery, delivery_id).payload.encode()


def test_a_finished_job_posts_its_recorded_event_signed(hooks_client: Client) -> None:
    with Receiver() as receiver:
        # Given a job with a webhook and metadata
        options = JobOptions(metadata={"run": "nightly"}, webhook_url=receiver.url)
        job_id = hooks_client.submit("classification", "cls", sentences(5), options=options).job_id

        # When it ends
        status = hooks_client.wait(job_id, timeout=300)
        [call] = receiver.wait_for(1, 120)
        [entry] = settled(hooks_client, job_id, 1)

    # Then the receiver got the recorded body, byte for byte, with the delivery's id and a valid signature
    assert status.state.value == "succeeded"
    assert call.body == stored_payload(hooks_client, entry["id"])
    assert call.headers["webhook-id"] == entry["id"] and call.headers["content-type"] == "application/json"
    assert_signed(hooks_client.sessions.kw["bind"], "default", call)
    event = json.loads(call.body)
    assert event["type"] == "job.succeeded"
    data = event["data"]
    assert (data["id"], data["state"], data["total"], data["succeeded"], data["failed"]) == (
        job_id,
        "succeeded",
        5,
        5,
        0,
    )
    assert (data["task"], data["model"], data["metadata"], data["error"]) == (
        "classification",
        "cls",
        {"run": "nightly"},
        None,
    )
    assert data["finished_at"] == status.finished_at.isoformat()  # type: ignore[union-attr]
    # And the delivery is on record, delivered at the first attempt
    assert (entry["state"], entry["attempts"], entry["event"]) == ("delivered", 1, "job.succeeded")
    assert [(a["number"], a["status_code"], a["error"]) for a in entry["attempt_log"]] == [(1, 200, None)]


def test_a_receiver_that_fails_at_first_gets_the_same_bytes_later(hooks_client: Client) -> None:
    # Given a receiver that answers 500, then does not answer within the timeout, then takes the event
    with Receiver([500, "hang"], hang_seconds=3) as receiver:
        job_id = hooks_client.submit(
            "classification", "cls", sentences(3), options=JobOptions(webhook_url=receiver.url)
        ).job_id

        # When the job ends
        hooks_client.wait(job_id, timeout=300)
        calls = receiver.wait_for(3, 120)
        [entry] = settled(hooks_client, job_id, 3)

    # Then the third call delivered it: every call carried the recorded bytes and the same id, each signed
    assert len(receiver.received) == 3
    body = stored_payload(hooks_client, entry["id"])
    for call in calls:
        assert call.body == body and call.headers["webhook-id"] == entry["id"]
        assert_signed(hooks_client.sessions.kw["bind"], "default", call)
    # And every attempt is on record, with what went wrong
    assert (entry["state"], entry["attempts"]) == ("delivered", 3)
    log = entry["attempt_log"]
    assert [(a["number"], a["status_code"]) for a in log] == [(1, 500), (2, None), (3, 200)]
    assert log[0]["error"] == "HTTP 500" and "Timeout" in log[1]["error"] and log[2]["error"] is None
    assert log[1]["duration"] >= 1


def test_a_cancelled_job_sends_job_cancelled(hooks_client: Client) -> None:
    with Receiver() as receiver:
        # Given a job waiting on a queue no worker consumes
        job_id = hooks_client.submit(
            "classification", "parked", sentences(3), options=JobOptions(webhook_url=receiver.url)
        ).job_id

        # When it is cancelled
        hooks_client.cancel(job_id)
        [call] = receiver.wait_for(1, 120)
        [entry] = settled(hooks_client, job_id, 1)

    # Then a worker delivered job.cancelled
    event = json.loads(call.body)
    assert (event["type"], event["data"]["state"], event["data"]["succeeded"]) == ("job.cancelled", "cancelled", 0)
    assert (entry["event"], entry["state"]) == ("job.cancelled", "delivered")
    assert call.body == stored_payload(hooks_client, entry["id"])


def test_a_job_that_fails_as_a_whole_sends_job_failed(hooks_client: Client) -> None:
    with Receiver() as receiver:
        job_id = hooks_client.submit(
            "classification", "broken", sentences(2), options=JobOptions(webhook_url=receiver.url)
        ).job_id
        status = hooks_client.wait(job_id, timeout=300)
        [call] = receiver.wait_for(1, 120)

    assert status.state.value == "failed"
    event = json.loads(call.body)
    assert (event["type"], event["data"]["state"], event["data"]["failed"]) == ("job.failed", "failed", 2)
    assert event["data"]["error"]["code"] == "model_load_error"


def test_a_worker_killed_before_delivering_loses_no_event(
    tmp_path: Path, tiny_models: dict[str, Path], own_postgres: str, queue_name: str
) -> None:
    registry = {"cls": {"source": str(tiny_models["cls-distilbert"]), "task": "classification"}}
    # Given a receiver that is down, and workers whose second attempt comes long after the first: no message is
    # sent for it (it is past the countdown limit); a reconciler sends it once it is due
    receiver = Receiver()
    with private_redis(tmp_path) as redis:
        env = {
            **worker_env(own_postgres, redis.url, queue_name, registry),
            **WEBHOOK_ENV,
            "INFERQ_WEBHOOK_RETRY_DELAYS": f"0,{constants.WEBHOOK_COUNTDOWN_MAX_SECONDS + 100}",
            # Long enough that a reconciler never re-sends the first attempt's delivery while the webhook sender (a
            # process of its own, slow on a busy machine) is about to take it: the only message is the job end's.
            "INFERQ_RECOVER_OLDER_THAN": "10",
        }
        with Client(settings_of(env).model_copy(update={"webhook_allow_private": True})) as client:
            with running_worker(env, tmp_path / "first.log") as first:
                job_id = client.submit(
                    "classification", "cls", sentences(3), options=JobOptions(webhook_url=receiver.url)
                ).job_id
                client.wait(job_id, timeout=300)
                # When the job has ended and its first attempt failed (nobody listens), the worker is killed
                wait_for(lambda: (h := history(client, job_id)) and h[0]["attempts"] == 1, 120, "a first attempt")
                os.killpg(first.pid, signal.SIGKILL)
                first.wait(timeout=30)
            [before] = history(client, job_id)
            assert (before["state"], before["attempts"]) == ("pending", 1)
            assert "Connect" in before["attempt_log"][0]["error"]
            assert ready_messages(redis.url, f"{queue_name}.webhooks") == 0

            # And time passes: the next attempt is due (and has been for longer than INFERQ_RECOVER_OLDER_THAN)
            with client.sessions.begin() as session:
                session.execute(
                    update(WebhookDelivery)
                    .where(WebhookDelivery.id == before["id"])
                    .values(next_attempt_at=utcnow() - dt.timedelta(seconds=30))
                )
            # And the receiver comes up, and a new worker starts
            with receiver, running_worker(env, tmp_path / "second.log"):
                [call] = receiver.wait_for(1, 120)
                [entry] = settled(client, job_id, 2)
                second_log = worker_log(tmp_path / "second.log")

    # Then the new worker's reconciler sent it, and the receiver got the recorded event
    assert f"re-enqueued 1 webhook deliver(ies) that were due: {before['id']}" in second_log, second_log[-3000:]
    assert (entry["state"], entry["attempts"]) == ("delivered", 2)
    assert [a["status_code"] for a in entry["attempt_log"]] == [None, 200]
    assert call.body == stored_payload(client, entry["id"])
    assert json.loads(call.body)["type"] == "job.succeeded"
    assert_signed(client.sessions.kw["bind"], "default", call)


def test_a_trickling_receiver_delays_no_other_tenants_job(hooks_client: Client) -> None:
    # Given a receiver that answers at once and then sends its body one byte every 0.3 s, for a minute: every read
    # is quick, the answer never ends
    with Receiver(["trickle"] * 4, hang_seconds=60, trickle_seconds=0.3) as trickler:
        slow_id = hooks_client.submit(
            "classification",
            "cls",
            sentences(2),
            options=JobOptions(tenant="slow-hooks", webhook_url=trickler.url),
        ).job_id
        hooks_client.wait(slow_id, timeout=300)
        trickler.wait_for(1, 120)

        # When another tenant submits a small job while deliveries to the trickler hang
        started = time.monotonic()
        other_id = hooks_client.submit(
            "classification", "cls", sentences(5), options=JobOptions(tenant="punctual")
        ).job_id
        status = hooks_client.wait(other_id, timeout=30)
        waited = time.monotonic() - started

        # And the trickler's delivery runs its course
        [entry] = settled(hooks_client, slow_id, 4)

    # Then the other job finished on time (a worker on one pool process: the delivery did not hold it)
    assert status.state.value == "succeeded" and waited < 30
    # And each attempt at the trickler was cut at its deadline (1 s), recorded as failed and retried per the
    # schedule (four attempts), and the delivery failed after the last
    assert (entry["state"], entry["attempts"]) == ("failed", 4)
    for attempt in entry["attempt_log"]:
        assert attempt["status_code"] is None and attempt["error"].startswith("Timeout"), attempt
        assert 1 <= attempt["duration"] < 5, attempt
    assert len(trickler.received) == 4


def test_a_batch_of_the_openai_api_posts_its_jobs_event_signed(worker_env: dict[str, str], tmp_path: Path) -> None:
    # Given the HTTP API on the worker's settings (loopback receivers allowed), a key of a tenant of its own
    env = {**worker_env, "INFERQ_FILES_DIR": str(tmp_path / "files")}
    tenant = f"batch-hooks-{uuid.uuid4().hex[:8]}"
    engine = make_engine(settings_of(env))
    with make_sessionmaker(engine).begin() as session:
        key, _ = create_key(session, tenant)
    with running_server(env, tmp_path / "server.log", ready_timeout=180) as (url, _), Receiver() as receiver:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=120)
        # And a batch of three requests whose webhook_url (inferq's own, extra_body= in the official client) is the
        # receiver's
        requests = [
            {
                "custom_id": s["id"],
                "method": "POST",
                "url": "/v1/classifications",
                "body": {"model": "cls", "input": s["text"]},
            }
            for s in sentences(3)
        ]
        data = "".join(json.dumps(r) + "\n" for r in requests).encode()
        file_id = client.files.create(file=("in.jsonl", io.BytesIO(data)), purpose="batch").id
        batch = client.batches.create(
            input_file_id=file_id,
            endpoint="/v1/classifications",
            completion_window="24h",
            metadata={"run": "hooked"},
            extra_body={"webhook_url": receiver.url},
        )
        assert batch.status == "validating"

        # When it runs to its end, polled as the official client polls
        def ended() -> Any:
            got = client.batches.retrieve(batch.id)
            return got if got.status in ("completed", "failed", "cancelled", "expired") else None

        done = wait_for(ended, 300, f"batch {batch.id} to end")
        [call] = receiver.wait_for(1, 120)

    # Then the receiver got its job's event, signed with the tenant's secret, naming the batch
    assert done.status == "completed" and done.request_counts is not None and done.request_counts.completed == 3
    assert_signed(engine, tenant, call)
    event = json.loads(call.body)
    assert event["type"] == "job.succeeded"
    data_ = event["data"]
    assert (data_["state"], data_["total"], data_["succeeded"], data_["task"], data_["model"]) == (
        "succeeded",
        3,
        3,
        "classification",
        "cls",
    )
    assert data_["metadata"] == {"run": "hooked", "openai_batch": batch.id}
    engine.dispose()
