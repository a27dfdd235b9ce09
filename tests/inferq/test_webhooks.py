"""Webhooks, the parts that need no worker: Standard Webhooks signing (against the spec's published vector and an
implementation written here, independently), verification, the URL check, and the outbox on SQLite (one delivery
per job end, attempts, the retry schedule) with a real HTTP receiver on a loopback port."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from inferq.db import make_engine, make_sessionmaker
from inferq.errors import InvalidParameter, InvalidSignature, WebhookUrlRefused
from inferq.schema import Job, WebhookAttempt, WebhookDelivery, utcnow
from inferq.settings import Settings
from inferq.states import DeliveryState
from inferq.store.chunks import finish_jobs_if_complete
from inferq.store.outbox import delivery_history
from inferq.task_specs import TaskName
from inferq.tenants import ensure_tenant
from inferq.webhooks import (
    Sent,
    check_url,
    deliver,
    sign,
    signature_headers,
    verify,
)
from producer.client import Client, JobOptions, store_job
from producer.inputs import InputRecord
from tests.support.brokers import delete_queue, ready_messages
from tests.support.webhook_receiver import Receiver

#: The Standard Webhooks specification's published test vector.
SPEC_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SPEC_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
SPEC_TIMESTAMP = 1614265330
SPEC_BODY = '{"test": 2432232314}'
SPEC_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def reference_signature(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The spec's algorithm, written again here from its text: HMAC-SHA256 keyed with the base64-decoded part of
    ``whsec_…`` over ``id.timestamp.body``, base64, prefixed ``v1,``."""
    key = base64.b64decode(secret.split("_", 1)[1])
    mac = hmac.new(key, msg_id.encode() + b"." + str(timestamp).encode() + b"." + body, hashlib.sha256)
    return "v1," + base64.b64encode(mac.digest()).decode()


# -- signing --------------------------------------------------------------------------------------------------


def test_signing_reproduces_the_specifications_vector() -> None:
    assert sign(SPEC_SECRET, SPEC_ID, SPEC_TIMESTAMP, SPEC_BODY) == SPEC_SIGNATURE
    assert reference_signature(SPEC_SECRET, SPEC_ID, SPEC_TIMESTAMP, SPEC_BODY.encode()) == SPEC_SIGNATURE
    verify(SPEC_SECRET, {"webhook-id": SPEC_ID, "webhook-timestamp": str(SPEC_TIMESTAMP),
                         "webhook-signature": SPEC_SIGNATURE}, SPEC_BODY, now=SPEC_TIMESTAMP)  # fmt: skip


@hsettings(max_examples=50, deadline=None)
@given(
    key=st.binary(min_size=24, max_size=64),
    msg_id=st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=40),
    timestamp=st.integers(min_value=0, max_value=2**33),
    body=st.binary(max_size=300),
)
def test_signing_agrees_with_an_independent_implementation(
    key: bytes, msg_id: str, timestamp: int, body: bytes
) -> None:
    secret = "whsec_" + base64.b64encode(key).decode()
    headers = signature_headers(secret, msg_id, body, timestamp)
    assert headers == {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": reference_signature(secret, msg_id, timestamp, body),
    }
    verify(secret, headers, body, now=timestamp)


