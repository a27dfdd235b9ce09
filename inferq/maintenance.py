"""Keeping the record whole: re-enqueueing chunks whose broker message is gone (``inferq recover``, and the
reconciler every worker runs), and deleting old finished jobs (``inferq purge``).

SQL is the record; a broker message is only a wake-up call for one chunk. `recover` re-enqueues a chunk of a
``queued`` or ``running`` job when the chunk is not ``done`` and one of these holds:

* **lease expired**: the chunk is ``running`` and ``lease_until`` has passed. A live worker renews its lease while
  it computes (every third of ``INFERQ_LEASE_SECONDS``), so an expired lease means the worker died or lost the
  database. The chunk goes back to ``queued`` in the same statement that checks the lease, so one process wins.
* **never enqueued**: the chunk is ``queued``, has no ``enqueued_at`` (the producer stored the job but could not
  send its message) and its job was created more than ``older_than`` seconds ago.
* **message missing** (Redis only, whose messages can be listed): the chunk is ``queued``, was last enqueued more
  than ``older_than`` seconds ago, and no message for ``(job_id, seq)`` is in its queue's lists nor in the hash of
  delivered-but-unacknowledged messages. Both are read in one MULTI/EXEC; a chunk found missing is looked for
  again after ``grace`` seconds (a message moves from the list to the hash in two steps), and only then counts as
  lost.
* **message stranded** (Redis only): the chunk is ``queued`` and its only message was delivered, unacknowledged,
  longer than ``INFERQ_LEASE_SECONDS`` ago. A live worker claims a delivered chunk at once (or within a retry's
  countdown, a minute at most), which makes it ``running``: that message belongs to a worker that died, and Redis
  would hand it back only after the visibility timeout (hours).

RabbitMQ keeps durable messages across restarts, hands back the messages of a dead connection at once, and cannot
be listed: there only the lease and never-enqueued rules apply.

Re-enqueueing is idempotent and does not flood: a chunk is claimed for re-enqueueing by a conditional UPDATE that
sets ``enqueued_at`` to now, so concurrent reconcilers send one message, and the chunk is not looked at again
before ``older_than`` has passed. A message that turns out to be a duplicate is harmless: chunks are idempotent.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import logging
import re
import threading
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import click
from celery import Celery
from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session, sessionmaker

from inferq import constants
from inferq.errors import BrokerUnavailable, InvalidParameter
from inferq.schema import Chunk, Item, Job, as_utc, utcnow
from inferq.settings import Settings, get_settings
from inferq.states import FINISHED_JOB_STATES, ChunkState, JobState
from inferq.tasks import RUN_CHUNK

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


@dataclass(frozen=True)
class _Row:
    job_id: str
    seq: int
    state: str
    lease_until: dt.datetime | None
    enqueued_at: dt.datetime | None
    queue: str
    created_at: dt.datetime


def recover(
    settings: Settings,
    sessions: sessionmaker[Session],
    celery: Celery,
    *,
    job_id: str | None = None,
    older_than: float | None = None,
    grace: float = RECOVER_GRACE_SECONDS,
    dry_run: bool = False,
) -> Recovery:
    """Re-enqueue every unfinished chunk whose message is gone (the rules are in this module's docstring)."""
    min_age = settings.recover_older_than if older_than is None else older_than
    now = utcnow()
    cutoff = now - dt.timedelta(seconds=min_age)
    rows = _unfinished_chunks(sessions, job_id)
    report = Recovery(checked=len(rows))

    lost: list[LostChunk] = []
    for r in rows:
        if r.state == ChunkState.RUNNING.value and (r.lease_until is None or as_utc(r.lease_until) < now):
            lost.append(LostChunk(r.job_id, r.seq, r.queue, "lease_expired"))
    waiting = [
        r for r in rows if r.state == ChunkState.QUEUED.value and as_utc(r.enqueued_at or r.created_at) <= cutoff
    ]
    never = [r for r in waiting if r.enqueued_at is None]
    lost += [LostChunk(r.job_id, r.seq, r.queue, "never_enqueued") for r in never]
    maybe_missing = [r for r in waiting if r.enqueued_at is not None]
    if maybe_missing:
        queues = {r.queue for r in maybe_missing}
        listed = listed_chunk_messages(celery, queues, stranded_after=settings.lease_seconds)
        report.broker_listed = listed is not None
        if listed is not None:
            missing = [r for r in maybe_missing if (r.job_id, r.seq) not in listed.live]
            if missing and grace > 0:
                time.sleep(grace)
                listed = listed_chunk_messages(celery, queues, stranded_after=settings.lease_seconds) or listed
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
    return report


def _unfinished_chunks(sessions: sessionmaker[Session], job_id: str | None) -> list[_Row]:
    query = (
        select(
            Chunk.job_id,
            Chunk.seq,
            Chunk.state,
            Chunk.lease_until,
            Chunk.enqueued_at,
            Job.queue,
            Job.created_at,
        )
        .join(Job, Job.id == Chunk.job_id)
        .where(
            Job.state.in_([JobState.QUEUED.value, JobState.RUNNING.value]),
            Chunk.state.in_([ChunkState.QUEUED.value, ChunkState.RUNNING.value]),
        )
        .order_by(Chunk.job_id, Chunk.seq)
    )
    if job_id is not None:
        query = query.where(Chunk.job_id == job_id)
    with sessions() as session:
        return [_Row(*r) for r in session.execute(query)]


def _requeue(sessions: sessionmaker[Session], celery: Celery, chunk: LostChunk, cutoff: dt.datetime) -> bool:
    """Claim the chunk for re-enqueueing with one conditional UPDATE (so that one process sends), then send."""
    now = utcnow()
    key = (Chunk.job_id == chunk.job_id, Chunk.seq == chunk.seq)
    with sessions.begin() as session:
        if chunk.reason == "lease_expired":
            claimed = session.execute(
                update(Chunk)
                .where(*key, Chunk.state == ChunkState.RUNNING.value)
                .where((Chunk.lease_until.is_(None)) | (Chunk.lease_until < now))
                .values(state=ChunkState.QUEUED.value, lease_until=None, worker=None, leader=None, enqueued_at=now)
            )
        else:
            claimed = session.execute(
                update(Chunk)
                .where(*key, Chunk.state == ChunkState.QUEUED.value)
                .where((Chunk.enqueued_at.is_(None)) | (Chunk.enqueued_at <= cutoff))
                .values(enqueued_at=now)
            )
    if not claimed.rowcount:  # type: ignore[attr-defined]
        return False  # another reconciler, or a worker, got there first
    try:
        celery.send_task(RUN_CHUNK, args=[chunk.job_id, chunk.seq], queue=chunk.queue)
    except Exception as exc:
        with sessions.begin() as session:
            session.execute(update(Chunk).where(*key).values(enqueued_at=None))
        raise BrokerUnavailable(f"could not re-enqueue chunk {chunk.seq} of job {chunk.job_id}: {exc}") from exc
    return True


# -- what the broker holds ----------------------------------------------------------------------------------------


@dataclass
class Listed:
    """The chunk messages a broker holds."""

    #: ``(job_id, seq)`` of messages waiting in a queue, or delivered recently and not yet acknowledged.
    live: set[tuple[str, int]] = field(default_factory=set)
    #: ``(job_id, seq)`` of messages delivered long ago and never acknowledged (their worker is gone).
    stranded: set[tuple[str, int]] = field(default_factory=set)


def listed_chunk_messages(celery: Celery, queues: Iterable[str], *, stranded_after: float) -> Listed | None:
    """Every chunk message in ``queues`` or delivered but not yet acknowledged (stranded when delivered more than
    ``stranded_after`` seconds ago); ``None`` when the broker cannot list its messages (anything but Redis)."""
    try:
        with celery.connection_for_read() as conn:
            if conn.transport.driver_type != "redis":
                return None
            channel: Any = conn.default_channel
            names = [
                q if not pri else f"{q}{channel.sep}{pri}" for q in sorted(queues) for pri in channel.priority_steps
            ]
            with channel.client.pipeline(transaction=True) as pipe:
                for name in names:
                    pipe.lrange(name, 0, -1)
                pipe.hgetall(channel.unacked_key)
                pipe.zrange(channel.unacked_index_key, 0, -1, withscores=True)
                *lists, unacked, delivered = pipe.execute()
    except Exception as exc:
        raise BrokerUnavailable(f"could not read the broker's messages: {type(exc).__name__}: {exc}") from exc
    listed = Listed()
    for raw in (m for messages in lists for m in messages):
        if (chunk := chunk_of_message(raw)) is not None:
            listed.live.add(chunk)
    delivered_at = {_text(tag): float(score) for tag, score in delivered}
    oldest_live = time.time() - stranded_after
    for tag, raw in unacked.items():
        if (chunk := chunk_of_message(raw)) is not None:
            # No delivery time (an index entry not written yet): as good as just delivered.
            fresh = delivered_at.get(_text(tag), time.time()) >= oldest_live
            (listed.live if fresh else listed.stranded).add(chunk)
    listed.stranded -= listed.live
    return listed


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def chunk_of_message(raw: bytes | str) -> tuple[str, int] | None:
    """The ``(job_id, seq)`` a raw Redis entry carries: a queued message, or an unacknowledged one (stored as
    ``[message, exchange, routing_key]``). JSON only: anything else is not ours and is never decoded."""
    try:
        message = json.loads(raw)
        if isinstance(message, list):
            message = message[0]
        if message.get("content-type") != "application/json":
            return None
        if (message.get("headers") or {}).get("task") != RUN_CHUNK:
            return None
        body = message["body"]
        if (message.get("properties") or {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        args = json.loads(body)[0]
        return str(args[0]), int(args[1])
    except (ValueError, KeyError, TypeError, IndexError, AttributeError):
        return None


# -- the reconciler -----------------------------------------------------------------------------------------------


class Reconciler:
    """Runs `recover` every ``settings.recover_interval`` seconds in a daemon thread (a worker's main process
    starts one). Failures are logged and retried at the next round."""

    def __init__(self, settings: Settings, sessions: sessionmaker[Session], celery: Celery) -> None:
        self.settings = settings
        self.sessions = sessions
        self.celery = celery
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self.settings.recover_interval <= 0 or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._loop, name="inferq-reconciler", daemon=True)
        self._thread.start()
        log.info("reconciler: every %ss", self.settings.recover_interval)

    def stop(self, *, wait: bool = True, timeout: float = 10.0) -> None:
        """Stop after the current round; ``wait=False`` only asks (safe in a signal handler)."""
        self._stop.set()
        if wait and self._thread is not None:
            self._thread.join(timeout)

    def _loop(self) -> None:
        while not self._stop.wait(self.settings.recover_interval):
            try:
                recover(self.settings, self.sessions, self.celery)
            except Exception as exc:
                log.warning(
                    "reconciler: %s: %s; trying again in %ss", type(exc).__name__, exc, self.settings.recover_interval
                )


# -- retention ----------------------------------------------------------------------------------------------------


@dataclass
class Purge:
    jobs: list[str] = field(default_factory=list)
    items: int = 0
    #: Transactions that deleted items (each at most ``batch_rows`` of them).
    batches: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"jobs": len(self.jobs), "job_ids": self.jobs, "items": self.items, "batches": self.batches}


def purge(
    sessions: sessionmaker[Session],
    older_than: dt.timedelta,
    *,
    batch_rows: int = constants.PURGE_BATCH_ROWS,
    dry_run: bool = False,
) -> Purge:
    """Delete jobs that finished more than ``older_than`` ago, with their chunks and items.

    Items go in batches of consecutive indices, one short transaction each, before the job row: a huge job never
    holds one giant transaction, and only rows of finished jobs are ever locked, so running jobs go on."""
    cutoff = utcnow() - older_than
    finished = [s.value for s in FINISHED_JOB_STATES]
    with sessions() as session:
        jobs = session.execute(
            select(Job.id, Job.total)
            .where(Job.state.in_(finished), Job.finished_at.is_not(None), Job.finished_at < cutoff)
            .order_by(Job.finished_at)
        ).all()
    report = Purge()
    for job_id, total in jobs:
        report.jobs.append(job_id)
        if dry_run:
            report.items += total
            continue
        for start in range(0, total, batch_rows):
            with sessions.begin() as session:
                deleted = session.execute(
                    delete(Item).where(Item.job_id == job_id, Item.index >= start, Item.index < start + batch_rows)
                )
            report.items += deleted.rowcount  # type: ignore[attr-defined]
            report.batches += 1
        with sessions.begin() as session:
            session.execute(delete(Chunk).where(Chunk.job_id == job_id))
            session.execute(delete(Job).where(Job.id == job_id, Job.state.in_(finished)))
    return report


_AGE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_age(text: str) -> dt.timedelta:
    """``30d``, ``12h``, ``90m``, ``45s`` or plain seconds."""
    match = _AGE.match(text)
    if match is None:
        raise InvalidParameter(f"{text!r} is not an age such as 30d, 12h, 90m, 45s or 3600", field="older_than")
    return dt.timedelta(seconds=float(match.group(1)) * _UNIT_SECONDS[match.group(2)])


# -- commands -----------------------------------------------------------------------------------------------------


@click.command("recover")
@click.option("--job", "job_id", default=None, help="Only this job.")
@click.option(
    "--older-than",
    default=None,
    help="Only chunks enqueued at least this long ago (30s, 5m, 0 …; default: INFERQ_RECOVER_OLDER_THAN).",
)
@click.option("--dry-run", is_flag=True, help="Say what would be re-enqueued; change nothing.")
@click.option("--json", "as_json", is_flag=True)
def recover_command(job_id: str | None, older_than: str | None, dry_run: bool, as_json: bool) -> None:
    """Re-enqueue every unfinished chunk whose broker message is gone (after a Redis flush or restart, a dead
    worker, a failed enqueue). Safe to run at any time: chunks are idempotent."""
    from inferq.celery_app import create_celery
    from inferq.db import make_engine, make_sessionmaker

    settings = get_settings()
    age = parse_age(older_than).total_seconds() if older_than is not None else None
    engine = make_engine(settings)
    try:
        report = recover(
            settings,
            make_sessionmaker(engine),
            create_celery(settings, name="inferq-recover"),
            job_id=job_id,
            older_than=age,
            dry_run=dry_run,
        )
    finally:
        engine.dispose()
    if as_json:
        click.echo(json.dumps(report.to_json()))
        return
    verb = "would re-enqueue" if dry_run else "re-enqueued"
    for c in report.requeued:
        click.echo(f"{verb} job {c.job_id} chunk {c.seq} ({c.reason.replace('_', ' ')})")
    listed = (
        " (this broker's messages cannot be listed: only expired leases and unsent chunks count)"
        if report.broker_listed is False
        else ""
    )
    click.echo(f"{verb} {len(report.requeued)} of {report.checked} unfinished chunk(s){listed}", err=True)


@click.command("purge")
@click.option("--older-than", required=True, help="Delete jobs that finished longer ago than this (30d, 12h, …).")
@click.option("--batch-rows", default=constants.PURGE_BATCH_ROWS, show_default=True, help="Items per transaction.")
@click.option("--dry-run", is_flag=True, help="Say what would be deleted; delete nothing.")
@click.option("--json", "as_json", is_flag=True)
def purge_command(older_than: str, batch_rows: int, dry_run: bool, as_json: bool) -> None:
    """Delete finished jobs (succeeded, failed, cancelled) and their items; running jobs are never touched."""
    from inferq.db import make_engine, make_sessionmaker

    if batch_rows < 1:
        raise InvalidParameter("--batch-rows must be at least 1", field="batch_rows")
    engine = make_engine(get_settings())
    try:
        report = purge(make_sessionmaker(engine), parse_age(older_than), batch_rows=batch_rows, dry_run=dry_run)
    finally:
        engine.dispose()
    if as_json:
        click.echo(json.dumps(report.to_json()))
    else:
        verb = "would delete" if dry_run else "deleted"
        click.echo(f"{verb} {len(report.jobs)} job(s) and {report.items} item(s)")
