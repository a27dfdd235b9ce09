"""Re-enqueueing chunks whose broker message is gone: ``inferq recover``, and the reconciler every worker runs
(`inferq.reconciler`).

SQL is the record; a broker message is only a wake-up call for one chunk. `recover` re-enqueues a chunk of a
``queued`` or ``running`` job when the chunk is not ``done`` and one of these holds:

* **lease expired**: the chunk is ``running`` and ``lease_until`` has passed. A live worker renews its lease while
  it computes (every third of ``INFERQ_LEASE_SECONDS``), so an expired lease means the worker died or lost the
  database. The chunk goes back to ``queued`` in the same statement that checks the lease, so one process wins.
  SQL alone decides: the broker is not asked, so a dead worker's message still sitting unacknowledged in Redis
  (handed back only after the visibility timeout, hours) does not hold the chunk up. When that old message does
  come back, or the robbed worker was alive after all, the chunk's second run writes nothing twice: an item gets a
  result only while it is still ``queued``, under a row lock (`inferq.store.chunks`). The reconciler applies this
  rule every half lease (``leases_only``), the others every ``INFERQ_RECOVER_INTERVAL``.
* **never enqueued**: the chunk is ``queued``, has no ``enqueued_at`` (the producer stored the job but could not
  send its message) and its job was created more than ``older_than`` seconds ago. Not with the dispatcher
  (``INFERQ_DISPATCH=fair`` on PostgreSQL, `inferq.dispatcher`): a chunk never released is its to send, in fair
  order.
* **message missing** (brokers whose messages can be listed: Redis): the chunk is ``queued``, was last enqueued
  more than ``older_than`` seconds ago, and the broker holds no message for ``(job_id, seq)``, neither waiting in
  its queue nor delivered and unacknowledged. A chunk found missing is looked for again after ``grace`` seconds
  (a message may be caught between the two), and only then counts as lost.
* **message stranded** (the same brokers): the chunk is ``queued`` and its only message was delivered,
  unacknowledged, longer than `STRANDED_MESSAGE_SECONDS` ago. A live worker claims a delivered chunk at once (or
  within a retry's countdown, a minute at most), which makes it ``running``: that message belongs to a worker that
  died, and Redis would hand it back only after the visibility timeout (hours).

How each broker is read lives in `inferq.brokers`; a broker that cannot list its messages (RabbitMQ, see
`inferq.brokers.amqp`) leaves only the lease and never-enqueued rules.

Re-enqueueing is idempotent and does not flood: a chunk is claimed for re-enqueueing by a conditional UPDATE that
sets ``enqueued_at`` to now, so concurrent reconcilers send one message, and the chunk is not looked at again
before ``older_than`` has passed. A message that turns out to be a duplicate is harmless: chunks are idempotent.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from sqlalchemy.orm import Session, sessionmaker

from inferq import metrics
from inferq.brokers import listed_chunk_messages
from inferq.constants import STRANDED_MESSAGE_SECONDS
from inferq.errors import BrokerUnavailable
from inferq.schema import as_utc, utcnow
from inferq.settings import Settings
from inferq.states import ChunkState
from inferq.store import maintenance
from inferq.task_specs import RUN_CHUNK

if TYPE_CHECKING:
    from celery import Celery

log = logging.getLogger(__name__)

#: Seconds before a chunk whose message was not found is looked for again: far longer than a message takes to
#: move between a queue's list and the unacknowledged hash, far shorter than anything a user waits for.
RECOVER_GRACE_SECONDS = 2.0

Reason = Literal["lease_expired", "never_enqueued", "message_missing", "message_stranded"]


@dataclass(frozen=True)
class LostChunk:
    job_id: str
    seq: int
    queue: str
    reason: Reason


@dataclass
class Recovery:
    """What `recover` found and did."""

    #: Unfinished chunks (of queued or running jobs) that were looked at.
    checked: int = 0
    #: Whether the broker's messages could be listed (Redis), so that missing messages were looked for; ``None``
    #: when no queued chunk was old enough to look for.
    broker_listed: bool | None = None
    #: Chunks re-enqueued (or, with ``dry_run``, that would have been).
    requeued: list[LostChunk] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "checked": self.checked,
            "broker_listed": self.broker_listed,
            "requeued": [asdict(c) for c in self.requeued],
        }


def recover(
    settings: Settings,
    sessions: sessionmaker[Session],
    celery: Celery,
    *,
    job_id: str | None = None,
    older_than: float | None = None,
    grace: float = RECOVER_GRACE_SECONDS,
    dry_run: bool = False,
    leases_only: bool = False,
) -> Recovery:
    """Re-enqueue every unfinished chunk whose message is gone (the rules are in this module's docstring).
    ``leases_only``: apply the expired-lease rule alone (one indexed query of the expired running chunks; the
    reconciler's frequent rounds)."""
    min_age = settings.recover_older_than if older_than is None else older_than
    now = utcnow()
    cutoff = now - dt.timedelta(seconds=min_age)
    rows = _unfinished_chunks(sessions, job_id, expired_before=now if leases_only else None)
    report = Recovery(checked=len(rows))

    lost: list[LostChunk] = []
    for r in rows:
        if r.state == ChunkState.RUNNING and (r.lease_until is None or as_utc(r.lease_until) < now):
            lost.append(LostChunk(r.job_id, r.seq, r.queue, "lease_expired"))
    waiting = [r for r in rows if r.state == ChunkState.QUEUED and as_utc(r.enqueued_at or r.created_at) <= cutoff]
    # With the dispatcher, a chunk never released waits for it: sending it here would jump the fair order.
    never = [] if settings.fair_dispatch else [r for r in waiting if r.enqueued_at is None]
    lost += [LostChunk(r.job_id, r.seq, r.queue, "never_enqueued") for r in never]
    maybe_missing = [r for r in waiting if r.enqueued_at is not None]
    if maybe_missing:
        queues = {r.queue for r in maybe_missing}
        listed = listed_chunk_messages(celery, queues, stranded_after=STRANDED_MESSAGE_SECONDS)
        report.broker_listed = listed is not None
        if listed is not None:
            missing = [r for r in maybe_missing if (r.job_id, r.seq) not in listed.live]
            if missing and grace > 0:
                time.sleep(grace)
                listed = listed_chunk_messages(celery, queues, stranded_after=STRANDED_MESSAGE_SECONDS) or listed
                missing = [r for r in missing if (r.job_id, r.seq) not in listed.live]
            for r in missing:
                stranded = (r.job_id, r.seq) in listed.stranded
                lost.append(LostChunk(r.job_id, r.seq, r.queue, "message_stranded" if stranded else "message_missing"))

    for chunk in lost:
        if dry_run or _requeue(sessions, celery, chunk, cutoff):
            report.requeued.append(chunk)
    if report.requeued and not dry_run:
        log.warning(
            "re-enqueued %d chunk(s): %s",
            len(report.requeued),
            ", ".join(f"{c.job_id}/{c.seq} ({c.reason})" for c in report.requeued),
        )
        metrics.chunks_requeued(report.requeued)
    return report


def _unfinished_chunks(
    sessions: sessionmaker[Session], job_id: str | None, *, expired_before: dt.datetime | None = None
) -> Sequence[maintenance.UnfinishedChunk]:
    """`maintenance.unfinished_chunks`, in a short read of its own."""
    with sessions() as session:
        return maintenance.unfinished_chunks(session, job_id, expired_before=expired_before)


def _requeue(sessions: sessionmaker[Session], celery: Celery, chunk: LostChunk, cutoff: dt.datetime) -> bool:
    """Claim the chunk for re-enqueueing with one conditional UPDATE (so that one process sends), then send."""
    now = utcnow()
    with sessions.begin() as session:
        if chunk.reason == "lease_expired":
            claimed = maintenance.requeue_expired(session, chunk.job_id, chunk.seq, now)
        else:
            claimed = maintenance.mark_enqueued(session, chunk.job_id, chunk.seq, not_since=cutoff, now=now)
    if not claimed:
        return False  # another reconciler, or a worker, got there first
    try:
        celery.send_task(RUN_CHUNK, args=[chunk.job_id, chunk.seq], queue=chunk.queue)
    except Exception as exc:
        with sessions.begin() as session:
            maintenance.clear_enqueued(session, chunk.job_id, chunk.seq)
        raise BrokerUnavailable(f"could not re-enqueue chunk {chunk.seq} of job {chunk.job_id}: {exc}") from exc
    return True