def test_verify_takes_any_header_case_and_one_good_signature_among_several() -> None:
    now = 1_700_000_000
    headers = signature_headers(SPEC_SECRET, "msg_1", b"{}", now)
    mixed = {
        "Webhook-Id": "msg_1",
        "WEBHOOK-TIMESTAMP": str(now),
        "webhook-signature": "v1,bm90LWl0 v2,whatever " + headers["webhook-signature"],
    }
    verify(SPEC_SECRET, mixed, b"{}", now=now)


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"body": b'{"a":2}'}, "no matching"),
        ({"secret": "whsec_" + base64.b64encode(b"k" * 32).decode()}, "no matching"),
        ({"webhook-id": "msg_2"}, "no matching"),
        ({"now": 1_700_000_000 + 301}, "away from now"),
        ({"now": 1_700_000_000 - 301}, "away from now"),
        ({"webhook-signature": None}, "missing"),
        ({"webhook-timestamp": "soon"}, "not a number"),
    ],
)
def test_verify_refuses_a_changed_body_key_or_id_a_stale_timestamp_and_missing_headers(
    change: dict[str, Any], why: str
) -> None:
    now = 1_700_000_000
    body = b'{"a":1}'
    headers: dict[str, str] = signature_headers(SPEC_SECRET, "msg_1", body, now)
    for name in ("webhook-id", "webhook-signature", "webhook-timestamp"):
        if name in change:
            if change[name] is None:
                del headers[name]
            else:
                headers[name] = change[name]
    with pytest.raises(InvalidSignature, match=why) as err:
        verify(change.get("secret", SPEC_SECRET), headers, change.get("body", body), now=change.get("now", now))
    assert err.value.code == "invalid_signature"


def test_verify_accepts_a_timestamp_within_the_tolerance() -> None:
    headers = signature_headers(SPEC_SECRET, "msg_1", b"x", 1_000)
    verify(SPEC_SECRET, headers, b"x", now=1_300)
    verify(SPEC_SECRET, headers, b"x", now=700)
    with pytest.raises(InvalidSignature):
        verify(SPEC_SECRET, headers, b"x", tolerance=10, now=1_011)


# -- URLs -------------------------------------------------------------------------------------------------------

STRICT = Settings(webhook_allow_private=False)
LENIENT = Settings(webhook_allow_private=True)


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/hook",
        "http://127.9.9.9:8080/hook",
        "http://[::1]/hook",
        "http://10.1.2.3/hook",
        "http://172.16.0.1/hook",
        "http://192.168.1.10/hook",
        "http://169.254.169.254/latest/meta-data/",  # cloud metadata: link-local
        "http://[fe80::1]/hook",
        "http://0.0.0.0/hook",
        "http://[::]/hook",
        "http://224.0.0.1/hook",
        "http://[ff02::1]/hook",
        "http://240.0.0.1/hook",
        "http://255.255.255.255/hook",
        "http://100.64.0.1/hook",  # shared address space (carrier-grade NAT)
        "http://[::ffff:127.0.0.1]/hook",  # IPv4-mapped loopback
        "http://[::ffff:10.0.0.1]/hook",
        "http://[fc00::1]/hook",
        "http://localhost:8000/hook",  # a name resolving to loopback
    ],
)
def test_non_public_addresses_are_refused_unless_allowed(url: str) -> None:
    with pytest.raises(WebhookUrlRefused) as err:
        check_url(url, STRICT)
    assert err.value.code == "webhook_url_refused"
    assert err.value.details["field"] == "webhook_url"
    assert isinstance(err.value, InvalidParameter)
    assert check_url(url, LENIENT) == url


@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.com/x",
        "file:///etc/passwd",
        "gopher://8.8.8.8/",
        "http:///nohost",
        "8.8.8.8/hook",
        "",
        "http://[::1",
    ],
)
def test_only_http_and_https_urls_with_a_host_are_taken(url: str) -> None:
    for settings in (STRICT, LENIENT):
        with pytest.raises(WebhookUrlRefused):
            check_url(url, settings)


def test_public_addresses_pass() -> None:
    for url in ("https://8.8.8.8/hook", "http://1.1.1.1:8080/x?y=1", "https://[2606:4700:4700::1111]/h"):
        assert check_url(url, STRICT) == url


