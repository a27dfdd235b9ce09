"""Running jobs in fault tests: the environment of real workers, a client on it, inputs, the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

from inferq.settings import Settings
from producer.client import Client
from tests.support.tiny_models import corpus

#: Sequences per micro-batch for the workers of these tests: small, so that a chunk has many micro-batches and a
#: fault (a kill, a SIGTERM, a cancellation) lands between two of them.
MICRO_BATCH = 4


def worker_env(
    database_url: str, broker_url: str, queue: str, registry: dict[str, Any], **extra: str | int
) -> dict[str, str]:
    """The environment of a worker (and of a client) for one test; ``extra`` settings by name (lease_seconds=10)."""
    env = {
        "INFERQ_DATABASE_URL": database_url,
        "INFERQ_BROKER_URL": broker_url,
        "INFERQ_DEFAULT_QUEUE": queue,
        "INFERQ_MODELS": json.dumps(registry),
        "INFERQ_MAX_BATCH_SIZE": str(MICRO_BATCH),
        "INFERQ_RECOVER_INTERVAL": "0",
        # One torch thread a process: these machines have two cores and a test runs up to three processes.
        "OMP_NUM_THREADS": "1",
    }
    env.update({f"INFERQ_{name.upper()}": str(value) for name, value in extra.items()})
    return env


def settings_of(env: dict[str, str]) -> Settings:
    return Settings(
        database_url=env["INFERQ_DATABASE_URL"],
        broker_url=env["INFERQ_BROKER_URL"],
        default_queue=env["INFERQ_DEFAULT_QUEUE"],
        models=json.loads(env["INFERQ_MODELS"]),
        dispatch=env.get("INFERQ_DISPATCH", "fair"),  # type: ignore[arg-type]
    )


def client_for(env: dict[str, str]) -> Client:
    return Client(settings_of(env))


def sentences(n: int, offset: int = 0) -> list[dict[str, str]]:
    texts = corpus()
    return [{"text": texts[(offset + i) % len(texts)], "id": f"t{offset + i}"} for i in range(n)]


def inferq_cli(
    env: dict[str, str], *args: str, stdin: bytes | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """``inferq ARGS`` in a fresh interpreter, ``env`` over this process's environment. A failure does not raise:
    the caller reads ``returncode``, ``stdout`` and ``stderr`` (text)."""
    return subprocess.run(
        [sys.executable, "-m", "inferq.cli", *args],
        env={**os.environ, **env},
        input=stdin.decode() if stdin is not None else None,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def pid_of(worker_id: str | None) -> int:
    """The pool process that holds a chunk, from `Chunk.worker` (``host:pid``)."""
    assert worker_id, "chunk has no worker"
    return int(worker_id.rsplit(":", 1)[1])
