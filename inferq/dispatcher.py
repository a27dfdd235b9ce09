"""The dispatcher: which chunk the workers get next, when several tenants wait (``INFERQ_DISPATCH=fair``, on
PostgreSQL).

Celery serves a queue in the order of its messages, so the order chunks reach the broker is the order of service.
A submit therefore stores its chunks and sends nothing; the dispatcher keeps at most ``INFERQ_DISPATCH_WINDOW``
messages waiting per queue (released chunks not yet claimed) and, as workers claim them, releases the next ones:

1. **Across tenants, weighted fair share.** Each tenant with chunks waiting on a queue has a virtual time there: the
   chunks released to it divided by its weight (`Tenant.weight`, 1 by default). The next chunk goes to the tenant
   with the least virtual time (ties: the one served longest ago), so that tenants of weights 3 and 1 get three chunks for one, and a
   tenant whose job arrives behind another's million chunks gets the next free slot, not the millionth: a tenant
   that had nothing waiting starts at the least virtual time of those that had (no credit for having been idle).
2. **Within a tenant, priority, then age.** Its job of the highest `Job.priority` (0–9, 5 by default) first, then
   the oldest, each job's chunks in order.
3. **Caps.** A tenant with ``max_chunks_in_flight`` never has more of its chunks released and not done at once.

It also ends the jobs whose deadline (`Job.deadline_at`) has passed: ``expired``, through the same store function
as a cancel (`inferq.store.jobs.end_job`), with their ``job.expired`` webhook. A finished job's unreleased chunks
are never sent.

**One leader.** Every worker's main process runs a `Dispatcher` thread; one at a time leads, the holder of a
PostgreSQL advisory lock (`inferq.store.locks.try_leader_lock`) on a connection of its own. A leader that dies
loses the lock with its connection, and another worker takes it within `DISPATCH_LEADER_RETRY_SECONDS`. The lock
keeps the fair order in one place; it is not what keeps a chunk from being sent twice: a chunk is released by a
conditional UPDATE of its row, locked until the broker took its message (`inferq.store.dispatch`), so two leaders
at once (a leader whose connection was cut while it sent) still release each chunk once.

**Woken, not polling.** The leader ``LISTEN``s on its lock's connection, and what changes its next plan sends a
PostgreSQL ``NOTIFY`` in the transaction that makes the change (`inferq.store.dispatch`): a submit, a worker's claim
of a released chunk (room in the window), a job ended early, a tenant's share set. A notification wakes it for a
round (a burst of them, one round), and otherwise it sleeps a heartbeat (``INFERQ_DISPATCH_HEARTBEAT``, 1 s): an idle
leader costs a round a second, not five. The heartbeat catches what no notification says: a deadline passed, a
notification sent while no leader listened (a leader that took the lock after it, which also runs a round at once),
a chunk given back to SQL by the reconciler. The end of a chunk wakes nobody (a notification per chunk written would
cost every worker for the rare capped tenant), so while a tenant's cap holds chunks back the leader looks every
``INFERQ_DISPATCH_INTERVAL`` (0.2 s), as it did for everything before.

**Sent, then committed.** A round marks its chunks released in a transaction, sends their messages, and commits.
A leader that dies between the send and the commit leaves them unreleased and the next leader sends them again: a
duplicate message, which a claim makes harmless (a chunk running or done claims nothing). The other order could
lose a chunk on RabbitMQ, whose messages cannot be listed to find it missing.

**Shown to every process.** The leader writes what its last round did (`Round.queues`) into one row
(`inferq.schema.DispatcherRound`, `inferq.store.dispatch.record_round`): one statement after a round that changed
what the row says (at most one every `DISPATCH_STATE_MIN_SECONDS`), else a heartbeat later; it deletes the row when
it stops leading. ``inferq status``, the HTTP API and the job page read it (`producer.client.dispatcher_status`); a
row older than a few leader leases reads as no leader.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import math
import os
import socket
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Engine
from sqlalchemy.orm import Session, sessionmaker

from inferq import metrics
from inferq.constants import (
    DISPATCH_LEADER_RETRY_SECONDS,
    DISPATCH_STATE_HEARTBEAT_SECONDS,
    DISPATCH_STATE_MIN_SECONDS,
)
from inferq.schema import as_utc, utcnow
from inferq.settings import Settings
from inferq.states import JobState
from inferq.store import dispatch as store
from inferq.store.jobs import end_job
from inferq.store.locks import leader_alive, try_leader_lock
from inferq.store.outbox import record_job_ends

if TYPE_CHECKING:
    from celery import Celery

log = logging.getLogger(__name__)

#: The longest the leader waits for a notification before it looks whether it was asked to stop.
_WAIT_SLICE_SECONDS = 0.5


@dataclass(frozen=True)
class Waiting:
    """A job with chunks the dispatcher may release (`inferq.store.dispatch.chunk_counts`)."""

    job_id: str
    tenant: str
    priority: int
    created_at: dt.datetime
    unreleased: int

    @property
    def order(self) -> tuple[int, dt.datetime, str]:
        """Within a tenant: highest priority first, then oldest, then by id."""
        return (-self.priority, self.created_at, self.job_id)


@dataclass
class FairShare:
    """The virtual times of weighted fair share, per queue and tenant (this leader's memory: a new leader starts
    every tenant even, which costs at most a window's worth of unevenness)."""

    #: (queue, tenant) → chunks released to the tenant on the queue ÷ its weight.
    vtime: dict[tuple[str, str], float] = field(default_factory=dict)
    #: The tenants that had chunks waiting on each queue at the previous plan.
    active: dict[str, set[str]] = field(default_factory=dict)
    #: (queue, tenant) → the number of the last pick that went to the tenant (ties go to the longest unserved).
    last_pick: dict[tuple[str, str], int] = field(default_factory=dict)
    picks: int = 0

    def plan(
        self,
        queue: str,
        room: int,
        jobs: Sequence[Waiting],
        weights: Mapping[str, int],
        headroom: Mapping[str, int | None],
    ) -> list[str]:
        """The next ``room`` chunks to release on ``queue``, as the job id of each, in order. ``weights``: a
        tenant's weight (1 when absent); ``headroom``: how many more chunks a capped tenant may have in flight
        (absent or ``None``: no cap)."""
        by_tenant: dict[str, list[Waiting]] = defaultdict(list)
        for job in sorted(jobs, key=lambda j: j.order):
            by_tenant[job.tenant].append(job)
        now_active = set(by_tenant)
        before = self.active.get(queue, set()) & now_active
        floor = min((self.vtime.get((queue, t), 0.0) for t in before), default=0.0)
        for tenant in now_active - before:
            # No credit for having been idle, no debt from long ago either.
            self.vtime[(queue, tenant)] = floor
        self.active[queue] = now_active
        left = {j.job_id: j.unreleased for j in jobs}
        room_of = {t: headroom.get(t) for t in now_active}
        picked: list[str] = []
        while len(picked) < room:
            open_tenants = [t for t in now_active if by_tenant[t] and (room_of[t] is None or (room_of[t] or 0) > 0)]
            if not open_tenants:
                break
            tenant = min(open_tenants, key=lambda t: (self.vtime[(queue, t)], self.last_pick.get((queue, t), -1), t))
            self.picks += 1
            self.last_pick[(queue, tenant)] = self.picks
            job = by_tenant[tenant][0]
            picked.append(job.job_id)
            left[job.job_id] -= 1
            if left[job.job_id] <= 0:
                by_tenant[tenant].pop(0)
            if room_of[tenant] is not None:
                room_of[tenant] = (room_of[tenant] or 0) - 1
            self.vtime[(queue, tenant)] += 1.0 / max(1, weights.get(tenant, 1))
        return picked


@dataclass
class Round:
    """What one round did."""

    #: Jobs ended ``expired``.
    expired: list[str] = field(default_factory=list)
    #: Chunks released, in the order sent: (queue, job id, seq, tenant).
    released: list[tuple[str, str, int, str]] = field(default_factory=list)
    #: Each queue with chunks in flight or held back, after the round (`QueueState`).
    queues: dict[str, QueueState] = field(default_factory=dict)
    #: It released fewer chunks than it planned (some were locked by another transaction).
    short: bool = False

    @property
    def capped(self) -> bool:
        """Chunks wait for their tenant's cap: the end of a running chunk, which wakes nobody, lets them go."""
        return any(state.held_by_cap for state in self.queues.values())


@dataclass
class QueueState:
    """One queue after a round: what `inferq.schema.DispatcherRound.queues` keeps of it."""

    window: int
    #: Released chunks not claimed yet (their message waits on the broker), and claimed ones.
    waiting: int = 0
    running: int = 0
    #: Chunks held back in SQL (not released yet); of those, chunks of tenants at their cap (named in ``capped``).
    held: int = 0
    held_by_cap: int = 0
    capped: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "window": self.window,
            "waiting": self.waiting,
            "running": self.running,
            "held": self.held,
            "held_by_cap": self.held_by_cap,
            "capped": self.capped,
        }