def test_every_address_a_name_resolves_to_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a name whose resolver answer mixes a public and a private address (as a rebinding attacker would)
    answers = {
        "mixed.example": ["93.184.216.34", "10.0.0.7"],
        "public.example": ["93.184.216.34", "2606:2800:220:1::1"],
        "metadata.example": ["fe80::1%eth0"],
    }

    def fake_getaddrinfo(host: str, port: int, *args: Any, **kwargs: Any) -> list[Any]:
        if host not in answers:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [
            (socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port))
            for a in answers[host]
        ]

    monkeypatch.setattr(socket, "getaddrinfo", fake_getaddrinfo)
    # Then one private address among them is enough to refuse it
    with pytest.raises(WebhookUrlRefused, match=r"10\.0\.0\.7"):
        check_url("https://mixed.example/hook", STRICT)
    with pytest.raises(WebhookUrlRefused, match="fe80::1"):
        check_url("https://metadata.example/hook", STRICT)
    assert check_url("https://public.example/hook", STRICT) == "https://public.example/hook"
    # And a name that does not resolve is refused too
    with pytest.raises(WebhookUrlRefused, match="does not resolve"):
        check_url("https://nowhere.example/hook", STRICT)


def test_submit_refuses_a_private_webhook_before_storing_anything(sqlite_settings: Settings) -> None:
    with Client(sqlite_settings) as client:
        with pytest.raises(WebhookUrlRefused):
            client.submit(
                "classification", "sst2", [{"text": "hi"}], options=JobOptions(webhook_url="http://127.0.0.1:9/h")
            )
        with client.sessions() as session:
            assert session.scalar(select(func.count()).select_from(Job)) == 0


# -- the outbox on SQLite ---------------------------------------------------------------------------------------


@pytest.fixture
def sessions(sqlite_settings: Settings) -> sessionmaker[Session]:
    return make_sessionmaker(make_engine(sqlite_settings))


def a_job(sessions: sessionmaker[Session], webhook_url: str | None, *, items: int = 2, tenant: str = "acme") -> str:
    job_id = uuid.uuid4().hex
    records = [InputRecord(line=i + 1, client_id=None, data={"text": f"t{i}"}) for i in range(items)]
    options = JobOptions(tenant=tenant, metadata={"batch": "nightly"}, webhook_url=webhook_url)
    with sessions.begin() as session:
        store_job(session, job_id, TaskName.CLASSIFICATION, "m", {"top_k": 1}, records, 10, "q", options=options)
    return job_id


def end_job(sessions: sessionmaker[Session], job_id: str, succeeded: int, failed: int) -> list[str]:
    """What a worker's write does when it stores a job's last items: count them, finish the job."""
    with sessions.begin() as session:
        session.execute(update(Job).where(Job.id == job_id).values(succeeded=succeeded, failed=failed))
        return finish_jobs_if_complete(session, [job_id], utcnow())


def test_a_job_end_records_one_delivery_with_the_event_body(sessions: sessionmaker[Session]) -> None:
    # Given a job with a webhook and one without
    job_id = a_job(sessions, "https://hooks.example/inferq")
    silent = a_job(sessions, None)

    # When both end, and the end is written a second time (a redelivered write)
    made = end_job(sessions, job_id, 1, 1) + end_job(sessions, silent, 2, 0)
    again = end_job(sessions, job_id, 1, 1)

    # Then exactly one delivery was recorded, for the job with the webhook
    assert again == []
    with sessions() as session:
        rows = session.scalars(select(WebhookDelivery)).all()
        job = session.get_one(Job, job_id)
    assert [r.id for r in rows] == made and len(made) == 1
    [row] = rows
    assert row.id.startswith("msg_") and (row.job_id, row.tenant, row.event) == (job_id, "acme", "job.succeeded")
    assert (row.state, row.attempts, row.url) == ("pending", 0, "https://hooks.example/inferq")
    body = json.loads(row.payload)
    assert body["type"] == "job.succeeded"
    assert body["data"] == {
        "id": job_id,
        "state": "succeeded",
        "task": "classification",
        "model": "m",
        "total": 2,
        "succeeded": 1,
        "failed": 1,
        "metadata": {"batch": "nightly"},
        "created_at": body["data"]["created_at"],
        "started_at": None,
        "finished_at": body["timestamp"],
        "error": None,
    }
    assert dt.datetime.fromisoformat(body["timestamp"]) == dt.datetime.fromisoformat(
        job.finished_at.isoformat() + ("" if job.finished_at.tzinfo else "+00:00")  # type: ignore[union-attr]
    )


