"""The Celery app factory shared by producers (which only send) and workers (which also register the task)."""

from __future__ import annotations

from celery import Celery
from kombu import Queue

from inferq.settings import Settings
from inferq.task_specs import DELIVER_WEBHOOK


def create_celery(settings: Settings, *, name: str = "inferq") -> Celery:
    """A Celery app configured for inferq: JSON only, late acks, prefetch 1, no result backend.

    Nothing connects until a message is sent or a worker starts.
    """
    app = Celery(name, broker=settings.broker_url, set_as_current=False)
    app.conf.update(
        # JSON only: a pickled message is refused, never executed.
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        # SQL is the record; Celery keeps no results.
        result_backend=None,
        task_ignore_result=True,
        task_store_errors_even_if_ignored=False,
        # A chunk is acknowledged only after its results are committed; a worker that dies mid-chunk
        # hands the message back (the task is idempotent, so a second run writes nothing twice).
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        broker_transport_options=broker_transport_options(settings),
        broker_connection_retry_on_startup=True,
        task_default_queue=settings.default_queue,
        task_queues=[Queue(settings.default_queue)],
        # Webhook deliveries have a queue of their own, consumed by every `inferq worker` (`inferq.webhooks`). Made
        # as a missing queue is (its own exchange and routing key): declared here as a bare `Queue` it would share
        # the default queue's binding, and each message would land in both queues.
        task_routes={DELIVER_WEBHOOK: {"queue": settings.webhook_queue}},
        # A delivery's POST is cut at its deadline (`inferq.webhooks.post`); the hard limit kills the process of one
        # that hangs anywhere else (its message goes back to the broker, and the claim keeps a second sender off).
        task_annotations={DELIVER_WEBHOOK: {"time_limit": webhook_time_limit(settings)}},
        task_create_missing_queues=True,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        task_send_sent_event=False,
        # Models take memory: do not recycle the process that holds them.
        worker_max_tasks_per_child=None,
        worker_cancel_long_running_tasks_on_connection_loss=False,
    )
    return app


def broker_transport_options(settings: Settings) -> dict[str, object]:
    url = settings.broker_url
    if url.startswith(("redis", "rediss", "sentinel", "sqs")):
        # Above the worst chunk time, or Redis would hand a slow chunk to a second worker.
        return {"visibility_timeout": settings.visibility_timeout}
    # AMQP tracks unacknowledged messages per connection; the SQLAlchemy transport takes no options.
    return {}


def webhook_time_limit(settings: Settings) -> float:
    """Seconds a webhook delivery task may run before Celery kills its process: the attempt's deadline and a margin
    for claiming, the URL's DNS lookup and recording the attempt (less than the claim's hold, so that a killed
    attempt's delivery is not sent by another process meanwhile)."""
    from inferq.webhooks import TIME_LIMIT_MARGIN_SECONDS

    return settings.webhook_timeout + TIME_LIMIT_MARGIN_SECONDS
