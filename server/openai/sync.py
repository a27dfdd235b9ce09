"""The synchronous calls (``POST /v1/embeddings``, ``/v1/rerank``, ``/v1/classifications`` …): each a small job
of priority `inferq.constants.SYNC_PRIORITY` on the same workers as every job, waited for.

A server process runs at most ``INFERQ_SYNC_CONCURRENCY`` of them at once: one more is refused at once with
`WorkersSaturated` (503 and ``Retry-After``), as is a call whose job has not ended within ``INFERQ_SYNC_TIMEOUT``
seconds (its job is cancelled then). The call polls its job's row, quickly at first, then every quarter second.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from inferq import constants
from inferq.errors import WorkersSaturated
from inferq.keys import Principal
from inferq.model_sources import resolve_model
from inferq.settings import ModelSpec
from inferq.states import JobState
from inferq.task_names import TaskName
from producer.client import JobStatus
from server.deps import Runtime
from server.openai.batches import job_options_for

#: Seconds between two polls of a call's job: the first, and the most.
FIRST_POLL = 0.01
LAST_POLL = 0.25


@contextmanager
def _slot(made: Runtime) -> Iterator[None]:
    if not made.sync_slots.acquire(blocking=False):
        raise WorkersSaturated(
            "the server runs as many synchronous calls as it takes; retry shortly",
            retry_after=constants.SYNC_RETRY_AFTER,
        )
    try:
        yield
    finally:
        made.sync_slots.release()


def run_job(
    made: Runtime,
    caller: Principal,
    task: TaskName,
    model: str,
    rows: list[Any],
    params: dict[str, Any] | None = None,
) -> tuple[ModelSpec, JobStatus, list[Any]]:
    """Submit ``rows`` as a job of ``task`` on ``model`` for the caller's tenant, wait for it, and return the
    model's spec, the job's end status and its result rows (`inferq.store.results.result_rows`, with vectors for
    an embedding job) in input order."""
    from inferq.store.results import ALL_ITEMS, result_rows

    with _slot(made):
        spec = resolve_model(made.settings, model, task, tenant=True)
        options = job_options_for("", caller.tenant, None, "", priority=constants.SYNC_PRIORITY)
        submission = made.client.submit(task, model, rows, params, options=options)
        status = _wait(made, submission.job_id)
        with made.client.reader() as session:
            found = list(result_rows(session, submission.job_id, ALL_ITEMS, with_vectors=task is TaskName.EMBEDDING))
        return spec, status, found


def _wait(made: Runtime, job_id: str) -> JobStatus:
    deadline = time.monotonic() + made.settings.sync_timeout
    pause = FIRST_POLL
    while True:
        status = made.client.status(job_id)
        if status.finished:
            return status
        if time.monotonic() > deadline:
            made.client.cancel(job_id)
            raise WorkersSaturated(
                f"the request did not finish within {made.settings.sync_timeout:g}s (workers busy); retry shortly",
                retry_after=constants.SYNC_RETRY_AFTER,
            )
        time.sleep(pause)
        pause = min(LAST_POLL, pause * 2)


def failed_items(status: JobStatus, rows: list[Any]) -> tuple[str, str] | None:
    """The first failure of a finished call's job (code, message), or ``None`` when every item succeeded."""
    if status.state is JobState.FAILED and status.error is not None:
        return status.error.get("code", "inference_error"), status.error.get("message", "")
    for row in rows:
        if row.status != "succeeded":
            return row.error_code or "inference_error", row.error_message or "the request did not run"
    return None
