"""The HTTP API in this process (the app's lifespan run, httpx over ASGI) on real PostgreSQL and Redis: creating
jobs, every refused request of the contract, idempotency, quotas, listing, results, cancel, retry, health.

No worker runs here: submitted jobs stay queued on a queue of the module's own. Results come from the end-to-end
module (`test_served.py`); here an item's end is written directly where a test needs one."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import anyio
import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from inferq.keys import revoke_key
from inferq.schema import Item, Job, WebhookAttempt, WebhookDelivery, utcnow
from inferq.settings import Settings
from inferq.states import DeliveryState, JobState
from inferq.task_specs import TaskName
from producer.client import Client, JobStatus
from producer.export import export_jsonl, write_csv
from server.app import create_app
from server.process import free_port
from tests.server.conftest import MODEL, MakeKey, StoreJob, bearer, jsonl

pytestmark = pytest.mark.services

JSONL = {"content-type": "application/jsonl"}
ROWS = [{"text": "I love you", "id": "a"}, {"text": "I hate you", "id": "b"}, {"text": "Fine.", "id": "c"}]


def submit_url(**options: str) -> str:
    query = "&".join(f"{k}={v}" for k, v in {"task": "classification", "model": MODEL, **options}.items())
    return f"/v1/jobs?{query}"


def jobs_of(sessions: sessionmaker[Session], tenant: str) -> int:
    with sessions() as session:
        return int(session.scalar(select(func.count()).select_from(Job).where(Job.tenant == tenant)) or 0)


def items_of(sessions: sessionmaker[Session], tenant: str) -> int:
    with sessions() as session:
        query = select(func.count()).select_from(Item).join(Job, Job.id == Item.job_id).where(Job.tenant == tenant)
        return int(session.scalar(query) or 0)


# -- creating jobs -----------------------------------------------------------------------------------------------------


def test_a_jsonl_body_and_a_multipart_csv_each_make_a_job_of_the_keys_tenant(
    api: TestClient, make_key: MakeKey
) -> None:
    # Given a tenant's key
    key, tenant = make_key()

    # When it submits a JSONL body with options in the query, and a CSV file as a multipart form
    raw = api.post(
        submit_url(params='{"top_k":2}', metadata='{"team":"search"}', chunk_size="2"),
        content=jsonl(ROWS),
        headers={**bearer(key), **JSONL},
    )
    form = api.post(
        "/v1/jobs",
        files={"file": ("in.csv", b"id,text\nx,hello there\ny,goodbye\n", "text/csv")},
        data={"task": "classification", "model": MODEL, "metadata": '{"team":"ads"}'},
        headers=bearer(key),
    )

    # Then both are new jobs of that tenant, with the options given and the contract's Job object
    assert raw.status_code == 201, raw.text
    assert form.status_code == 201, form.text
    job = raw.json()
    assert job["object"] == "job" and job["id"] == job["job_id"] and job["tenant"] == tenant
    assert (job["task"], job["model"], job["state"], job["total"], job["done"]) == (
        "classification",
        MODEL,
        "queued",
        3,
        0,
    )
    assert job["params"]["top_k"] == 2 and job["chunk_size"] == 2 and job["metadata"] == {"team": "search"}
    assert job["skipped"] == [] and job["skipped_total"] == 0
    assert job["eta_seconds"] is None and job["error"] is None and job["retry_of"] is None
    assert form.json()["total"] == 2 and form.json()["metadata"] == {"team": "ads"}
    # And reading the job back gives the same object (less the submit's own fields), keys of the CLI's JSON included
    again = api.get(f"/v1/jobs/{job['id']}", headers=bearer(key)).json()
    assert again == {k: v for k, v in job.items() if k not in ("skipped", "skipped_total")}


def test_the_job_object_is_the_clients_job_status_as_json(
    api: TestClient, make_key: MakeKey, api_settings: Settings
) -> None:
    key, _ = make_key()
    job = api.post(submit_url(), content=jsonl(ROWS), headers={**bearer(key), **JSONL}).json()
    with Client(api_settings) as client:
        status = client.status(job["id"])
    # The CLI's JSON and the API's are one: the queued job's derived values (rate, ETA) do not move meanwhile
    assert {k: v for k, v in job.items() if k not in ("skipped", "skipped_total")} == status.model_dump(mode="json")
    assert JobStatus.model_validate(job) == status


def test_a_job_submitted_without_the_api_belongs_to_the_default_tenant(
    api: TestClient, make_key: MakeKey, api_settings: Settings
) -> None:
    # Given a job submitted with the Python client on the database, as the CLI does
    with Client(api_settings) as client:
        job_id = client.submit("classification", MODEL, ROWS).job_id
        assert client.status(job_id).tenant == "default"
    # Then a tenant's key does not see it, and an admin key does
    key, _ = make_key()
    admin, _ = make_key(admin=True)
    assert api.get(f"/v1/jobs/{job_id}", headers=bearer(key)).status_code == 404
    assert api.get(f"/v1/jobs/{job_id}", headers=bearer(admin)).json()["tenant"] == "default"


def test_invalid_lines_are_refused_with_line_and_field_and_nothing_is_stored(
    api: TestClient, make_key: MakeKey, sessions: sessionmaker[Session]
) -> None:
    key, tenant = make_key()
    body = b'{"text": "fine"}\n{"txt": "typo"}\nnot json\n'

    refused = api.post(submit_url(), content=body, headers={**bearer(key), **JSONL})

    assert refused.status_code == 400
    error = refused.json()["error"]
    assert error["code"] == "invalid_input"
    assert [(e["line"], e["field"]) for e in error["lines"]][:1] == [(2, "txt")]
    assert [e["line"] for e in error["lines"]] == [2, 3]
    assert jobs_of(sessions, tenant) == 0 and items_of(sessions, tenant) == 0


def test_skip_invalid_submits_the_valid_lines_and_lists_the_others(api: TestClient, make_key: MakeKey) -> None:
    key, _ = make_key()
    body = b'{"text": "fine"}\n{"txt": "typo"}\n{"text": "also fine"}\n'

    done = api.post(submit_url(skip_invalid="true"), content=body, headers={**bearer(key), **JSONL})

    assert done.status_code == 201, done.text
    assert done.json()["total"] == 2 and done.json()["skipped_total"] == 1
    assert [(s["line"], s["field"]) for s in done.json()["skipped"]] == [(2, "txt")]


def test_a_body_over_the_limit_is_refused_while_it_streams_and_nothing_is_stored(
    api_settings: Settings, make_key: MakeKey, sessions: sessionmaker[Session]
) -> None:
    # Given an API that takes at most 64 KiB, and an endless body (sent chunked: no Content-Length); httpx's ASGI
    # transport hands the app the body chunk by chunk, as a server would
    limit = 64 * 1024
    key, tenant = make_key()
    sent = 0
    chunk = jsonl([{"text": "x" * 1000}]) * 16

    async def endless() -> AsyncIterator[bytes]:
        nonlocal sent
        while True:
            sent += len(chunk)
            yield chunk

    async def post() -> tuple[httpx.Response, httpx.Response]:
        app = create_app(api_settings.model_copy(update={"max_upload_bytes": limit}))
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api") as client,
        ):
            refused = await client.post(submit_url(), content=endless(), headers={**bearer(key), **JSONL})
            # (and a body whose Content-Length says it is too large is refused before it is read)
            declared = await client.post(submit_url(), content=b"x" * (limit + 1), headers={**bearer(key), **JSONL})
            return refused, declared

    # When it is sent
    refused, declared = anyio.run(post)

    # Then the server answered 413 once it had read a little over the limit, not the whole (endless) body
    assert refused.status_code == 413 and refused.json()["error"]["code"] == "payload_too_large"
    assert limit < sent <= limit + 2 * len(chunk)
    assert declared.status_code == 413
    assert jobs_of(sessions, tenant) == 0


@pytest.mark.parametrize(
    ("options", "status", "code", "field"),
    [
        ({"model": "no-such-model"}, 404, "unknown_model", None),
        ({"task": "translation"}, 400, "unknown_task", None),
        ({"params": "{top_k: 2"}, 422, "invalid_parameter", "params"),
        ({"params": "[1, 2]"}, 422, "invalid_parameter", "params"),
        ({"params": '{"top_k": "many"}'}, 422, "invalid_parameter", None),
        ({"metadata": "{'a': 'b'}"}, 422, "invalid_parameter", "metadata"),
        ({"metadata": '{"a": 1}'}, 422, "invalid_parameter", "metadata.a"),
        ({"chunk_size": "ten"}, 422, "invalid_parameter", "chunk_size"),
        ({"webhook_url": "ftp://example.com/hook"}, 422, "invalid_parameter", "webhook_url"),
        ({"format": "xml"}, 422, "invalid_parameter", "format"),
    ],
)
def test_bad_options_are_refused_with_their_code_and_nothing_is_stored(
    api: TestClient,
    make_key: MakeKey,
    sessions: sessionmaker[Session],
    options: dict[str, str],
    status: int,
    code: str,
    field: str | None,
) -> None:
    key, tenant = make_key()
    refused = api.post(submit_url(**options), content=jsonl(ROWS), headers={**bearer(key), **JSONL})
    assert refused.status_code == status, refused.text
    assert refused.json()["error"]["code"] == code
    if field is not None:
        assert refused.json()["error"]["field"] == field
    assert jobs_of(sessions, tenant) == 0


@pytest.mark.parametrize("media_type", ["application/json", "text/plain", "application/xml", None])
def test_other_media_types_are_415(api: TestClient, make_key: MakeKey, media_type: str | None) -> None:
    key, _ = make_key()
    headers = bearer(key) | ({"content-type": media_type} if media_type else {})
    refused = api.post(submit_url(), content=jsonl(ROWS), headers=headers)
    assert refused.status_code == 415 and refused.json()["error"]["code"] == "unsupported_media_type"


@pytest.mark.parametrize(
    "authorization",
    [None, "", "Bearer", "Basic dXNlcjpwYXNz", "Bearer nonsense", "Bearer iq_0123456789abcdef_" + "A" * 43],
)
def test_a_missing_or_bad_key_is_401(api: TestClient, authorization: str | None) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    for method, path in (("GET", "/v1/jobs"), ("GET", "/v1/models"), ("POST", "/v1/jobs")):
        refused = api.request(method, path, headers=headers)
        assert refused.status_code == 401, (method, path)
        assert refused.json()["error"]["code"] == "unauthorized"
        assert refused.headers["www-authenticate"] == "Bearer"


def test_a_key_with_a_wrong_secret_is_401(api: TestClient, make_key: MakeKey) -> None:
    key, _ = make_key()
    wrong = key[:-4] + ("AAAA" if not key.endswith("AAAA") else "BBBB")
    assert api.get("/v1/jobs", headers=bearer(key)).status_code == 200
    assert api.get("/v1/jobs", headers=bearer(wrong)).status_code == 401


def test_a_revoked_key_is_refused_from_the_next_request_on(
    api: TestClient, make_key: MakeKey, sessions: sessionmaker[Session]
) -> None:
    key, _ = make_key()
    assert api.get("/v1/jobs", headers=bearer(key)).status_code == 200
    with sessions.begin() as session:
        assert revoke_key(session, key.split("_")[1])
    assert api.get("/v1/jobs", headers=bearer(key)).status_code == 401


def test_an_unknown_job_is_404(api: TestClient, make_key: MakeKey) -> None:
    key, _ = make_key()
    for method, suffix in (
        ("GET", ""),
        ("GET", "/results"),
        ("GET", "/errors"),
        ("POST", "/cancel"),
        ("POST", "/retry"),
    ):
        gone = api.request(method, f"/v1/jobs/{'0' * 32}{suffix}", headers=bearer(key))
        assert gone.status_code == 404 and gone.json()["error"]["code"] == "job_not_found", suffix


# -- idempotency and quotas --------------------------------------------------------------------------------------------


def test_the_same_idempotency_key_and_request_give_the_same_job_and_another_request_409(
    api: TestClient, make_key: MakeKey, sessions: sessionmaker[Session]
) -> None:
    key, tenant = make_key()
    headers = {**bearer(key), **JSONL, "Idempotency-Key": "order-42"}

    first = api.post(submit_url(metadata='{"a":"b"}'), content=jsonl(ROWS), headers=headers)
    again = api.post(submit_url(metadata='{"a":"b"}'), content=jsonl(ROWS), headers=headers)
    other_body = api.post(submit_url(metadata='{"a":"b"}'), content=jsonl(ROWS[:2]), headers=headers)
    other_params = api.post(submit_url(metadata='{"a":"c"}'), content=jsonl(ROWS), headers=headers)

    assert first.status_code == 201 and "idempotent-replayed" not in first.headers
    assert again.status_code == 200 and again.headers["idempotent-replayed"] == "true"
    assert again.json()["id"] == first.json()["id"]
    assert other_body.status_code == 409 and other_body.json()["error"]["code"] == "idempotency_conflict"
    assert other_params.status_code == 409
    assert jobs_of(sessions, tenant) == 1
    # And another tenant's key may use the same Idempotency-Key for a job of its own
    other_key, _ = make_key()
    own = api.post(submit_url(metadata='{"a":"b"}'), content=jsonl(ROWS), headers={**headers, **bearer(other_key)})
    assert own.status_code == 201 and own.json()["id"] != first.json()["id"]


def test_a_submit_past_the_tenants_quota_is_429_with_retry_after(
    api: TestClient, make_key: MakeKey, sessions: sessionmaker[Session]
) -> None:
    # Given a tenant allowed 4 unfinished items, holding 3
    key, tenant = make_key(quota=4)
    first = api.post(submit_url(), content=jsonl(ROWS), headers={**bearer(key), **JSONL})
    assert first.status_code == 201

    # When it submits 2 more, then 1 more
    over = api.post(submit_url(), content=jsonl(ROWS[:2]), headers={**bearer(key), **JSONL})
    fits = api.post(submit_url(), content=jsonl(ROWS[:1]), headers={**bearer(key), **JSONL})

    # Then the first is refused with 429 and Retry-After, nothing stored; the second fits
    assert over.status_code == 429 and over.json()["error"]["code"] == "quota_exceeded"
    assert int(over.headers["retry-after"]) > 0
    assert fits.status_code == 201
    assert items_of(sessions, tenant) == 4
    # And once the first job is cancelled, its items no longer count
    assert api.post(f"/v1/jobs/{first.json()['id']}/cancel", headers=bearer(key)).status_code == 200
    assert api.post(submit_url(), content=jsonl(ROWS[:2]), headers={**bearer(key), **JSONL}).status_code == 201


def test_concurrent_submits_never_pass_the_tenants_quota_together(
    api: TestClient, make_key: MakeKey, sessions: sessionmaker[Session]
) -> None:
    # Given a tenant allowed 9 unfinished items, and six clients submitting 3 items each at once (no worker runs
    # here, so nothing finishes meanwhile; each submit stores in its own transaction, in the app's thread pool)
    key, tenant = make_key(quota=9)

    def send(_: int) -> int:
        return api.post(submit_url(), content=jsonl(ROWS), headers={**bearer(key), **JSONL}).status_code

    with ThreadPoolExecutor(6) as pool:
        codes = sorted(pool.map(send, range(6)))

    # Then exactly three fit, and the others are refused
    assert codes == [201] * 3 + [429] * 3
    assert items_of(sessions, tenant) == 9


# -- listing -----------------------------------------------------------------------------------------------------------


def test_jobs_are_listed_newest_first_a_page_at_a_time_with_filters(
    api: TestClient, make_key: MakeKey, stored_job: StoreJob
) -> None:
    key, tenant = make_key()
    ids = [stored_job(tenant, metadata={"batch": str(i % 2), "k": "v"}) for i in range(5)]
    stored_job(make_key()[1])  # another tenant's job, never listed
    newest_first = ids[::-1]

    pages, after = [], None
    while True:
        query = "/v1/jobs?limit=2" + (f"&after={after}" if after else "")
        page = api.get(query, headers=bearer(key)).json()
        pages.append([j["id"] for j in page["data"]])
        after = page["next_after"]
        assert page["has_more"] == (after is not None)
        if not page["has_more"]:
            break
    assert pages == [newest_first[:2], newest_first[2:4], newest_first[4:]]

    def listed(query: str) -> list[str]:
        answer = api.get(f"/v1/jobs?{query}", headers=bearer(key))
        assert answer.status_code == 200, answer.text
        return [j["id"] for j in answer.json()["data"]]

    assert listed("metadata[batch]=0") == [i for n, i in enumerate(ids) if n % 2 == 0][::-1]
    assert listed("metadata.batch=1&metadata.k=v") == [i for n, i in enumerate(ids) if n % 2 == 1][::-1]
    assert listed("metadata[batch]=7") == []
    assert listed("state=queued&task=classification&model=" + MODEL) == newest_first
    assert listed("state=succeeded") == []
    assert listed("model=other") == []
    assert api.get("/v1/jobs?state=bogus", headers=bearer(key)).status_code == 422
    assert api.get("/v1/jobs?limit=0", headers=bearer(key)).status_code == 422
    assert api.get(f"/v1/jobs?after={'0' * 32}", headers=bearer(key)).status_code == 422


# -- results, errors, cancel, retry ------------------------------------------------------------------------------------


def test_results_and_errors_stream_in_input_order_as_the_cli_exports_them(
    api: TestClient, make_key: MakeKey, stored_job: StoreJob, api_settings: Settings
) -> None:
    # Given a job of 5 items of which items 1 and 3 failed
    key, tenant = make_key()
    job_id = stored_job(tenant, n=5, failed=(1, 3))

    jsonl_body = api.get(f"/v1/jobs/{job_id}/results", headers=bearer(key))
    csv_body = api.get(f"/v1/jobs/{job_id}/results?format=csv", headers=bearer(key))
    errors = api.get(f"/v1/jobs/{job_id}/errors", headers=bearer(key))
    failed_only = api.get(f"/v1/jobs/{job_id}/results?failed=true", headers=bearer(key))
    queued_only = api.get(f"/v1/jobs/{job_id}/results?state=queued", headers=bearer(key))

    # Then JSONL and CSV are byte for byte what the CLI's export writes
    with Client(api_settings) as client:
        expected_jsonl = io.StringIO()
        with client.reader() as session:
            export_jsonl(session, job_id, expected_jsonl)
        expected_csv = io.StringIO(newline="")
        write_csv(client.results(job_id), expected_csv, TaskName.CLASSIFICATION)
    assert jsonl_body.headers["content-type"].startswith("application/jsonl")
    assert jsonl_body.text == expected_jsonl.getvalue()
    assert csv_body.headers["content-type"].startswith("text/csv")
    assert csv_body.text == expected_csv.getvalue()
    assert [int(r["index"]) for r in csv.DictReader(io.StringIO(csv_body.text))] == [0, 1, 2, 3, 4]
    # And the errors stream holds the failed items only, in input order, with their errors
    lines = [json.loads(line) for line in errors.text.splitlines()]
    assert [(ln["index"], ln["id"], ln["status"]) for ln in lines] == [(1, "c1", "failed"), (3, "c3", "failed")]
    assert lines[0]["error"] == {"code": "inference_error", "message": "boom"}
    assert failed_only.text == errors.text
    assert [json.loads(ln)["index"] for ln in queued_only.text.splitlines()] == [0, 2, 4]


def test_parquet_results_come_as_a_file_and_npy_only_for_jobs_with_vectors(
    api: TestClient, make_key: MakeKey, stored_job: StoreJob, tmp_path: Path
) -> None:
    import pyarrow.parquet as pq

    key, tenant = make_key()
    job_id = stored_job(tenant, n=5, failed=(2,))

    parquet = api.get(f"/v1/jobs/{job_id}/results?format=parquet", headers=bearer(key))
    npy = api.get(f"/v1/jobs/{job_id}/results?format=npy", headers=bearer(key))

    assert parquet.status_code == 200 and parquet.headers["content-type"] == "application/octet-stream"
    (tmp_path / "r.parquet").write_bytes(parquet.content)
    table = pq.read_table(tmp_path / "r.parquet").to_pydict()
    assert table["index"] == [0, 1, 2, 3, 4] and table["error_code"][2] == "inference_error"
    assert npy.status_code == 422 and npy.json()["error"]["field"] == "format"


def test_cancel_stops_a_job_and_a_finished_job_comes_back_unchanged(
    api: TestClient, make_key: MakeKey, stored_job: StoreJob
) -> None:
    key, tenant = make_key()
    job_id = stored_job(tenant, n=3)

    cancelled = api.post(f"/v1/jobs/{job_id}/cancel", headers=bearer(key))
    again = api.post(f"/v1/jobs/{job_id}/cancel", headers=bearer(key))

    assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
    assert again.status_code == 200 and again.json() == cancelled.json()
    statuses = [
        json.loads(ln)["status"] for ln in api.get(f"/v1/jobs/{job_id}/results", headers=bearer(key)).text.splitlines()
    ]
    assert statuses == ["cancelled"] * 3


def test_retry_makes_a_new_job_of_the_failed_items_linked_to_the_first(
    api: TestClient, make_key: MakeKey, stored_job: StoreJob
) -> None:
    key, tenant = make_key()
    running = stored_job(tenant, n=4, failed=(1,))
    finished = stored_job(tenant, n=4, failed=(0, 2), state=JobState.SUCCEEDED, metadata={"run": "1"})
    clean = stored_job(tenant, n=2, state=JobState.SUCCEEDED)

    not_yet = api.post(f"/v1/jobs/{running}/retry", headers=bearer(key))
    nothing = api.post(f"/v1/jobs/{clean}/retry", headers=bearer(key))
    retried = api.post(f"/v1/jobs/{finished}/retry", headers=bearer(key))

    assert not_yet.status_code == 409 and not_yet.json()["error"]["code"] == "job_not_finished"
    assert nothing.status_code == 400 and nothing.json()["error"]["code"] == "nothing_to_retry"
    assert retried.status_code == 201, retried.text
    job = retried.json()
    assert job["id"] != finished and job["retry_of"] == finished and job["tenant"] == tenant
    assert (job["total"], job["state"], job["metadata"], job["model"]) == (2, "queued", {"run": "1"}, MODEL)
    lines = [json.loads(ln) for ln in api.get(f"/v1/jobs/{job['id']}/results", headers=bearer(key)).text.splitlines()]
    assert [(ln["index"], ln["id"]) for ln in lines] == [(0, "c0"), (1, "c2")]
    # And the first job keeps its errors
    assert api.get(f"/v1/jobs/{finished}", headers=bearer(key)).json()["failed"] == 2


# -- the rest ----------------------------------------------------------------------------------------------------------


def test_models_lists_the_registry(api: TestClient, make_key: MakeKey, api_settings: Settings) -> None:
    key, _ = make_key()
    listed = api.get("/v1/models", headers=bearer(key)).json()
    assert listed["object"] == "list"
    assert [m["name"] for m in listed["data"]] == sorted(api_settings.models)
    first = listed["data"][0]
    # Each entry as the registry holds it (queue null: the default queue), as `inferq models --json` prints it
    assert first["task"] == "classification" and first["queue"] is None
    name = first.pop("name")
    assert first == api_settings.models[name].model_dump(mode="json")


def test_health_and_readiness(api: TestClient) -> None:
    assert api.get("/healthz").json() == {"status": "ok"}
    ready = api.get("/readyz")
    assert ready.status_code == 200 and ready.json() == {"database": "ok", "broker": "ok"}
    assert api.get("/openapi.json").json()["paths"].keys() >= {"/v1/jobs", "/v1/jobs/{job_id}/results"}


def test_readiness_is_503_naming_the_database_when_it_is_unreachable(api_settings: Settings) -> None:
    # Given an API whose database is a closed port (with a password in its URL)
    url = f"postgresql://inferq:s3cret@127.0.0.1:{free_port()}/inferq"
    with TestClient(create_app(api_settings.model_copy(update={"database_url": url}))) as broken:
        ready = broken.get("/readyz")
        alive = broken.get("/healthz")
    assert ready.status_code == 503
    body = ready.json()
    assert body["database"] == "unavailable" and body["broker"] == "ok"
    assert body["errors"]["database"]["code"] == "database_unavailable"
    assert "s3cret" not in ready.text and "127.0.0.1" not in ready.text
    assert alive.status_code == 200


def test_webhook_deliveries_of_a_job_are_listed(
    api: TestClient, make_key: MakeKey, stored_job: StoreJob, sessions: sessionmaker[Session]
) -> None:
    # Given a job without deliveries, and a job whose end event took two attempts
    key, tenant = make_key()
    quiet = stored_job(tenant)
    job_id = stored_job(tenant, state=JobState.SUCCEEDED)
    at = utcnow()
    with sessions.begin() as session:
        session.add(
            WebhookDelivery(
                id=f"msg_{job_id}",
                job_id=job_id,
                tenant=tenant,
                event="job.succeeded",
                url="https://example.com/hook",
                payload="{}",
                state=DeliveryState.DELIVERED,
                attempts=2,
                created_at=at,
                delivered_at=at,
            )
        )
        session.flush()
        session.add_all(
            [
                WebhookAttempt(
                    delivery_id=f"msg_{job_id}", number=1, at=at, status_code=500, error="HTTP 500", duration=0.1
                ),
                WebhookAttempt(delivery_id=f"msg_{job_id}", number=2, at=at, status_code=200, error=None, duration=0.2),
            ]
        )

    # When their deliveries are read
    none = api.get(f"/v1/jobs/{quiet}/webhooks", headers=bearer(key))
    listed = api.get(f"/v1/jobs/{job_id}/webhooks", headers=bearer(key))

    # Then each delivery comes with its attempts, in the contract's shape
    assert none.status_code == 200 and none.json() == {"object": "list", "data": []}
    assert listed.status_code == 200, listed.text
    (delivery,) = listed.json()["data"]
    assert delivery.keys() >= {
        "id",
        "event",
        "url",
        "state",
        "attempts",
        "created_at",
        "delivered_at",
        "next_attempt_at",
    }
    assert (delivery["id"], delivery["event"], delivery["state"], delivery["attempts"]) == (
        f"msg_{job_id}",
        "job.succeeded",
        "delivered",
        2,
    )
    assert [(a["number"], a["status_code"], a["error"]) for a in delivery["attempt_log"]] == [
        (1, 500, "HTTP 500"),
        (2, 200, None),
    ]
    # And another tenant's key gets 404
    other, _ = make_key()
    assert api.get(f"/v1/jobs/{job_id}/webhooks", headers=bearer(other)).status_code == 404


def test_priority_and_deadline_are_stored_and_shown_with_the_jobs_place_in_line(
    api: TestClient, make_key: MakeKey
) -> None:
    # Given a tenant's key, and its job of two chunks waiting (no worker runs here)
    key, _ = make_key()
    first = api.post(submit_url(chunk_size="2"), content=jsonl(ROWS), headers={**bearer(key), **JSONL}).json()

    # When it submits a job of priority 9 with a completion window of 24 hours, and one of priority 0
    urgent = api.post(submit_url(priority="9", deadline="24h"), content=jsonl(ROWS), headers={**bearer(key), **JSONL})
    later = api.post(submit_url(priority="0"), content=jsonl(ROWS), headers={**bearer(key), **JSONL})

    # Then each job shows them, and its place in line: the urgent one first, the low one behind the others' chunks
    assert urgent.status_code == 201, urgent.text
    job = api.get(f"/v1/jobs/{urgent.json()['id']}", headers=bearer(key)).json()
    assert job["priority"] == 9 and job["position"] == 0
    created = dt.datetime.fromisoformat(job["created_at"])
    assert dt.datetime.fromisoformat(job["deadline_at"]) - created == pytest.approx(
        dt.timedelta(hours=24), abs=dt.timedelta(seconds=5)
    )
    low = api.get(f"/v1/jobs/{later.json()['id']}", headers=bearer(key)).json()
    assert low["priority"] == 0 and low["deadline_at"] is None
    assert first["chunk_size"] == 2 and low["position"] == 3  # the first job's two chunks and the urgent one's
    # And a priority out of range, or a deadline that is no duration, is refused naming the field
    for bad, field in (({"priority": "10"}, "priority"), ({"deadline": "soon"}, "deadline")):
        refused = api.post(submit_url(**bad), content=jsonl(ROWS), headers={**bearer(key), **JSONL})
        assert refused.status_code == 422 and refused.json()["error"]["field"] == field, refused.text


def test_the_dispatchers_state_is_shown_on_a_job_and_on_its_own_route(
    api: TestClient, make_key: MakeKey, sessions: sessionmaker[Session], api_settings: Settings
) -> None:
    from inferq.store.dispatch import forget_leader, record_round

    # Given a leader's row (as a worker's dispatcher writes it) holding back chunks of two capped tenants, one of
    # them this key's, on the job's queue and on another queue
    key, tenant = make_key()
    admin, _ = make_key(admin=True)
    job_id = api.post(submit_url(), content=jsonl(ROWS), headers={**bearer(key), **JSONL}).json()["id"]
    queue = api_settings.default_queue
    now = utcnow()
    counts = {"window": 16, "waiting": 4, "running": 2, "held": 30, "held_by_cap": 20}
    queues = {queue: {**counts, "capped": sorted([tenant, "someone-else"])}, "gpu": {**counts, "capped": []}}
    with sessions.begin() as session:
        record_round(session, leader="host:42", leader_since=now, last_round=now, released=3, queues=queues)
    try:
        # When the job, and the dispatcher, are read with the tenant's key and with an admin key
        job = api.get(f"/v1/jobs/{job_id}", headers=bearer(key)).json()
        mine = api.get("/v1/dispatcher", headers=bearer(key)).json()
        everything = api.get("/v1/dispatcher", headers=bearer(admin)).json()

        # Then the job shows the leader, its last round and its own queue, naming no other tenant
        assert job["dispatcher"]["mode"] == "fair" and job["dispatcher"]["leader"] == "host:42"
        assert job["dispatcher"]["released"] == 3
        assert dt.datetime.fromisoformat(job["dispatcher"]["last_round"]) == now
        assert job["dispatcher"]["queues"] == [{"queue": queue, **counts, "capped": [tenant]}]
        # And the dispatcher's route shows every queue: the tenant's key names its own tenant only, an admin's all
        assert [q["queue"] for q in mine["queues"]] == sorted([queue, "gpu"])
        assert {q["queue"]: q["capped"] for q in mine["queues"]}[queue] == [tenant]
        assert {q["queue"]: q["capped"] for q in everything["queues"]}[queue] == sorted([tenant, "someone-else"])
        # And without a key it is refused
        assert api.get("/v1/dispatcher").status_code == 401
    finally:
        with sessions.begin() as session:
            forget_leader(session, "host:42")
    # And once the leader is gone, nobody leads
    assert api.get("/v1/dispatcher", headers=bearer(key)).json() == {
        "mode": "fair",
        "leader": None,
        "leader_since": None,
        "last_round": None,
        "released": None,
        "queues": [],
    }