def dispatch_round(
    settings: Settings,
    sessions: sessionmaker[Session],
    celery: Celery,
    fair: FairShare,
    *,
    window: int | None = None,
    deadlines: bool = True,
) -> Round:
    """One round of the leader: expire the jobs past their deadline (unless ``deadlines`` is false: the leader looks
    once a heartbeat), then fill each queue's window in fair order (this module's docstring). ``window``: messages
    waiting per queue (``settings.dispatch_window``). A job past its deadline never has a chunk released, looked at
    or not."""
    from inferq.task_specs import RUN_CHUNK
    from inferq.webhooks import send_deliveries

    window = settings.dispatch_window if window is None else window
    result = Round()
    now = utcnow()
    webhooks: list[str] = []

    def read(
        session: Session,
    ) -> tuple[Sequence[store.JobChunks], list[store.JobChunks], dict[str, tuple[int, int | None]]]:
        # One read for what waits in SQL and what is in flight (the latter read even when nothing waits, for the
        # dispatcher's row); the tenants' shares only for tenants with something to release.
        counts = store.chunk_counts(session)
        pending = [c for c in counts if c.unreleased and (c.deadline_at is None or as_utc(c.deadline_at) > now)]
        shares = store.tenant_shares(session, sorted({p.tenant for p in pending})) if pending else {}
        return counts, pending, shares

    with sessions() as session:
        # The deadlines and the chunks in one session (one connection from the pool); read again after an expiry.
        due = list(store.past_deadline(session, now)) if deadlines else []
        if not due:
            counts, pending, shares = read(session)
    for job_id in due:
        with sessions.begin() as session:
            if end_job(session, job_id, JobState.EXPIRED, now):
                result.expired.append(job_id)
                webhooks += record_job_ends(session, [job_id])
    if result.expired:
        log.warning(
            "dispatcher: %d job(s) past their deadline ended expired: %s",
            len(result.expired),
            ", ".join(result.expired),
        )
    if webhooks:
        send_deliveries(celery, settings, webhooks)

    if due:
        with sessions() as session:
            counts, pending, shares = read(session)
    waiting_on: Counter[str] = Counter()
    running_on: Counter[str] = Counter()
    tenant_flight: Counter[str] = Counter()
    for row in counts:
        waiting_on[row.queue] += int(row.waiting or 0)
        running_on[row.queue] += int(row.running or 0)
        tenant_flight[row.tenant] += int(row.waiting or 0) + int(row.running or 0)
    if not pending:
        result.queues = _queue_states(window, waiting_on, running_on, [], {}, result.released)
        return result
    headroom: dict[str, int | None] = {}
    for tenant, (_, cap) in shares.items():
        headroom[tenant] = None if cap is None else max(0, cap - tenant_flight[tenant])
    weights = {tenant: weight for tenant, (weight, _) in shares.items()}
    by_queue: dict[str, list[Waiting]] = defaultdict(list)
    tenant_of: dict[str, str] = {}
    for p in pending:
        by_queue[p.queue].append(Waiting(p.id, p.tenant, p.priority, as_utc(p.created_at), int(p.unreleased)))
        tenant_of[p.id] = p.tenant

    plans: list[tuple[str, list[str]]] = []
    planned = 0
    for queue in sorted(by_queue):
        room = window - waiting_on[queue]
        if room <= 0:
            continue
        picked = fair.plan(queue, room, by_queue[queue], weights, headroom)
        for job_id in picked:  # a later queue sees what this one took of a capped tenant's room
            tenant = tenant_of[job_id]
            if headroom.get(tenant) is not None:
                headroom[tenant] = (headroom[tenant] or 0) - 1
        plans.append((queue, picked))
        planned += len(picked)
    if not any(picked for _, picked in plans):
        result.queues = _queue_states(window, waiting_on, running_on, pending, headroom, result.released)
        return result

    with sessions.begin() as session:
        sends: list[tuple[str, str, int, str]] = []
        for queue, picked in plans:
            # One release per job, then the seqs handed out in the plan's order.
            seqs: dict[str, list[int]] = {}
            for job_id, count in Counter(picked).items():
                seqs[job_id] = store.release_chunks(session, job_id, count, now)
            for job_id in picked:
                if seqs[job_id]:
                    sends.append((queue, job_id, seqs[job_id].pop(0), tenant_of[job_id]))
        with celery.producer_or_acquire() as producer:
            for queue, job_id, seq, _ in sends:
                celery.send_task(RUN_CHUNK, args=[job_id, seq], queue=queue, producer=producer)
        result.released = sends
        # Chunks another transaction held (a cancel locking its job's chunks) were skipped: look again at once.
        result.short = len(sends) < planned
    # Committed: the chunks are released. Dying before this line left them unreleased, to be sent again.
    result.queues = _queue_states(window, waiting_on, running_on, pending, headroom, result.released)
    return result