def test_a_cancel_after_the_end_adds_no_second_delivery(
    sqlite_settings: Settings, sessions: sessionmaker[Session]
) -> None:
    job_id = a_job(sessions, "https://hooks.example/inferq")
    end_job(sessions, job_id, 2, 0)
    with Client(sqlite_settings) as client:
        client.cancel(job_id)
    with sessions() as session:
        assert session.scalars(select(WebhookDelivery.event)).all() == ["job.succeeded"]


def test_cancel_records_job_cancelled(sqlite_settings: Settings, sessions: sessionmaker[Session]) -> None:
    job_id = a_job(sessions, "https://hooks.example/inferq")
    with Client(sqlite_settings) as client:
        assert client.cancel(job_id).state.value == "cancelled"
        client.cancel(job_id)  # a second cancel changes nothing
    with sessions() as session:
        [row] = session.scalars(select(WebhookDelivery)).all()
    assert row.event == "job.cancelled" and json.loads(row.payload)["data"]["state"] == "cancelled"


def test_a_job_that_could_not_run_sends_job_failed(sessions: sessionmaker[Session]) -> None:
    job_id = a_job(sessions, "https://hooks.example/inferq")
    with sessions.begin() as session:
        session.execute(update(Job).where(Job.id == job_id).values(error_code="model_load_error", error="no model"))
    end_job(sessions, job_id, 0, 2)
    with sessions() as session:
        [row] = session.scalars(select(WebhookDelivery)).all()
    data = json.loads(row.payload)["data"]
    assert row.event == "job.failed"
    assert (data["state"], data["error"]) == ("failed", {"code": "model_load_error", "message": "no model"})


def fast(settings: Settings, **changes: Any) -> Settings:
    """Retries at once, a local receiver allowed, and an attempt's deadline of 5 s: a receiver of these tests answers
    at once unless it is told to hang, and a shorter deadline expired on a loaded CI machine before its answer came (a
    test that counts attempts then saw one fewer). A test of a hang sets its own, shorter than the hang."""
    return settings.model_copy(
        update={"webhook_allow_private": True, "webhook_timeout": 5.0, "webhook_retry_delays": [0, 0, 0], **changes}
    )


def test_a_delivery_is_posted_signed_and_retried_until_the_receiver_takes_it(
    sqlite_settings: Settings, sessions: sessionmaker[Session]
) -> None:
    settings = fast(sqlite_settings, webhook_timeout=0.5)
    # Given a receiver that answers 500, then hangs past the timeout, then 200
    with Receiver([500, "hang"], hang_seconds=2) as receiver:
        job_id = a_job(sessions, receiver.url)
        [delivery_id] = end_job(sessions, job_id, 2, 0)
        with sessions.begin() as session:
            secret = ensure_tenant(session, "acme").webhook_secret
            payload = session.get_one(WebhookDelivery, delivery_id).payload

        # When the delivery is sent three times
        outcomes = [deliver(settings, sessions, delivery_id).outcome for _ in range(3)]
        # and once more after it was delivered
        after = deliver(settings, sessions, delivery_id).outcome

    # Then the first two failed and were retried, the third delivered, and nothing was sent after that
    assert outcomes == [Sent.RETRYING, Sent.RETRYING, Sent.DELIVERED] and after is Sent.SKIPPED
    calls = receiver.received
    assert len(calls) == 3
    # And every call carried the same bytes and id, each correctly signed
    for call in calls:
        assert call.body == payload.encode() and call.path == "/hooks/inferq"
        assert call.headers["webhook-id"] == delivery_id
        assert call.headers["content-type"] == "application/json"
        signed = reference_signature(secret, delivery_id, int(call.headers["webhook-timestamp"]), call.body)
        assert call.headers["webhook-signature"] == signed
    # And every attempt is on record
    with sessions() as session:
        history = delivery_history(session, job_id)
    [entry] = history
    assert (entry["id"], entry["state"], entry["attempts"], entry["event"]) == (
        delivery_id,
        "delivered",
        3,
        "job.succeeded",
    )
    assert entry["delivered_at"] is not None and entry["next_attempt_at"] is None and entry["url"] == receiver.url
    log = entry["attempt_log"]
    assert [(a["number"], a["status_code"]) for a in log] == [(1, 500), (2, None), (3, 200)]
    assert log[0]["error"] == "HTTP 500" and "Timeout" in log[1]["error"] and log[2]["error"] is None
    assert log[1]["duration"] >= 0.5 and all(a["at"] for a in log)
    assert json.dumps(history)  # plain JSON values


