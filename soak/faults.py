"""The faults, and their schedule drawn from the seed: which kind, at what second of the run, with which draws."""

from __future__ import annotations

import logging
import os
import random
import signal
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import redis
from sqlalchemy import select

from inferq.schema import Chunk, Job
from inferq.states import UNFINISHED_JOB_STATES, ChunkState
from inferq.task_specs import RUN_CHUNK

if TYPE_CHECKING:
    from celery import Celery
    from sqlalchemy.orm import Session, sessionmaker

    from soak.cluster import Workers
    from tests.support.brokers import PrivateRedis
    from tests.support.tcp_proxy import TcpProxy

log = logging.getLogger(__name__)

#: Every kind of fault, as ``--faults`` names them.
KINDS = (
    "kill_child",  # SIGKILL of one pool process (of a prefork worker), mid-chunk when one runs
    "kill_worker",  # SIGKILL of a whole worker, main process and pool; a new one is started
    "term_worker",  # SIGTERM of a worker (warm shutdown); a new one is started
    "redis_restart",  # the broker's redis-server killed and started again empty
    "db_cut",  # the database's TCP proxy cut for a few seconds
    "late_worker",  # one more worker joins
    "duplicate",  # a second message for a chunk of an unfinished job
)

#: Kinds that need a Redis broker of the soak's own.
REDIS_ONLY = {"redis_restart"}


@dataclass(frozen=True)
class Fault:
    at: float
    kind: str
    #: A draw in [0, 1) that picks the target (worker, chunk) among those present then.
    pick: float
    #: Seconds the fault lasts (db_cut).
    hold: float


@dataclass
class Injected:
    at: float
    kind: str
    detail: str


def schedule(seed: int, kinds: list[str], start: float, end: float, every: float) -> list[Fault]:
    """About one fault every ``every`` seconds between ``start`` and ``end`` (seconds of the run), kinds taken in
    shuffled rounds so that every kind comes early; reproducible from ``seed``."""
    rng = random.Random(f"faults-{seed}")
    if not kinds or end <= start:
        return []
    count = max(len(kinds), int((end - start) / every))
    times = sorted(rng.uniform(start, end) for _ in range(count))
    order: list[str] = []
    while len(order) < count:
        round_ = list(kinds)
        rng.shuffle(round_)
        order += round_
    return [
        Fault(round(t, 2), k, rng.random(), round(rng.uniform(2.0, 6.0), 1))
        for t, k in zip(times, order[:count], strict=True)
    ]