def _queue_states(
    window: int,
    waiting_on: Mapping[str, int],
    running_on: Mapping[str, int],
    pending: Sequence[store.JobChunks],
    headroom: Mapping[str, int | None],
    released: Sequence[tuple[str, str, int, str]],
) -> dict[str, QueueState]:
    """Each queue after a round: what waited or ran before it, plus what it released; what stays held back, and
    how much of that belongs to tenants whose cap is reached (``headroom`` after the round: 0)."""
    held: Counter[tuple[str, str]] = Counter()
    for p in pending:
        held[(p.queue, p.tenant)] += int(p.unreleased)
    sent: Counter[str] = Counter()
    for queue, _, _, tenant in released:
        sent[queue] += 1
        held[(queue, tenant)] -= 1
    states: dict[str, QueueState] = {}
    for queue in sorted({*waiting_on, *running_on, *(q for q, _ in held)}):
        states[queue] = QueueState(window, int(waiting_on.get(queue, 0)) + sent[queue], int(running_on.get(queue, 0)))
    for (queue, tenant), count in sorted(held.items()):
        if count <= 0:
            continue
        state = states[queue]
        state.held += count
        if headroom.get(tenant) == 0:
            state.held_by_cap += count
            state.capped.append(tenant)
    return states


@dataclass
class DispatcherState:
    """What the dispatcher of this process is doing, for logs, metrics and the job page."""

    leader: bool = False
    #: When this process became the leader, and when its last round ended.
    leader_since: dt.datetime | None = None
    last_round: dt.datetime | None = None
    #: Chunks released and jobs expired by this process since it started.
    released: int = 0
    expired: int = 0
    last_error: str | None = None

    def to_json(self) -> dict[str, Any]:
        def iso(t: dt.datetime | None) -> str | None:
            return t.isoformat() if t is not None else None

        return {
            "leader": self.leader,
            "leader_since": iso(self.leader_since),
            "last_round": iso(self.last_round),
            "released": self.released,
            "expired": self.expired,
            "last_error": self.last_error,
        }


