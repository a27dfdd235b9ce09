"""Real ``inferq worker`` processes started from Python and stopped again: what the benchmark and the tests run
(and what a script supervising its own workers can use). Each process gets a process group of its own, so that
stopping it reaches its pool too."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path

#: The command line of ``inferq worker``, before its options.
WORKER_PROGRAM = (sys.executable, "-m", "inferq.cli", "worker")

#: What Celery logs (at INFO) once a worker consumes, after its node's name.
_READY = b" ready."

#: Log characters quoted in an error about a worker that did not start.
_LOG_TAIL = 5_000


@contextmanager
def running_workers(
    env: dict[str, str],
    logs: Sequence[Path],
    *args: str,
    cwd: Path | None = None,
    ready_timeout: float = 120,
    stop_timeout: float = 60,
    stop_group: bool = True,
    program: Sequence[str] = WORKER_PROGRAM,
) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Start one ``inferq worker ARGS`` per log path (named ``-n w<i>-<tag>@%h``, ``tag`` new for each call: on
    RabbitMQ a node's remote-control queue is exclusive to its name, so a worker of Celery's default name would
    not consume while another holds that name, be it a test's worker in the other test process or an earlier
    worker's webhook sender that has not yet noticed its parent's SIGKILL),
    with ``env`` over this process's environment (``program``: another command line that runs the worker command,
    before ARGS); wait until every one says it is ready (started side by side: each boots in seconds); stop them afterwards: SIGTERM to each group (a warm shutdown; to the main process alone with
    ``stop_group=False``, which then stops its pool itself), SIGKILL to the group after ``stop_timeout``."""
    full_env = {**os.environ, **env, "PYTHONUNBUFFERED": "1"}
    tag = secrets.token_hex(3)
    with ExitStack() as files:
        procs = []
        for i, path in enumerate(logs):
            out = files.enter_context(open(path, "wb"))
            names = ["-n", f"w{i}-{tag}@%h"]
            procs.append(
                subprocess.Popen(
                    [*program, *args, *names],
                    env=full_env,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    cwd=cwd,
                    start_new_session=True,
                )
            )
        try:
            deadline = time.monotonic() + ready_timeout
            for i, (proc, path) in enumerate(zip(procs, logs, strict=True)):
                # This node's own line: the worker's webhook sender, a Celery worker of its own, logs " ready." too,
                # and says so even when the node itself failed to start consuming (RabbitMQ's RESOURCE_LOCKED on a
                # remote-control queue of the same name, once), which left a test waiting for work nobody did.
                node = f"w{i}-{tag}@".encode()
                while not any(node in line and _READY in line for line in path.read_bytes().splitlines()):
                    if proc.poll() is not None:
                        raise RuntimeError(f"worker exited with {proc.returncode}:\n{_tail(path)}")
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"worker not ready after {ready_timeout}s:\n{_tail(path)}")
                    time.sleep(0.1)
            yield procs
        finally:
            for proc in procs:
                if proc.poll() is None:
                    if stop_group:
                        os.killpg(proc.pid, signal.SIGTERM)
                    else:
                        os.kill(proc.pid, signal.SIGTERM)
            for proc in procs:
                try:
                    proc.wait(timeout=stop_timeout)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()


@contextmanager
def running_worker(
    env: dict[str, str],
    log_path: Path,
    *args: str,
    cwd: Path | None = None,
    ready_timeout: float = 120,
    stop_group: bool = True,
    program: Sequence[str] = WORKER_PROGRAM,
) -> Iterator[subprocess.Popen[bytes]]:
    """One worker: `running_workers` with one log."""
    logs = [log_path]
    with running_workers(
        env, logs, *args, cwd=cwd, ready_timeout=ready_timeout, stop_group=stop_group, program=program
    ) as procs:
        yield procs[0]


def _tail(path: Path) -> str:
    return path.read_text(errors="replace")[-_LOG_TAIL:]