def test_a_delivery_fails_after_the_last_attempt_of_the_schedule(
    sqlite_settings: Settings, sessions: sessionmaker[Session]
) -> None:
    settings = fast(sqlite_settings, webhook_retry_delays=[0, 0])
    with Receiver([503, 503, 503]) as receiver:
        job_id = a_job(sessions, receiver.url)
        [delivery_id] = end_job(sessions, job_id, 2, 0)
        outcomes = [deliver(settings, sessions, delivery_id).outcome for _ in range(3)]
    assert outcomes == [Sent.RETRYING, Sent.FAILED, Sent.SKIPPED]
    assert len(receiver.received) == 2
    with sessions() as session:
        [entry] = delivery_history(session, job_id)
    assert (entry["state"], entry["attempts"], entry["next_attempt_at"]) == ("failed", 2, None)


def test_the_next_attempt_waits_for_its_delay(sqlite_settings: Settings, sessions: sessionmaker[Session]) -> None:
    settings = fast(sqlite_settings, webhook_retry_delays=[0, 3600])
    with Receiver([500]) as receiver:
        job_id = a_job(sessions, receiver.url)
        [delivery_id] = end_job(sessions, job_id, 2, 0)
        first = deliver(settings, sessions, delivery_id)
        early = deliver(settings, sessions, delivery_id)
    assert (first.outcome, first.retry_in, early.outcome) == (Sent.RETRYING, 3600, Sent.SKIPPED)
    assert len(receiver.received) == 1
    with sessions() as session:
        [entry] = delivery_history(session, job_id)
    due = dt.datetime.fromisoformat(entry["next_attempt_at"])
    assert 3500 < (due - dt.datetime.now(dt.UTC)).total_seconds() <= 3600


def test_a_url_that_turned_private_is_refused_at_delivery_and_recorded(
    sqlite_settings: Settings, sessions: sessionmaker[Session]
) -> None:
    # Given a delivery whose host now resolves to loopback, on a deployment that forbids private addresses
    settings = fast(sqlite_settings, webhook_allow_private=False)
    with Receiver() as receiver:
        job_id = a_job(sessions, f"http://localhost:{receiver.port}/hook")
        [delivery_id] = end_job(sessions, job_id, 2, 0)
        sent = deliver(settings, sessions, delivery_id)
    # Then nothing was sent, and the refusal is a failed attempt
    assert sent.outcome is Sent.RETRYING and receiver.received == []
    with sessions() as session:
        [attempt] = session.scalars(select(WebhookAttempt)).all()
    assert attempt.status_code is None and attempt.error is not None and attempt.error.startswith("refused:")