class Dispatcher:
    """A daemon thread of a worker's main process: tries for the leader's lock every
    `DISPATCH_LEADER_RETRY_SECONDS`, and while it holds it runs `dispatch_round` when woken by a notification on
    the lock's connection (`inferq.store.dispatch.wait_for_wake`), else every ``settings.dispatch_heartbeat``
    seconds; every ``settings.dispatch_interval`` while a tenant's cap holds chunks back, and at once again after a
    round that released fewer chunks than it planned. Failures are logged and retried; a lost connection gives the
    lead up."""

    def __init__(self, settings: Settings, engine: Engine, sessions: sessionmaker[Session], celery: Celery) -> None:
        self.settings = settings
        self.engine = engine
        self.sessions = sessions
        self.celery = celery
        self.fair = FairShare()
        self.state = DispatcherState()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock_conn: Connection | None = None
        #: This process, as the dispatcher's row names its leader.
        self.name = f"{socket.gethostname()}:{os.getpid()}"
        #: What the row last said (its time aside), and when (monotonic): rewritten when that changes, or a
        #: heartbeat later.
        self._said: tuple[Any, ...] | None = None
        self._said_at = -math.inf
        #: When a round last looked for jobs past their deadline (monotonic; at most once a heartbeat).
        self._deadlines_at = -math.inf
        #: Rounds run and notifications that woke one, while this process led (for tests and logs).
        self.rounds = 0
        self.wakes = 0
        #: The lock's connection has just delivered a notification: alive, no need to ask it again.
        self._heard = False

    def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._loop, name="inferq-dispatcher", daemon=True)
        self._thread.start()
        log.info(
            "dispatcher: window %d per queue, woken by PostgreSQL's notifications, else every %ss",
            self.settings.dispatch_window,
            self.settings.dispatch_heartbeat,
        )

    def stop(self, *, wait: bool = True, timeout: float = 10.0) -> None:
        """Stop after the current round; ``wait=False`` only asks (safe in a signal handler)."""
        self._stop.set()
        if wait and self._thread is not None:
            self._thread.join(timeout)
            self._give_up()

    def _loop(self) -> None:
        while not self._stop.is_set():
            if not self._lead():
                self._stop.wait(DISPATCH_LEADER_RETRY_SECONDS)
                continue
            try:
                # Deadlines once a heartbeat, not at every woken round (a claim wakes one): an expiry is due within
                # a heartbeat, as it was when every round was one.
                deadlines = time.monotonic() - self._deadlines_at >= self.settings.dispatch_heartbeat
                done = dispatch_round(self.settings, self.sessions, self.celery, self.fair, deadlines=deadlines)
                if deadlines:
                    self._deadlines_at = time.monotonic()
                self.rounds += 1
                self.state.last_round = utcnow()
                self.state.released += len(done.released)
                metrics.chunks_dispatched(done.released)
                self.state.expired += len(done.expired)
                self._publish(done)
                self.state.last_error = None
                if done.released:
                    log.debug("dispatcher: released %d chunk(s)", len(done.released))
            except Exception as exc:
                self.state.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("dispatcher: round failed: %s; trying again", self.state.last_error)
                done = Round()
            if done.short:
                continue
            self._sleep(self.settings.dispatch_interval if done.capped else self.settings.dispatch_heartbeat)

    def _sleep(self, seconds: float) -> None:
        """Until a notification comes on the lock's connection (what came meanwhile, since the last round, counts:
        PostgreSQL queued it), ``seconds`` pass, or the thread is asked to stop. Waited for in slices, so that a
        stop is seen within one; a slice's wait is one ``poll`` of a socket, nothing on the database."""
        deadline = time.monotonic() + seconds
        while not self._stop.is_set() and self._lock_conn is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            try:
                woken = store.wait_for_wake(self._lock_conn, min(left, _WAIT_SLICE_SECONDS))
            except Exception as exc:
                log.warning("dispatcher: leader's connection lost while waiting: %s: %s", type(exc).__name__, exc)
                self._give_up()
                return
            if woken:
                self.wakes += 1
                self._heard = True
                return

    def _publish(self, done: Round) -> None:
        """Write the round into the dispatcher's row (`inferq.store.dispatch.record_round`) when what it says
        changed, or when the row is a heartbeat old: at most one statement a round."""
        queues = {queue: state.to_json() for queue, state in done.queues.items()}
        said = (self.state.leader_since, len(done.released), queues)
        heartbeat = min(self.settings.dispatch_heartbeat, DISPATCH_STATE_HEARTBEAT_SECONDS)
        age = time.monotonic() - self._said_at
        # Changed: written, but not more often than `DISPATCH_STATE_MIN_SECONDS` (a claim wakes a round, and every
        # round that released something changed the row); what waits is written by a later round, a heartbeat at
        # most. Unchanged: rewritten a heartbeat later, so its readers see a live leader.
        if age < (DISPATCH_STATE_MIN_SECONDS if said != self._said else heartbeat):
            return
        assert self.state.leader_since is not None and self.state.last_round is not None
        self._said, self._said_at = said, time.monotonic()
        try:
            with self.sessions.begin() as session:
                store.record_round(
                    session,
                    leader=self.name,
                    leader_since=self.state.leader_since,
                    last_round=self.state.last_round,
                    released=len(done.released),
                    queues=queues,
                )
        except Exception as exc:
            # The round itself went through: only its row is behind (written again at the next change, or a
            # heartbeat later).
            log.warning("dispatcher: its state not recorded: %s: %s", type(exc).__name__, exc)

    def _lead(self) -> bool:
        """Whether this process leads now: it holds the lock on a live connection, or has just taken it."""
        try:
            if self._lock_conn is not None and self._heard:
                # PostgreSQL spoke on it a moment ago (a notification): a woken round spares the round trips.
                self._heard = False
                return True
            if self._lock_conn is not None:
                leader_alive(self._lock_conn)
                self._lock_conn.commit()
                return True
            conn = self.engine.connect()
            try:
                taken = try_leader_lock(conn)
                conn.commit()
            except Exception:
                conn.close()
                raise
            if not taken:
                conn.close()
                return False
            try:
                # Before the first round: a change committed from now on wakes this leader, and the first round
                # sees every change committed before.
                store.listen(conn)
                conn.commit()
            except Exception:
                conn.close()
                raise
            self._lock_conn = conn
            self.fair = FairShare()
            self.state.leader, self.state.leader_since = True, utcnow()
            metrics.dispatcher_leads(True)
            log.info("dispatcher: this worker leads")
            return True
        except Exception as exc:
            log.warning("dispatcher: leader's lock lost or unreachable: %s: %s", type(exc).__name__, exc)
            self._give_up()
            return False

    def _give_up(self) -> None:
        if self._lock_conn is not None:
            with contextlib.suppress(Exception):
                self._lock_conn.invalidate()  # the connection goes, and PostgreSQL lets the lock go with it
            self._lock_conn = None
        if self.state.leader:
            log.info("dispatcher: this worker no longer leads")
            with contextlib.suppress(Exception), self.sessions.begin() as session:
                store.forget_leader(session, self.name)  # else it reads as leading until it is stale
        # A next lead writes its row and looks at the deadlines at its first round.
        self._said, self._said_at, self._deadlines_at = None, -math.inf, -math.inf
        self._heard = False
        self.state.leader, self.state.leader_since = False, None
        metrics.dispatcher_leads(False)
