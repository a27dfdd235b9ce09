"""The Celery tasks: thin. They carry ids, delegate to the runner (a chunk) or `inferq.webhooks.deliver` (a webhook
delivery), and retry only transient failures.

A chunk handed back at a warm shutdown is rejected with ``requeue=True``. With ``acks_late`` the message is still
unacknowledged while the task runs, so the rejection returns that very message to the broker: under prefork the
child reports the `Reject` to the main process, which owns the broker channel and rejects the delivery (Redis puts
the message back at the head of its queue in one transaction, RabbitMQ requeues it). Sending a new message and
acknowledging the old one would need a second broker connection in the child and leave a moment with two copies;
a rejection leaves neither a gap nor a copy, and if the main process dies first the message is still
unacknowledged and comes back as for any lost worker.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from celery import Celery, Task
from celery.exceptions import Reject

from inferq import constants, logs, metrics
from inferq.errors import DatabaseUnavailable, TransientError, backoff
from inferq.store.chunks import ChunkOutcome
from inferq.task_specs import DELIVER_WEBHOOK, RUN_CHUNK
from inferq.webhooks import Sent, deliver, send_deliveries
from worker.runner import Runner

log = logging.getLogger(__name__)

#: Backoff between retries of a transiently failing chunk: 2, 4, 8 … seconds, capped at a minute.
RETRY_BASE_SECONDS = 2
RETRY_MAX_SECONDS = 60


def register_tasks(app: Celery, get_runner: Callable[[], Runner]) -> None:
    @app.task(name=RUN_CHUNK, bind=True, acks_late=True, reject_on_worker_lost=True, max_retries=None)
    def run_chunk(self: Task, job_id: str, seq: int) -> None:
        try:
            with logs.context(job_id=job_id, chunk=int(seq)), metrics.chunk_in_progress():
                report = get_runner().run_chunk(job_id, int(seq))
        except TransientError as exc:
            metrics.chunk_delivered("retried")
            if isinstance(exc, DatabaseUnavailable):
                metrics.database_retry("chunk")
            # The database's failures arrive as DatabaseUnavailable (`inferq.db`): unreachable, or a transaction it
            # rolled back (a deadlock); the log says which, and names the driver's error.
            what = exc.kind if isinstance(exc, DatabaseUnavailable) else type(exc).__name__
            countdown = backoff(int(self.request.retries or 0), RETRY_BASE_SECONDS, RETRY_MAX_SECONDS)
            log.warning("job %s chunk %s: %s (%s); retrying in %ss", job_id, seq, exc.message, what, countdown)
            raise self.retry(exc=exc, countdown=countdown) from exc
        metrics.chunk_delivered(report.outcome)
        if report.webhooks:
            # The jobs this chunk ended recorded their webhooks in the write that committed: enqueue them now.
            send_deliveries(self.app, get_runner().settings, report.webhooks)
        if report.outcome is ChunkOutcome.DEFERRED:
            # Another worker's batch is running this chunk: look again later. The retry is a new message on the
            # broker before this one is acknowledged, so the chunk always has a message until it is done.
            countdown = backoff(
                int(self.request.retries or 0),
                constants.COALESCED_RECHECK_SECONDS,
                constants.COALESCED_RECHECK_MAX_SECONDS,
            )
            raise self.retry(countdown=countdown)
        if report.outcome is ChunkOutcome.HANDED_BACK:
            log.warning("job %s chunk %s: handed back to the broker (worker shutting down)", job_id, seq)
            raise Reject(f"job {job_id} chunk {seq} handed back at shutdown", requeue=True)

    @app.task(name=DELIVER_WEBHOOK, bind=True, acks_late=True, reject_on_worker_lost=True, max_retries=None)
    def deliver_webhook(self: Task, delivery_id: str) -> None:
        runner = get_runner()
        try:
            sent = deliver(runner.settings, runner.sessions, delivery_id)
        except TransientError as exc:
            countdown = backoff(int(self.request.retries or 0), RETRY_BASE_SECONDS, RETRY_MAX_SECONDS)
            log.warning("webhook %s: %s; retrying in %ss", delivery_id, type(exc).__name__, countdown)
            raise self.retry(exc=exc, countdown=countdown) from exc
        soon = sent.retry_in is not None and sent.retry_in <= constants.WEBHOOK_COUNTDOWN_MAX_SECONDS
        if sent.outcome is Sent.RETRYING and soon:
            # A new message for the next attempt; a later one is sent by a reconciler once it is due.
            send_deliveries(self.app, runner.settings, [delivery_id], countdown=sent.retry_in)