def test_a_trickling_receiver_is_cut_at_the_attempts_deadline(
    sqlite_settings: Settings, sessions: sessionmaker[Session]
) -> None:
    # Given a receiver that answers at once, then sends its body one byte every 0.2 s for 20 s (each read is far
    # quicker than any read timeout, the answer never ends)
    settings = fast(sqlite_settings, webhook_timeout=1.0, webhook_retry_delays=[0, 0])
    with Receiver(["trickle"], hang_seconds=20, trickle_seconds=0.2) as receiver:
        job_id = a_job(sessions, receiver.url)
        [delivery_id] = end_job(sessions, job_id, 2, 0)

        # When the delivery is sent
        started = time.monotonic()
        sent = deliver(settings, sessions, delivery_id)
        took = time.monotonic() - started

    # Then the attempt was cut at its one deadline and recorded as failed, to be retried
    assert sent.outcome is Sent.RETRYING and sent.attempt == 1
    assert 1.0 <= took < 4.0, took
    with sessions() as session:
        [attempt] = session.scalars(select(WebhookAttempt)).all()
    assert attempt.status_code is None and attempt.error is not None
    assert attempt.error.startswith("Timeout") and "deadline of 1s" in attempt.error
    assert 1.0 <= attempt.duration < 4.0


def test_only_the_first_bytes_of_a_long_answer_are_read(
    sqlite_settings: Settings, sessions: sessionmaker[Session]
) -> None:
    # Given a receiver that answers 200 with an endless body, as fast as it is read
    settings = fast(sqlite_settings, webhook_timeout=10.0, webhook_max_response_bytes=1024)
    with Receiver(["flood"], hang_seconds=30) as receiver:
        job_id = a_job(sessions, receiver.url)
        [delivery_id] = end_job(sessions, job_id, 2, 0)

        # When the delivery is sent
        started = time.monotonic()
        sent = deliver(settings, sessions, delivery_id)
        took = time.monotonic() - started

    # Then it stopped reading after the cap, long before its deadline, and the 200 delivered it
    assert sent.outcome is Sent.DELIVERED, sent
    assert took < 5.0, took


