"""A real ``inferq serve`` process started from Python and stopped again, what the tests and the benchmark run:
uvicorn on a free loopback port, in a process group of its own."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

import httpx

#: Log characters quoted in an error about a server that did not start.
_LOG_TAIL = 5_000


class Served(NamedTuple):
    #: ``http://127.0.0.1:P``
    url: str
    #: The server's process id (the head of its process group).
    pid: int


def free_port() -> int:
    """A loopback port free at the moment of asking."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def running_server(
    env: dict[str, str], log_path: Path, *args: str, ready_timeout: float = 60, stop_timeout: float = 20
) -> Iterator[Served]:
    """``inferq serve --port P ARGS`` with ``env`` over this process's environment; yields its base URL and pid once
    ``/healthz`` answers; SIGTERM afterwards (SIGKILL past ``stop_timeout``)."""
    port = free_port()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "inferq.cli", "serve", "--host", "127.0.0.1", "--port", str(port), *args],
            env={**os.environ, **env, "PYTHONUNBUFFERED": "1"},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + ready_timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"inferq serve exited with {proc.returncode}:\n{_tail(log_path)}")
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"inferq serve not ready after {ready_timeout}s:\n{_tail(log_path)}")
            time.sleep(0.2)
        yield Served(url, proc.pid)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=stop_timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _tail(path: Path) -> str:
    return path.read_text(errors="replace")[-_LOG_TAIL:]
