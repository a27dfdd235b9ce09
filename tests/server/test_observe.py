"""The API's own metrics and log lines, in process on PostgreSQL: ``/metrics`` counts requests by route template
(never a raw path with a job id) and status, times them, counts upload bytes, and carries the state from SQL
(webhook deliveries by state included) as SQL has it; with ``INFERQ_LOG_FORMAT=json`` every request writes one JSON
access line with its route, status and duration, and no key ever appears in the log."""

from __future__ import annotations

import io
import json
import logging
import uuid
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from inferq.logs import JsonFormatter
from inferq.schema import Job, WebhookDelivery, utcnow
from inferq.settings import Settings
from inferq.states import DeliveryState
from server.app import create_app
from tests.server.conftest import MODEL, MakeKey, StoreJob, bearer, jsonl

pytestmark = pytest.mark.services


@pytest.fixture(scope="module")
def observed(api_settings: Settings) -> Iterator[TestClient]:
    """An app of its own (counts from zero), reading the state from SQL on every scrape (no cache)."""
    settings = api_settings.model_copy(update={"metrics_cache_seconds": 0.0})
    with TestClient(create_app(settings)) as client:
        yield client


def samples(client: TestClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = client.get("/metrics")
    assert response.status_code == 200
    found = {}
    for family in text_string_to_metric_families(response.text):
        for s in family.samples:
            found[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return found


def value(found: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return found.get((name, tuple(sorted(labels.items()))), 0.0)


def test_requests_are_counted_by_route_template_and_status_with_latency_and_upload_bytes(
    observed: TestClient, make_key: MakeKey, stored_job: StoreJob
) -> None:
    # Given a key and a job of its tenant
    key, tenant = make_key()
    job_id = stored_job(tenant, n=2)
    body = jsonl([{"text": "good"}, {"text": "bad"}, {"text": "fine"}])
    before = samples(observed)

    # When the job is read 3 times, an unknown job once, a request comes without a key, and a file is submitted
    for _ in range(3):
        assert observed.get(f"/v1/jobs/{job_id}", headers=bearer(key)).status_code == 200
    assert observed.get(f"/v1/jobs/{uuid.uuid4().hex}", headers=bearer(key)).status_code == 404
    assert observed.get(f"/v1/jobs/{job_id}").status_code == 401
    created = observed.post(
        f"/v1/jobs?task=classification&model={MODEL}",
        content=body,
        headers={**bearer(key), "Content-Type": "application/jsonl"},
    )
    assert created.status_code == 201, created.text
    assert observed.get(f"/no/such/{job_id}").status_code == 404
    after = samples(observed)

    # Then each is counted under its route template and status, timed, and the body's bytes counted
    def added(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    route = "/v1/jobs/{job_id}"
    assert added("inferq_api_requests_total", route=route, method="GET", status="200") == 3
    assert added("inferq_api_requests_total", route=route, method="GET", status="404") == 1
    assert added("inferq_api_requests_total", route=route, method="GET", status="401") == 1
    assert added("inferq_api_requests_total", route="/v1/jobs", method="POST", status="201") == 1
    assert added("inferq_api_requests_total", route="<unmatched>", method="GET", status="404") == 1
    assert added("inferq_api_request_seconds_count", route=route, method="GET") == 5
    assert added("inferq_api_request_seconds_sum", route=route, method="GET") > 0
    assert added("inferq_api_upload_bytes_total", route="/v1/jobs") == len(body)
    # and no label anywhere holds a job id
    assert not [k for k in after if any(job_id in v for _, v in k[1])]


def test_the_state_from_sql_is_on_the_api_endpoint_webhook_deliveries_by_state_included(
    observed: TestClient, make_key: MakeKey, stored_job: StoreJob, sessions: sessionmaker[Session]
) -> None:
    # Given a job with two delivered webhook deliveries and one failed
    _, tenant = make_key()
    job_id = stored_job(tenant, n=1)
    with sessions.begin() as session:
        for n, state in enumerate([DeliveryState.DELIVERED, DeliveryState.DELIVERED, DeliveryState.FAILED]):
            session.add(
                WebhookDelivery(
                    id=uuid.uuid4().hex,
                    job_id=job_id,
                    event=f"job.test{n}",
                    url="http://127.0.0.1:9/hook",
                    tenant=tenant,
                    payload="{}",
                    state=state,
                    created_at=utcnow(),
                )
            )

    # When the endpoint is scraped
    found = samples(observed)

    # Then jobs by state and deliveries by state are SQL's counts
    with sessions() as session:
        jobs = dict(session.execute(select(Job.state, func.count()).group_by(Job.state)).tuples().all())
        deliveries = dict(
            session.execute(select(WebhookDelivery.state, func.count()).group_by(WebhookDelivery.state)).tuples().all()
        )
    assert value(found, "inferq_state_up") == 1
    for state, count in jobs.items():
        assert value(found, "inferq_jobs", state=state.value) == count
    for state in DeliveryState:
        assert value(found, "inferq_webhook_deliveries", state=state.value) == deliveries.get(state, 0)
    assert value(found, "inferq_webhook_deliveries", state="delivered") >= 2


def test_metrics_can_be_turned_off(api_settings: Settings) -> None:
    with TestClient(create_app(api_settings.model_copy(update={"api_metrics": False}))) as client:
        assert client.get("/metrics").status_code == 404


def test_json_access_lines_carry_route_status_and_duration_and_never_a_key(
    observed: TestClient, make_key: MakeKey, stored_job: StoreJob
) -> None:
    # Given the access log in JSON, and a key
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter())
    access = logging.getLogger("inferq.access")
    access.addHandler(handler)
    access.setLevel(logging.INFO)
    key, tenant = make_key()
    job_id = stored_job(tenant, n=2)
    try:
        # When the key reads a job, a wrong key is sent, and the key rides in the query string too
        observed.get(f"/v1/jobs/{job_id}", headers=bearer(key))
        observed.get(f"/v1/jobs/{job_id}", headers=bearer(key + "x"))
        observed.get(f"/v1/jobs?model={key}", headers=bearer(key))
    finally:
        access.removeHandler(handler)

    # Then there is one JSON line per request with route, status and seconds, and the key nowhere
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [(e["route"], e["status"]) for e in lines] == [
        ("/v1/jobs/{job_id}", 200),
        ("/v1/jobs/{job_id}", 401),
        ("/v1/jobs", 200),
    ]
    assert all(e["seconds"] > 0 and e["logger"] == "inferq.access" for e in lines)
    assert lines[0]["path"] == f"/v1/jobs/{job_id}"
    secret = key.split("_", 2)[2]  # iq_<id>_<secret>: the secret itself may hold "_"
    assert secret not in out.getvalue() and key not in out.getvalue()
    assert "authorization" not in out.getvalue().lower()
