"""A real ``inferq worker`` process, started for a test and stopped after it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def running_worker(
    env: dict[str, str], log_path: Path, *args: str, cwd: Path | None = None, ready_timeout: float = 120
) -> Iterator[subprocess.Popen[bytes]]:
    """Start ``inferq worker ARGS`` with ``env`` added to the environment; wait until Celery says it is ready."""
    full_env = {**os.environ, **env, "PYTHONUNBUFFERED": "1"}
    log = open(log_path, "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [sys.executable, "-m", "inferq.cli", "worker", *args],
        env=full_env,
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=cwd,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + ready_timeout
        while b" ready." not in log_path.read_bytes():
            if proc.poll() is not None:
                raise RuntimeError(f"worker exited with {proc.returncode}:\n{log_path.read_text(errors='replace')}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"worker not ready after {ready_timeout}s:\n{log_path.read_text(errors='replace')}")
            time.sleep(0.2)
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        log.close()


def worker_log(log_path: Path) -> str:
    return log_path.read_text(errors="replace")
