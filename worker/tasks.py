"""The Celery task: thin. It carries ids, delegates to the runner, and retries only transient failures."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from celery import Celery, Task
from sqlalchemy.exc import DBAPIError, OperationalError

from inferq.errors import TransientError
from inferq.tasks import RUN_CHUNK
from worker.runner import Runner

log = logging.getLogger(__name__)

#: Backoff between retries of a transiently failing chunk: 2, 4, 8 … seconds, capped at a minute.
RETRY_BASE_SECONDS = 2
RETRY_MAX_SECONDS = 60


def register_tasks(app: Celery, get_runner: Callable[[], Runner]) -> None:
    @app.task(name=RUN_CHUNK, bind=True, acks_late=True, reject_on_worker_lost=True, max_retries=None)
    def run_chunk(self: Task, job_id: str, seq: int) -> None:
        try:
            get_runner().run_chunk(job_id, int(seq))
        except (TransientError, OperationalError, DBAPIError) as exc:
            if isinstance(exc, DBAPIError) and not exc.connection_invalidated and not isinstance(exc, OperationalError):
                raise
            retries: Any = self.request.retries or 0
            countdown = min(RETRY_MAX_SECONDS, RETRY_BASE_SECONDS * 2 ** int(retries))
            log.warning("job %s chunk %s: %s; retrying in %ss", job_id, seq, type(exc).__name__, countdown)
            raise self.retry(exc=exc, countdown=countdown) from exc
