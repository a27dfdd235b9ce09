"""What a job's page plots and lists, as JSON: items ended over time (``/timeline``) and the most frequent error
codes with a sample message (``/error_summary``), both read from SQL (`producer.progress`), so that a finished job
draws as it did while it ran. A tenant's key reads its own jobs only (another's is 404, as an unknown id)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from inferq import api
from producer import progress
from server.auth import Caller
from server.deps import Made
from server.errors import error_responses

router = APIRouter(tags=["jobs"], responses=error_responses(401, 404, 422, 500, 503))


@router.get("/jobs/{job_id}/timeline", response_model=api.Timeline)
def timeline(
    job_id: str,
    made: Made,
    caller: Caller,
    bucket_seconds: Annotated[
        int | None, Query(ge=1, le=86400, description="bucket width (default: from the span)")
    ] = None,
) -> api.Timeline:
    """Items that ended (succeeded or failed) per time bucket, from each stored chunk write's time: ``points`` of
    ``{"t", "items", "items_per_second", "cumulative"}``, empty buckets included."""
    made.client.status(job_id, tenant=caller.scope())
    with made.client.reader() as session:
        return api.Timeline.model_validate(progress.timeline(session, job_id, bucket_seconds).to_json())


@router.get("/jobs/{job_id}/error_summary", response_model=api.ErrorSummary)
def error_summary(
    job_id: str,
    made: Made,
    caller: Caller,
    limit: Annotated[int, Query(ge=1, le=progress.MAX_ERROR_CODES)] = progress.DEFAULT_ERROR_CODES,
) -> api.ErrorSummary:
    """The failed items' error codes, most frequent first, each with its count and one sample message."""
    status = made.client.status(job_id, tenant=caller.scope())
    with made.client.reader() as session:
        found = progress.error_summary(session, job_id, limit)
    return api.ErrorSummary(
        failed=status.failed,
        data=[api.ErrorCount(code=e.code, count=e.count, sample_message=e.sample_message) for e in found],
    )