@dataclass
class Injector:
    """Applies faults to the running system and records what it did."""

    workers: Workers
    sessions: sessionmaker[Session]
    celery: Celery
    proxy: TcpProxy
    redis: PrivateRedis | None
    max_workers: int
    done: list[Injected] = field(default_factory=list)
    skipped: Counter[str] = field(default_factory=Counter)
    #: Per Redis restart, the chunk messages its queues held just before: lost with it, each one's chunk is for
    #: the reconcilers to re-enqueue (none when the workers had taken every message already).
    messages_lost: list[int] = field(default_factory=list)

    def run(self, faults: list[Fault], t0: float, stop: threading.Event) -> None:
        for fault in faults:
            if stop.wait(max(0.0, t0 + fault.at - time.monotonic())):
                return
            try:
                detail = getattr(self, fault.kind)(fault)
            except Exception as exc:  # a fault that could not be applied is reported, never fatal
                detail = None
                log.warning("fault %s failed: %s: %s", fault.kind, type(exc).__name__, exc)
            if detail is None:
                self.skipped[fault.kind] += 1
            else:
                at = round(time.monotonic() - t0, 1)
                self.done.append(Injected(at, fault.kind, detail))
                log.info("t=%6.1fs fault %s: %s", at, fault.kind, detail)

    # -- the faults ----------------------------------------------------------------------------------------

    def kill_child(self, fault: Fault) -> str | None:
        prefork = [w for w in self.workers.live if w.config.pool == "prefork"]
        busy = [(w, pid) for w in prefork for pid in self._running_pids() if w.owns(pid) and pid != w.proc.pid]
        if busy:
            worker, pid = busy[int(fault.pick * len(busy))]
            what = "mid-chunk"
        else:
            children = [(w, pid) for w in prefork for pid in w.children()]
            if not children:
                return None
            worker, pid = children[int(fault.pick * len(children))]
            what = "idle"
        os.kill(pid, signal.SIGKILL)
        return f"pool process {pid} of {worker.name} ({what})"

    def kill_worker(self, fault: Fault) -> str | None:
        return self._replace(fault, signal.SIGKILL)

    def term_worker(self, fault: Fault) -> str | None:
        return self._replace(fault, signal.SIGTERM)

    def _replace(self, fault: Fault, sig: signal.Signals) -> str | None:
        live = self.workers.live
        if not live:
            return None
        busy = {w.name for w in live for pid in self._running_pids() if w.owns(pid)}
        pool = [w for w in live if w.name in busy] or live
        victim = pool[int(fault.pick * len(pool))]
        os.killpg(victim.proc.pid, sig)
        if sig == signal.SIGTERM:
            # A warm shutdown: its running micro-batch finishes, the rest goes back; then it exits.
            victim.proc.wait(timeout=120)
        else:
            victim.proc.wait(timeout=30)
        new = self.workers.start(victim.config)
        return f"{victim.name} ({victim.config.pool} x{victim.config.concurrency}, {sig.name}); {new.name} started"

    def redis_restart(self, fault: Fault) -> str | None:
        if self.redis is None:
            return None
        waiting = self._queued_messages()
        self.redis.restart_empty()
        self.messages_lost.append(waiting)
        return f"redis-server on port {self.redis.port} restarted empty ({waiting} messages waiting in its queues)"

    def _queued_messages(self) -> int:
        """Messages in the broker's queues (not those the workers hold): every list of this private Redis is a
        queue (kombu keeps its bindings in sets and the messages workers hold in hashes)."""
        assert self.redis is not None
        client = redis.Redis.from_url(self.redis.url)
        try:
            return sum(int(client.llen(k)) for k in client.scan_iter() if client.type(k) == b"list")
        finally:
            client.close()

    def db_cut(self, fault: Fault) -> str | None:
        self.proxy.cut()
        time.sleep(fault.hold)
        self.proxy.restore()
        return f"database unreachable for {fault.hold}s"

    def late_worker(self, fault: Fault) -> str | None:
        if len(self.workers.live) >= self.max_workers:
            return None
        new = self.workers.start()
        return f"{new.name} ({new.config.pool} x{new.config.concurrency}) joined"

    def duplicate(self, fault: Fault) -> str | None:
        chunks = select(Chunk.job_id, Chunk.seq, Chunk.state, Job.queue).join(Job, Job.id == Chunk.job_id)
        with self.sessions() as session:
            rows = session.execute(
                chunks.where(Job.state.in_(UNFINISHED_JOB_STATES)).order_by(Chunk.job_id, Chunk.seq)
            ).all()
            if not rows:
                # Nothing unfinished at this instant (the workers caught up with the stream): the second message
                # goes to the chunk that finished last, as a duplicate delivered after its chunk is done.
                rows = session.execute(
                    chunks.where(Chunk.finished_at.is_not(None)).order_by(Chunk.finished_at.desc()).limit(1)
                ).all()
        if not rows:
            return None
        running = [r for r in rows if r.state == ChunkState.RUNNING]
        job_id, seq, state, queue = (running or rows)[int(fault.pick * len(running or rows))]
        self.celery.send_task(RUN_CHUNK, args=[job_id, seq], queue=queue)
        return f"second message for chunk {job_id[:8]}/{seq} ({state.value})"

    def _running_pids(self) -> list[int]:
        with self.sessions() as session:
            workers = session.scalars(select(Chunk.worker).where(Chunk.state == ChunkState.RUNNING)).all()
        pids = []
        for w in workers:
            if w and ":" in w:
                try:
                    pids.append(int(w.rsplit(":", 1)[1]))
                except ValueError:
                    continue
        return sorted(set(pids))

    def summary(self) -> dict[str, Any]:
        return {
            "injected": dict(Counter(f.kind for f in self.done)),
            "skipped": dict(self.skipped),
            "log": [asdict(f) for f in self.done],
            "messages_lost_in_redis_restarts": list(self.messages_lost),
        }
