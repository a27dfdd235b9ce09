"""Submitting a file streams it: memory stays flat whatever its size, and a bad line or a database failure anywhere
in it stores nothing (real PostgreSQL and Redis)."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis
from sqlalchemy import func, select

from inferq.db import make_engine
from inferq.errors import DatabaseUnavailable, InvalidInput
from inferq.schema import Chunk, Item, Job
from inferq.settings import ModelSpec, Settings
from inferq.task_specs import TaskName
from producer.client import Client
from tests.support.submit_probe import write_file

pytestmark = pytest.mark.services

ROOT = Path(__file__).resolve().parents[2]

#: Lines of the big file (25 MB): holding them as records takes ~110 MB (measured before submits streamed: 54 MB of
#: peak growth for 100k lines, 164 MB for 300k); streamed, the growth measured 1-3 MB.
BIG_LINES = 200_000

#: Peak memory growth allowed while submitting the big file: far below what holding it takes, with room for the
#: allocator's and the driver's buffers.
MAX_GROWTH = 32 * 1024 * 1024


@pytest.fixture
def settings(migrated_postgres: str, redis_url: str, queue_name: str) -> Settings:
    return Settings(
        database_url=migrated_postgres,
        broker_url=redis_url,
        default_queue=queue_name,
        models={"m": ModelSpec(source="/nonexistent/model", task=TaskName.CLASSIFICATION)},
        dispatch="direct",  # these tests count the messages a submit sends (no dispatcher runs here)
    )


def stored(url: str) -> tuple[int, int, int]:
    """Jobs, chunks and items in the database."""
    engine = make_engine(Settings(database_url=url))
    with engine.connect() as conn:
        counts = tuple(int(conn.scalar(select(func.count()).select_from(t)) or 0) for t in (Job, Chunk, Item))
    engine.dispose()
    return counts  # type: ignore[return-value]


@pytest.mark.slow
def test_a_big_file_is_submitted_in_flat_memory(migrated_postgres: str, redis_url: str, queue_name: str) -> None:
    # Given a 200,000-line file, submitted by a process of its own
    done = subprocess.run(
        [sys.executable, "-m", "tests.support.submit_probe", migrated_postgres, redis_url, queue_name, str(BIG_LINES)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)

    # Then every line was stored, and the process's peak memory grew by far less than the file's records take
    try:
        assert report["lines"] == BIG_LINES and report["bytes"] > 20_000_000
        assert report["peak_growth"] < MAX_GROWTH, report
        assert redis.Redis.from_url(redis_url).llen(queue_name) == -(-BIG_LINES // 256) + 1  # and the warm-up's chunk
    finally:
        redis.Redis.from_url(redis_url).delete(queue_name)


def test_a_bad_last_line_stores_nothing(settings: Settings, tmp_path: Path, redis_url: str, queue_name: str) -> None:
    # Given a file whose every line is fine but the very last
    source = tmp_path / "in.jsonl"
    write_file(source, 5_000)
    with source.open("a", encoding="utf-8") as out:
        out.write('{"text": "fine"}\n\n{"text": ["not", "a", "string"]}\n')
    before = stored(settings.database_url)

    # When it is submitted
    with Client(settings) as client, pytest.raises(InvalidInput) as raised:
        client.submit("classification", "m", source)

    # Then the last line is named, with its field, and nothing is stored or enqueued
    assert [(e.line, e.field) for e in raised.value.errors] == [(5_003, "text")]
    assert stored(settings.database_url) == before
    assert redis.Redis.from_url(redis_url).llen(queue_name) == 0


def test_skip_invalid_streams_the_good_lines_with_their_order(
    settings: Settings, tmp_path: Path, redis_url: str, queue_name: str
) -> None:
    # Given a CSV file with a bad row in the middle and at the end
    source = tmp_path / "in.csv"
    source.write_text('id,text\na,one\nb,\nc,three\nd,"  "\n', encoding="utf-8")

    # When it is submitted skipping invalid lines
    with Client(settings) as client:
        done = client.submit("classification", "m", source, skip_invalid=True, chunk_size=1)
        with client.reader() as session:
            items = session.execute(
                select(Item.index, Item.client_id, Item.input).where(Item.job_id == done.job_id).order_by(Item.index)
            ).all()
    redis.Redis.from_url(redis_url).delete(queue_name)

    # Then the good rows are stored in order, and the bad ones reported with their lines
    assert [tuple(i) for i in items] == [(0, "a", {"text": "one"}), (1, "c", {"text": "three"})]
    assert (done.total, done.chunks, done.skipped_total) == (2, 2, 2)
    assert [(e.line, e.field) for e in done.skipped] == [(3, "text"), (5, "text")]


class _ChangingFile(io.BytesIO):
    """A seekable file whose content is replaced when it is read again from its start (as a file edited between the
    two reads would be)."""

    def __init__(self, first: bytes, second: bytes) -> None:
        super().__init__(first)
        self._second = second

    def seek(self, pos: int, whence: int = 0) -> int:
        if self._second and (pos, whence) == (0, 0) and self.tell() > 0:
            self.__init__(self._second, b"")  # type: ignore[misc]
        return super().seek(pos, whence)


@pytest.mark.parametrize("second_lines", [2_999, 3_001], ids=["fewer", "more"])
def test_a_file_that_changes_between_the_reads_stores_nothing(
    settings: Settings, redis_url: str, queue_name: str, second_lines: int
) -> None:
    # Given a file that holds 3,000 valid lines when checked and another count when stored
    def lines(n: int) -> bytes:
        return b"".join(b'{"text": "line %d"}\n' % i for i in range(n))

    before = stored(settings.database_url)

    # When it is submitted
    with Client(settings) as client, pytest.raises(InvalidInput) as raised:
        client.submit("classification", "m", _ChangingFile(lines(3_000), lines(second_lines)))  # type: ignore[arg-type]

    # Then it is refused as changed, and nothing is stored
    assert "changed while it was being stored" in str(raised.value)
    assert stored(settings.database_url) == before
    assert redis.Redis.from_url(redis_url).llen(queue_name) == 0


class _KillsTheCopy(io.BytesIO):
    """A file that, on its second read (the one that streams rows into COPY), has the database end the COPY's
    connection once ``after`` lines have been read."""

    def __init__(self, data: bytes, url: str, after: int) -> None:
        super().__init__(data)
        self._url, self._after = url, after
        self._storing = False
        self._read = 0
        self.killed = 0

    def seek(self, pos: int, whence: int = 0) -> int:
        self._storing = self._storing or self.tell() > 0
        return super().seek(pos, whence)

    def readline(self, size: Any = -1) -> bytes:
        if self._storing:
            self._read += 1
            if self._read == self._after:
                with psycopg.connect(self._url, autocommit=True) as conn:
                    self.killed = len(
                        conn.execute(
                            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                            " WHERE datname = current_database() AND query LIKE 'COPY items%%'"
                        ).fetchall()
                    )
        return super().readline(size)


def test_a_database_failure_mid_copy_stores_nothing(
    settings: Settings, migrated_postgres: str, redis_url: str, queue_name: str
) -> None:
    # Given a 20,000-line file, and the database connection cut while its rows are being copied
    data = b"".join(b'{"id": %d, "text": "line %d"}\n' % (i, i) for i in range(20_000))
    source = _KillsTheCopy(data, migrated_postgres, after=10_000)
    before = stored(settings.database_url)

    # When it is submitted
    with Client(settings) as client, pytest.raises(DatabaseUnavailable) as raised:
        client.submit("classification", "m", source)  # type: ignore[arg-type]

    # Then the failure says nothing was submitted, and nothing was stored or enqueued
    assert source.killed == 1
    assert "nothing was submitted" in str(raised.value)
    assert stored(settings.database_url) == before
    assert redis.Redis.from_url(redis_url).llen(queue_name) == 0


def test_a_models_chunk_size_shapes_its_jobs_unless_the_submission_names_one(
    migrated_postgres: str, redis_url: str, queue_name: str
) -> None:
    # Given a model whose registry entry names chunks of 4 (a model served on a fast device names larger ones)
    settings = Settings(
        database_url=migrated_postgres,
        broker_url=redis_url,
        default_queue=queue_name,
        chunk_size=256,
        models={"fast": ModelSpec(source="/nonexistent/model", task=TaskName.CLASSIFICATION, chunk_size=4)},
        dispatch="direct",
    )
    rows = [{"text": f"line {i}"} for i in range(10)]

    # When a job is submitted without a chunk size, and another with its own
    with Client(settings) as client:
        by_model = client.submit("classification", "fast", rows)
        by_request = client.submit("classification", "fast", rows, chunk_size=5)

    # Then the first is cut in the model's chunks, the second in its own, each chunk one message
    engine = make_engine(settings)
    with engine.connect() as conn:
        for job_id, size, chunks in ((by_model.job_id, 4, 3), (by_request.job_id, 5, 2)):
            assert conn.scalar(select(Job.chunk_size).where(Job.id == job_id)) == size
            assert conn.scalar(select(func.count()).select_from(Chunk).where(Chunk.job_id == job_id)) == chunks
    engine.dispose()
    assert redis.Redis.from_url(redis_url).llen(queue_name) == 5
