"""Jobs stored straight into the database (as `producer.Client.submit` stores them, without a broker)."""

from __future__ import annotations

import uuid
from typing import Any

from inferq.schema import Job
from inferq.task_specs import TaskName
from producer.client import store_job
from producer.inputs import InputRecord
from worker.runner import Runner


def a_job(runner: Runner, model: str, texts: list[str], chunk_size: int, queue: str = "q", **params: Any) -> str:
    """A classification job of ``texts``; ``params`` over the defaults."""
    job_id = uuid.uuid4().hex
    records = [InputRecord(line=i + 1, client_id=str(i), data={"text": t}) for i, t in enumerate(texts)]
    full = {"top_k": 1, "function_to_apply": "default", **params}
    with runner.sessions.begin() as session:
        store_job(session, job_id, TaskName.CLASSIFICATION, model, full, records, chunk_size, queue)
    return job_id


def job_row(runner: Runner, job_id: str) -> Job:
    with runner.sessions() as session:
        job = session.get(Job, job_id)
        assert job is not None
        return job
