"""The webhook outbox in SQL: the delivery rows a job's end records, and each attempt at sending one.

The protocol (record, enqueue, send, at least once) is `inferq.webhooks`; these are its statements:

- `record_job_ends`: in the transaction that ended the jobs, one `WebhookDelivery` per job with a webhook URL (the
  event, the URL, the body serialized once by `event_payload`).
- `due_deliveries` and `take_due`: the reconciler's sweep of deliveries whose message was lost, each taken by a
  conditional UPDATE (of two reconcilers, one sends it).
- `claim_delivery` and `record_attempt`: one attempt at sending, claimed by a conditional UPDATE that pushes its
  ``next_attempt_at`` past the attempt's longest duration, then recorded under the delivery's row lock.
- `delivery_history`: what ``GET /v1/jobs/{id}/webhooks`` shows.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Row, select, update
from sqlalchemy.orm import Session

from inferq.schema import Job, WebhookAttempt, WebhookDelivery, as_utc, utcnow
from inferq.states import DeliveryState, JobState

#: The event a job's end sends, by the state it ended in.
EVENTS = {
    JobState.SUCCEEDED: "job.succeeded",
    JobState.FAILED: "job.failed",
    JobState.CANCELLED: "job.cancelled",
    JobState.EXPIRED: "job.expired",
}


# -- record ------------------------------------------------------------------------------------------------------


def new_delivery_id() -> str:
    """``msg_`` + 32 hex digits: the ``webhook-id`` of every attempt at one delivery."""
    return "msg_" + uuid.uuid4().hex


def event_payload(job: Job) -> str:
    """The body of a job's end event, serialized once (every attempt sends these bytes)."""
    state = JobState(job.state)

    def iso(t: dt.datetime | None) -> str | None:
        return as_utc(t).isoformat() if t is not None else None

    event = {
        "type": EVENTS[state],
        "timestamp": iso(job.finished_at) or utcnow().isoformat(),
        "data": {
            "id": job.id,
            "state": state.value,
            "task": job.task,
            "model": job.model,
            "total": job.total,
            "succeeded": job.succeeded,
            "failed": job.failed,
            "metadata": dict(job.meta or {}),
            "created_at": iso(job.created_at),
            "started_at": iso(job.started_at),
            "finished_at": iso(job.finished_at),
            "error": {"code": job.error_code, "message": job.error or ""} if job.error_code else None,
        },
    }
    return json.dumps(event, ensure_ascii=False, separators=(",", ":"))


def record_job_ends(session: Session, job_ids: Sequence[str]) -> list[str]:
    """Insert the delivery of each of ``job_ids`` that has a webhook URL; the ids of the deliveries made.

    The caller passes only jobs that THIS transaction has just ended, by a guarded UPDATE whose rowcount or
    RETURNING said so: the job row stays locked until the commit, so no other transaction can end it too, and a
    job's end makes exactly one delivery. Flushed in the caller's transaction; the caller enqueues the ids after
    its commit (`inferq.webhooks.send_deliveries`)."""
    if not job_ids:
        return []
    jobs = session.scalars(
        select(Job)
        .where(Job.id.in_(list(job_ids)), Job.webhook_url.is_not(None))
        .order_by(Job.id)
        .execution_options(populate_existing=True)
    ).all()
    made = []
    now = utcnow()
    for job in jobs:
        if job.webhook_url is None or job.state not in EVENTS:
            continue
        delivery = WebhookDelivery(
            id=new_delivery_id(),
            job_id=job.id,
            tenant=job.tenant,
            event=EVENTS[JobState(job.state)],
            url=job.webhook_url,
            payload=event_payload(job),
            state=DeliveryState.PENDING,
            attempts=0,
            next_attempt_at=now,
            created_at=now,
        )
        session.add(delivery)
        made.append(delivery.id)
    session.flush()
    return made


# -- the reconciler's sweep ----------------------------------------------------------------------------------------


def due_deliveries(session: Session, due_before: dt.datetime, limit: int) -> Sequence[Row[str, dt.datetime | None]]:
    """The pending deliveries due before ``due_before``, oldest first, at most ``limit``: their ``id`` and
    ``next_attempt_at``, read by name."""
    return session.execute(
        select(WebhookDelivery.id, WebhookDelivery.next_attempt_at)
        .where(WebhookDelivery.state == DeliveryState.PENDING, WebhookDelivery.next_attempt_at <= due_before)
        .order_by(WebhookDelivery.next_attempt_at)
        .limit(limit)
    ).all()


def take_due(session: Session, delivery_id: str, due_at: dt.datetime | None, now: dt.datetime) -> bool:
    """Take a due delivery for re-enqueueing: one conditional UPDATE that sets its ``next_attempt_at`` to ``now``
    if it is still pending and still due at ``due_at`` (what `due_deliveries` read). False: it was sent, or taken
    by another reconciler, meanwhile."""
    taken = session.execute(
        update(WebhookDelivery)
        .where(
            WebhookDelivery.id == delivery_id,
            WebhookDelivery.state == DeliveryState.PENDING,
            WebhookDelivery.next_attempt_at == due_at,
        )
        .values(next_attempt_at=now)
    )
    return bool(taken.rowcount)  # type: ignore[attr-defined]


