"""Submit a generated JSONL file with `Client.submit` in this process, and report its time and memory as JSON.

Run as ``python -m tests.support.submit_probe DATABASE_URL BROKER_URL QUEUE LINES [ROUNDS]``: writes a file of
LINES classification items (about 100 characters of text each, an id on every other line), submits a small file
first (so that every import and connection is made before the baseline is taken), then submits the big one ROUNDS
times. Prints ``{"lines", "bytes", "rss_before", "peak_growth", "seconds": [...], "cpu_seconds": [...],
"items_per_second": [...]}`` (``cpu_seconds``: this process's CPU time per submission, less sensitive than the
wall clock to a busy machine):
``peak_growth`` is the process's peak resident memory (``ru_maxrss``) after the submissions less the peak before
them, in bytes."""

from __future__ import annotations

import json
import random
import resource
import sys
import tempfile
import time
from pathlib import Path

from inferq.settings import ModelSpec, Settings
from inferq.task_specs import TaskName
from producer.client import Client

_WORDS = [
    "the",
    "a",
    "model",
    "batch",
    "input",
    "line",
    "queue",
    "worker",
    "result",
    "score",
    "label",
    "text",
    "token",
    "stream",
    "memory",
    "file",
]


def write_file(path: Path, lines: int, seed: int = 0) -> int:
    """LINES JSONL classification items; returns the file's size in bytes."""
    rng = random.Random(seed)
    with path.open("w", encoding="utf-8") as out:
        for i in range(lines):
            text = " ".join(rng.choice(_WORDS) for _ in range(18))
            item = {"id": f"item-{i}", "text": text} if i % 2 == 0 else {"text": text}
            out.write(json.dumps(item) + "\n")
    return path.stat().st_size


def peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kilobytes on Linux


def main(argv: list[str]) -> None:
    database_url, broker_url, queue, lines = argv[0], argv[1], argv[2], int(argv[3])
    rounds = int(argv[4]) if len(argv) > 4 else 1
    settings = Settings(
        database_url=database_url,
        broker_url=broker_url,
        default_queue=queue,
        models={"m": ModelSpec(source="/nonexistent/model", task=TaskName.CLASSIFICATION)},
        dispatch="direct",  # the caller counts the messages a submit sends
    )
    with tempfile.TemporaryDirectory() as tmp, Client(settings) as client:
        big, small = Path(tmp) / "big.jsonl", Path(tmp) / "small.jsonl"
        size = write_file(big, lines)
        write_file(small, 100)
        client.submit("classification", "m", small)
        before = peak_rss()
        seconds, cpu = [], []
        for _ in range(rounds):
            start, start_cpu = time.perf_counter(), time.process_time()
            done = client.submit("classification", "m", big)
            seconds.append(time.perf_counter() - start)
            cpu.append(time.process_time() - start_cpu)
            assert done.total == lines, done
        report = {
            "lines": lines,
            "bytes": size,
            "rss_before": before,
            "peak_growth": peak_rss() - before,
            "seconds": seconds,
            "cpu_seconds": cpu,
            "items_per_second": [lines / s for s in seconds],
        }
    print(json.dumps(report))


if __name__ == "__main__":
    main(sys.argv[1:])
