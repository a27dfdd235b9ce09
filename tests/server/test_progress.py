"""What the job page draws, over HTTP, against SQL truth: items ended per time bucket (``/timeline``) and the most
frequent error codes with a sample message (``/error_summary``), for a job whose items ended at known times; another
tenant's key gets 404 as for an unknown id."""

from __future__ import annotations

import datetime as dt
from collections import Counter

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from inferq.schema import Job, Result, as_utc
from inferq.states import ItemState, JobState
from producer.progress import MAX_BUCKETS, bucket_width
from tests.server.conftest import MakeKey, StoreJob, bearer
from tests.support.records import put_result

pytestmark = pytest.mark.services

T0 = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)

#: index -> (state, seconds after T0, error code, message): three chunk writes and an item still queued.
#: Item 6 has no result (a cancelled job's item without one is cancelled, and ended at no write of its own).
ENDED = {
    0: (ItemState.SUCCEEDED, 0.5, None, None),
    1: (ItemState.SUCCEEDED, 0.5, None, None),
    2: (ItemState.FAILED, 0.5, "inference_error", "boom: z"),
    3: (ItemState.FAILED, 3.25, "input_too_long", "1000 tokens"),
    4: (ItemState.FAILED, 7.75, "inference_error", "boom: a"),
    5: (ItemState.SUCCEEDED, 7.75, None, None),
}


def finish_items(sessions: sessionmaker[Session], job_id: str) -> None:
    with sessions.begin() as session:
        for index, (state, seconds, code, message) in ENDED.items():
            put_result(
                session,
                job_id,
                index,
                state=state,
                finished_at=T0 + dt.timedelta(seconds=seconds),
                error_code=code,
                error_message=message,
            )
        session.execute(
            update(Job).where(Job.id == job_id).values(state=JobState.RUNNING, started_at=T0, succeeded=3, failed=3)
        )


def sql_buckets(sessions: sessionmaker[Session], job_id: str, width: int) -> Counter[int]:
    """Items that ended (succeeded or failed), by bucket index, straight from the items table."""
    with sessions() as session:
        rows = session.execute(
            select(Result.finished_at).where(
                Result.job_id == job_id, Result.state.in_([ItemState.SUCCEEDED, ItemState.FAILED])
            )
        ).scalars()
        return Counter(int((as_utc(t) - T0).total_seconds() // width) for t in rows)


@pytest.mark.parametrize("width", [None, 2, 5])
def test_the_timeline_counts_the_items_that_ended_in_each_bucket_as_sql_does(
    api: TestClient, make_key: MakeKey, stored_job: StoreJob, sessions: sessionmaker[Session], width: int | None
) -> None:
    # Given a job of 8 items whose items ended in three writes (at 0.5 s, 3.25 s and 7.75 s), one cancelled
    key, tenant = make_key()
    job_id = stored_job(tenant, n=8)
    finish_items(sessions, job_id)

    # When its timeline is read
    query = f"?bucket_seconds={width}" if width else ""
    response = api.get(f"/v1/jobs/{job_id}/timeline{query}", headers=bearer(key))

    # Then every bucket from the start on holds the items SQL says ended in it (cancelled ones not), gaps included
    assert response.status_code == 200, response.text
    body = response.json()
    expected_width = width or bucket_width(7.75)
    assert body["bucket_seconds"] == expected_width
    assert dt.datetime.fromisoformat(body["start"]) == T0.replace(microsecond=0)
    truth = sql_buckets(sessions, job_id, expected_width)
    assert [p["items"] for p in body["points"]] == [truth.get(i, 0) for i in range(max(truth) + 1)]
    assert sum(p["items"] for p in body["points"]) == 6
    assert body["points"][-1]["cumulative"] == 6
    for i, point in enumerate(body["points"]):
        assert dt.datetime.fromisoformat(point["t"]) == T0 + dt.timedelta(seconds=i * expected_width)
        assert point["items_per_second"] == pytest.approx(point["items"] / expected_width)


def test_a_job_with_nothing_ended_has_an_empty_timeline_and_bucket_widths_stay_under_the_cap(
    api: TestClient, make_key: MakeKey, stored_job: StoreJob
) -> None:
    key, tenant = make_key()
    job_id = stored_job(tenant, n=3)
    body = api.get(f"/v1/jobs/{job_id}/timeline", headers=bearer(key)).json()
    assert body["points"] == []
    for span in (0, 1, 119, 120, 3600, 86400 * 3, 86400 * 400):
        assert span / bucket_width(span) < MAX_BUCKETS + 1


def test_the_error_summary_lists_codes_by_frequency_with_a_sample_message_as_sql_groups_them(
    api: TestClient, make_key: MakeKey, stored_job: StoreJob, sessions: sessionmaker[Session]
) -> None:
    # Given the job above: two inference errors and one input too long
    key, tenant = make_key()
    job_id = stored_job(tenant, n=8)
    finish_items(sessions, job_id)

    # When its error summary is read (all codes, then the top one only)
    body = api.get(f"/v1/jobs/{job_id}/error_summary", headers=bearer(key)).json()
    top = api.get(f"/v1/jobs/{job_id}/error_summary?limit=1", headers=bearer(key)).json()

    # Then it agrees with the failed items in SQL, most frequent first, the sample the smallest message of its code
    with sessions() as session:
        failed = session.execute(
            select(Result.error_code, Result.error_message).where(
                Result.job_id == job_id, Result.state == ItemState.FAILED
            )
        ).all()
    counts = Counter(code for code, _ in failed)
    assert [(e["code"], e["count"]) for e in body["data"]] == counts.most_common()
    assert body["data"][0]["sample_message"] == min(m for c, m in failed if c == "inference_error") == "boom: a"
    assert body["data"][1]["sample_message"] == "1000 tokens"
    assert body["failed"] == 3
    assert [e["code"] for e in top["data"]] == ["inference_error"]


def test_another_tenants_key_reads_neither_and_an_admin_key_reads_both(
    api: TestClient, make_key: MakeKey, stored_job: StoreJob
) -> None:
    _, tenant = make_key()
    other, _ = make_key()
    admin, _ = make_key(admin=True)
    job_id = stored_job(tenant, n=2)
    for path in ("timeline", "error_summary"):
        refused = api.get(f"/v1/jobs/{job_id}/{path}", headers=bearer(other))
        unknown = api.get(f"/v1/jobs/{'0' * 32}/{path}", headers=bearer(other))
        assert refused.status_code == unknown.status_code == 404
        assert refused.json()["error"]["code"] == unknown.json()["error"]["code"] == "job_not_found"
        assert api.get(f"/v1/jobs/{job_id}/{path}", headers=bearer(admin)).status_code == 200
        assert api.get(f"/v1/jobs/{job_id}/{path}").status_code == 401
