"""The soak's system: a private database behind a cuttable TCP proxy, a private broker, real worker processes."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg

from inferq import migrate
from inferq.settings import Settings

log = logging.getLogger(__name__)

#: What Celery logs (at INFO) once a worker consumes.
_READY = b" ready."


@contextmanager
def private_database(admin_url: str) -> Iterator[str]:
    """A new PostgreSQL database, migrated; dropped afterwards."""
    name = f"inferq_soak_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base, _, _ = admin_url.rpartition("/")
    url = f"{base}/{name}"
    try:
        migrate.upgrade(Settings(database_url=url))
        yield url
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def proxied(url: str, port: int) -> str:
    """``url`` with its host and port replaced by the proxy's."""
    parts = urlsplit(url)
    user = f"{parts.username}@" if parts.username else ""
    return parts._replace(netloc=f"{user}127.0.0.1:{port}").geturl()


@dataclass
class WorkerConfig:
    pool: str
    concurrency: int

    def args(self) -> list[str]:
        return ["--pool", self.pool, "--concurrency", str(self.concurrency)]


#: The workers' configurations, taken in turn: mixed pools and concurrency.
CONFIGS = [WorkerConfig("prefork", 2), WorkerConfig("prefork", 1), WorkerConfig("threads", 2), WorkerConfig("solo", 1)]


@dataclass
class Worker:
    name: str
    config: WorkerConfig
    proc: subprocess.Popen[bytes]
    log_path: Path
    started: float = field(default_factory=time.monotonic)

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def children(self) -> list[int]:
        """Pool processes (direct children of the main process)."""
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            with suppress(OSError):
                stat = (entry / "stat").read_text()
                ppid = int(stat.rsplit(")", 1)[1].split()[1])
                if ppid == self.proc.pid:
                    found.append(int(entry.name))
        return found

    def owns(self, pid: int) -> bool:
        try:
            return os.getpgid(pid) == self.proc.pid
        except OSError:
            return False


class Workers:
    """Real ``inferq worker`` processes, each in a process group of its own, logs under ``log_dir``."""

    def __init__(self, env: dict[str, str], log_dir: Path, models: str) -> None:
        self.env = {**os.environ, **env, "PYTHONUNBUFFERED": "1"}
        self.log_dir = log_dir
        self.models = models
        self.all: list[Worker] = []
        self._count = 0

    @property
    def live(self) -> list[Worker]:
        return [w for w in self.all if w.alive]

    def start(self, config: WorkerConfig | None = None) -> Worker:
        config = config or CONFIGS[self._count % len(CONFIGS)]
        name = f"w{self._count}"
        self._count += 1
        path = self.log_dir / f"{name}.log"
        out = open(path, "wb")  # noqa: SIM115 - the worker writes it for its whole life
        proc = subprocess.Popen(
            [sys.executable, "-m", "inferq.cli", "worker", "--models", self.models, *config.args(), "-n", f"{name}@%h"],
            env=self.env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        out.close()
        worker = Worker(name, config, proc, path)
        self.all.append(worker)
        log.info("started worker %s (pid %d, %s x%d)", name, proc.pid, config.pool, config.concurrency)
        return worker

    def wait_ready(self, workers: list[Worker], timeout: float = 600) -> None:
        """Until each worker consumes and has its models loaded (in each pool process under prefork, after the
        worker says ready; the solo and threads pools load them in the main process before it does)."""
        last = f"loaded {self.models.split(',')[-1]} ".encode()
        deadline = time.monotonic() + timeout
        for w in workers:
            # The solo and threads pools load their models before the worker says ready.
            needed = w.config.concurrency if w.config.pool == "prefork" else 0
            while True:
                text = w.log_path.read_bytes()
                if _READY in text and text.count(last) >= needed:
                    break
                if not w.alive:
                    raise RuntimeError(f"worker {w.name} exited:\n{w.log_path.read_text(errors='replace')[-3000:]}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"worker {w.name} not ready after {timeout}s")
                time.sleep(0.2)

    def worker_of(self, pid: int) -> Worker | None:
        return next((w for w in self.live if w.owns(pid)), None)

    def stop_all(self, timeout: float = 60) -> None:
        for w in self.live:
            with suppress(ProcessLookupError):
                os.killpg(w.proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for w in self.all:
            try:
                w.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with suppress(ProcessLookupError):
                    os.killpg(w.proc.pid, signal.SIGKILL)
                w.proc.wait()
            # A killed worker's pool processes may outlive it briefly (orphans of a SIGKILLed main process).
            with suppress(ProcessLookupError):
                os.killpg(w.proc.pid, signal.SIGKILL)

    def logs(self) -> str:
        return "".join(w.log_path.read_text(errors="replace") for w in self.all)


def worker_env(
    database_url: str, broker_url: str, queue: str, registry: dict[str, Any], **extra: Any
) -> dict[str, str]:
    env = {
        "INFERQ_DATABASE_URL": database_url,
        "INFERQ_BROKER_URL": broker_url,
        "INFERQ_DEFAULT_QUEUE": queue,
        "INFERQ_MODELS": json.dumps(registry),
        # Small micro-batches: a chunk has several, so that kills, SIGTERMs and cancellations land between them.
        "INFERQ_MAX_BATCH_SIZE": "8",
        # One torch thread a process: several workers share a small machine.
        "OMP_NUM_THREADS": "1",
    }
    env.update({f"INFERQ_{k.upper()}": str(v) for k, v in extra.items() if v is not None})
    return env
