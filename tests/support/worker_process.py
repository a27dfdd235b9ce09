"""Reading a real worker's log in tests (the workers themselves start with `worker.process`)."""

from __future__ import annotations

from pathlib import Path


def worker_log(log_path: Path) -> str:
    return log_path.read_text(errors="replace")