# -- one attempt -----------------------------------------------------------------------------------------------


def claim_delivery(
    session: Session, delivery_id: str, now: dt.datetime, hold_until: dt.datetime
) -> WebhookDelivery | None:
    """Take a pending delivery due at ``now`` for one attempt: push its ``next_attempt_at`` to ``hold_until`` (one
    conditional UPDATE: of two senders, one wins) and read it. ``None``: gone, no longer pending, not yet due, or
    being sent by another process."""
    claimed = session.execute(
        update(WebhookDelivery)
        .where(
            WebhookDelivery.id == delivery_id,
            WebhookDelivery.state == DeliveryState.PENDING,
            WebhookDelivery.next_attempt_at <= now,
        )
        .values(next_attempt_at=hold_until)
    )
    if not claimed.rowcount:  # type: ignore[attr-defined]
        return None
    return session.get_one(WebhookDelivery, delivery_id)


@dataclass(frozen=True)
class RecordedAttempt:
    """What `record_attempt` stored."""

    #: The attempt's number (1 for the first).
    number: int
    #: The delivery's state after it.
    state: DeliveryState
    #: The delivery had ended before this attempt was recorded (another sender finished it): its state stays.
    ended_before: bool = False
    #: Still pending: seconds until the next attempt is due.
    retry_in: float | None = None


def record_attempt(
    session: Session,
    delivery_id: str,
    *,
    at: dt.datetime,
    status_code: int | None,
    error: str | None,
    duration: float,
    retry_delays: Sequence[float],
) -> RecordedAttempt | None:
    """Store an attempt and what follows from it, under the delivery's row lock (numbered after the attempts
    already stored, so that a late second sender's attempt is kept too): no ``error`` → ``delivered``; else the next
    attempt is due after ``retry_delays[number]``, or the delivery is ``failed`` after the last delay. ``None``: the
    delivery is gone (its job was purged meanwhile)."""
    row = session.scalar(select(WebhookDelivery).where(WebhookDelivery.id == delivery_id).with_for_update())
    if row is None:
        return None
    number = row.attempts + 1
    session.add(
        WebhookAttempt(
            delivery_id=row.id, number=number, at=at, status_code=status_code, error=error, duration=duration
        )
    )
    row.attempts = number
    if row.state != DeliveryState.PENDING:
        # Another sender finished it meanwhile: this attempt is kept, the outcome stays.
        return RecordedAttempt(number, DeliveryState(row.state), ended_before=True)
    if error is None:
        row.state, row.delivered_at, row.next_attempt_at = DeliveryState.DELIVERED, utcnow(), None
        return RecordedAttempt(number, DeliveryState.DELIVERED)
    if number >= len(retry_delays):
        row.state, row.next_attempt_at = DeliveryState.FAILED, None
        return RecordedAttempt(number, DeliveryState.FAILED)
    row.next_attempt_at = utcnow() + dt.timedelta(seconds=retry_delays[number])
    return RecordedAttempt(number, DeliveryState.PENDING, retry_in=retry_delays[number])


# -- reading -----------------------------------------------------------------------------------------------------


def delivery_history(session: Session, job_id: str) -> list[dict[str, Any]]:
    """The job's webhook deliveries (oldest first), each with its attempts, as ``GET /v1/jobs/{id}/webhooks``
    shows them: plain JSON values, times as ISO 8601 UTC strings."""

    def iso(t: dt.datetime | None) -> str | None:
        return as_utc(t).isoformat() if t is not None else None

    deliveries = session.scalars(
        select(WebhookDelivery)
        .where(WebhookDelivery.job_id == job_id)
        .order_by(WebhookDelivery.created_at, WebhookDelivery.id)
    ).all()
    attempts: dict[str, list[dict[str, Any]]] = {d.id: [] for d in deliveries}
    if deliveries:
        for a in session.scalars(
            select(WebhookAttempt)
            .where(WebhookAttempt.delivery_id.in_(list(attempts)))
            .order_by(WebhookAttempt.delivery_id, WebhookAttempt.number)
        ):
            attempts[a.delivery_id].append(
                {
                    "number": a.number,
                    "at": iso(a.at),
                    "status_code": a.status_code,
                    "error": a.error,
                    "duration": a.duration,
                }
            )
    return [
        {
            "id": d.id,
            "event": d.event,
            "url": d.url,
            "state": DeliveryState(d.state).value,
            "attempts": d.attempts,
            "created_at": iso(d.created_at),
            "delivered_at": iso(d.delivered_at),
            "next_attempt_at": iso(d.next_attempt_at) if d.state == DeliveryState.PENDING else None,
            "attempt_log": attempts[d.id],
        }
        for d in deliveries
    ]
