"""Several real ``inferq worker`` processes started at once (each boots in a few seconds: booting them side by side
keeps fault tests short)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def running_workers(
    env: dict[str, str], logs: Sequence[Path], *args: str, ready_timeout: float = 120
) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Start one ``inferq worker ARGS -n w<i>@%h`` per log path, each in its own process group; wait until every
    one is ready; stop them (SIGTERM to the group, then SIGKILL) afterwards."""
    full_env = {**os.environ, **env, "PYTHONUNBUFFERED": "1"}
    files = [open(p, "wb") for p in logs]  # noqa: SIM115 - closed below
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "inferq.cli", "worker", *args, "-n", f"w{i}@%h"],
            env=full_env,
            stdout=f,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        for i, f in enumerate(files)
    ]
    try:
        deadline = time.monotonic() + ready_timeout
        for proc, path in zip(procs, logs, strict=True):
            while b" ready." not in path.read_bytes():
                if proc.poll() is not None:
                    raise RuntimeError(f"worker exited with {proc.returncode}:\n{path.read_text(errors='replace')}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"worker not ready after {ready_timeout}s:\n{path.read_text(errors='replace')}")
                time.sleep(0.1)
        yield procs
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        for f in files:
            f.close()