def test_two_senders_at_once_post_once(sqlite_settings: Settings, sessions: sessionmaker[Session]) -> None:
    settings = fast(sqlite_settings)
    with Receiver() as receiver:
        job_id = a_job(sessions, receiver.url)
        [delivery_id] = end_job(sessions, job_id, 2, 0)
        barrier = threading.Barrier(4)
        outcomes: list[Sent] = []

        def send() -> None:
            barrier.wait()
            outcomes.append(deliver(settings, sessions, delivery_id).outcome)

        threads = [threading.Thread(target=send) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert sorted(outcomes) == sorted([Sent.DELIVERED, Sent.SKIPPED, Sent.SKIPPED, Sent.SKIPPED])
    assert len(receiver.received) == 1
    with sessions() as session:
        assert session.get_one(WebhookDelivery, delivery_id).state == DeliveryState.DELIVERED


@pytest.mark.services
def test_a_cancel_racing_the_last_write_on_postgresql_makes_one_delivery(
    own_postgres: str, redis_url: str, queue_name: str
) -> None:
    # Given jobs whose last items are being written while a user cancels them, at the same moment
    settings = Settings(database_url=own_postgres, broker_url=redis_url, default_queue=queue_name)
    engine = make_engine(settings)
    sessions = make_sessionmaker(engine)
    jobs = [a_job(sessions, "https://hooks.example/inferq") for _ in range(12)]

    with Client(settings, engine=engine) as client:

        def race(job_id: str) -> None:
            barrier = threading.Barrier(2)

            def write() -> None:
                barrier.wait()
                end_job(sessions, job_id, 2, 0)

            def cancel() -> None:
                barrier.wait()
                client.cancel(job_id)

            threads = [threading.Thread(target=write), threading.Thread(target=cancel)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()

        for job_id in jobs:
            race(job_id)

    # Then each job ended once, and made exactly one delivery, whose event is the state it ended in
    with sessions() as session:
        rows = session.execute(
            select(WebhookDelivery.job_id, WebhookDelivery.event, Job.state)
            .join(Job, Job.id == WebhookDelivery.job_id)
            .where(WebhookDelivery.job_id.in_(jobs))
        ).all()
    engine.dispose()
    sent_by_cancel = ready_messages(redis_url, settings.webhook_queue)
    delete_queue(redis_url, settings.webhook_queue)
    assert sorted(r[0] for r in rows) == sorted(jobs)
    assert all(event == f"job.{state.value}" for _, event, state in rows)
    # And each cancel that ended its job enqueued its delivery (the write's are the worker task's to send)
    assert sent_by_cancel == sum(1 for r in rows if r[1] == "job.cancelled")
    print("ended by the write:", sum(1 for r in rows if r[1] == "job.succeeded"), "of", len(jobs))


def test_the_documented_verification_snippet_verifies_inferqs_signatures() -> None:
    # Given the docs' stdlib-only snippet (docs/security.md), as a user copies it
    page = (Path(__file__).parents[2] / "docs" / "security.md").read_text()
    section = page.split("## Webhook signatures", 1)[1].split("\n## ", 1)[0]
    snippet = section.split("```python\n", 1)[1].split("```", 1)[0]
    namespace: dict[str, Any] = {}
    exec(snippet, namespace)
    readme_verify = namespace["verify"]

    # Then it takes what inferq signs, and refuses a changed body, a wrong secret and an old request
    body = b'{"type":"job.succeeded"}'
    headers = signature_headers(SPEC_SECRET, "msg_1", body)
    assert readme_verify(SPEC_SECRET, headers, body) is True
    assert readme_verify(SPEC_SECRET, headers, body + b" ") is False
    assert readme_verify("whsec_" + base64.b64encode(b"k" * 32).decode(), headers, body) is False
    old = signature_headers(SPEC_SECRET, "msg_1", body, int(time.time()) - 3600)
    assert readme_verify(SPEC_SECRET, old, body) is False


@pytest.mark.services
def test_reconcilers_send_each_long_due_delivery_once(own_postgres: str, redis_url: str, queue_name: str) -> None:
    from inferq.celery_app import create_celery
    from inferq.webhooks import enqueue_due

    # Given a delivery due for long (its message lost) and one just recorded (its message on its way)
    settings = Settings(
        database_url=own_postgres, broker_url=redis_url, default_queue=queue_name, recover_older_than=60
    )
    engine = make_engine(settings)
    sessions = make_sessionmaker(engine)
    [lost] = end_job(sessions, a_job(sessions, "https://hooks.example/a"), 2, 0)
    assert len(end_job(sessions, a_job(sessions, "https://hooks.example/b"), 2, 0)) == 1
    with sessions.begin() as session:
        session.execute(
            update(WebhookDelivery)
            .where(WebhookDelivery.id == lost)
            .values(next_attempt_at=utcnow() - dt.timedelta(minutes=5))
        )
    celery = create_celery(settings)
    try:
        # When three reconcilers look at once, and again right after
        barrier = threading.Barrier(3)
        sent: list[list[str]] = []

        def sweep() -> None:
            barrier.wait()
            sent.append(enqueue_due(settings, sessions, celery))

        threads = [threading.Thread(target=sweep) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        again = enqueue_due(settings, sessions, celery)
        waiting = ready_messages(redis_url, settings.webhook_queue)
    finally:
        delete_queue(redis_url, settings.webhook_queue)
        engine.dispose()

    # Then the lost one was sent once, the fresh one not at all, and neither again before its time
    assert sorted(sent) == [[], [], [lost]]
    assert again == []
    # And it is one message on the webhook queue
    assert waiting == 1


def test_the_delivery_task_has_a_hard_time_limit_past_the_deadline(sqlite_settings: Settings) -> None:
    from inferq.celery_app import create_celery
    from inferq.task_specs import DELIVER_WEBHOOK
    from inferq.webhooks import TIME_LIMIT_MARGIN_SECONDS

    settings = sqlite_settings.model_copy(update={"webhook_timeout": 3.0})
    app = create_celery(settings)

    @app.task(name=DELIVER_WEBHOOK)
    def deliver_webhook(delivery_id: str) -> None:
        pass

    app.finalize()
    assert app.tasks[DELIVER_WEBHOOK].time_limit == 3.0 + TIME_LIMIT_MARGIN_SECONDS
