"""What a job's page draws, read from SQL after the fact as well as while the job runs.

**Timeline** (`timeline`): items that ended (succeeded or failed) per time bucket. A worker writes a chunk's
results in one statement with one ``finished_at`` for all of them, so ``GROUP BY items.finished_at`` returns a row per
stored chunk write (its time and how many items it ended): the per-chunk completion record. Items are counted, not
``chunks.stop - chunks.start``: a chunk stopped early and finished by a later delivery, or skipped after a cancel,
would count items it never ran. The rows are then put into equal buckets here (a bucket width that gives at most
`MAX_BUCKETS` points; portable SQL has no common way to floor a timestamp).

**Error summary** (`error_summary`): failed items by error code, most frequent first, each with one sample message,
in one ``GROUP BY`` (the sample is the smallest message of the code, so the same job always shows the same one).

Both take a `Session` the caller owns and read; the caller checks that the job is the tenant's.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from inferq.schema import as_utc
from inferq.store import results

#: Most points a timeline has: a plot a few hundred pixels wide shows no more.
MAX_BUCKETS = 120
#: Bucket widths a timeline picks from (seconds): the smallest that keeps it under `MAX_BUCKETS` points.
BUCKET_WIDTHS = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 21600, 43200, 86400)
#: Error codes an error summary lists by default, and at most.
DEFAULT_ERROR_CODES = 5
MAX_ERROR_CODES = 50

#: The code shown for failed items stored without one.
UNKNOWN_CODE = "unknown"


@dataclass(frozen=True)
class Bucket:
    #: The bucket's start (UTC).
    start: dt.datetime
    #: Items that ended (succeeded or failed) in [start, start + width).
    items: int


@dataclass(frozen=True)
class Timeline:
    job_id: str
    #: The first bucket's start: when the job started (or its first item ended, if earlier or unknown).
    start: dt.datetime | None
    bucket_seconds: int
    #: Every bucket from `start` to the last item's, empty ones included, so that a plot shows the gaps.
    buckets: list[Bucket]

    def to_json(self) -> dict[str, Any]:
        cumulative = 0
        points = []
        for b in self.buckets:
            cumulative += b.items
            points.append(
                {
                    "t": b.start.isoformat(),
                    "items": b.items,
                    "items_per_second": b.items / self.bucket_seconds,
                    "cumulative": cumulative,
                }
            )
        return {
            "object": "timeline",
            "job_id": self.job_id,
            "start": self.start.isoformat() if self.start else None,
            "bucket_seconds": self.bucket_seconds,
            "points": points,
        }


def chunk_writes(session: Session, job_id: str) -> list[tuple[dt.datetime, int]]:
    """(time, items ended) of each stored write of the job's results, oldest first."""
    return [(as_utc(_datetime(w.finished_at)), int(w.items)) for w in results.chunk_writes(session, job_id)]


def bucket_width(span_seconds: float) -> int:
    """The smallest of `BUCKET_WIDTHS` that covers ``span_seconds`` in at most `MAX_BUCKETS` buckets."""
    for width in BUCKET_WIDTHS:
        if span_seconds / width < MAX_BUCKETS:
            return width
    return math.ceil(span_seconds / MAX_BUCKETS)


def timeline(session: Session, job_id: str, bucket_seconds: int | None = None) -> Timeline:
    """The job's items ended per bucket (``bucket_seconds`` wide, else chosen from the span)."""
    started = results.job_started_at(session, job_id)
    writes = chunk_writes(session, job_id)
    if not writes:
        return Timeline(job_id, as_utc(started) if started else None, bucket_seconds or 1, [])
    start = min(as_utc(started), writes[0][0]) if started else writes[0][0]
    start = start.replace(microsecond=0)
    span = (writes[-1][0] - start).total_seconds()
    width = bucket_seconds or bucket_width(span)
    counts = [0] * (int(span // width) + 1)
    for at, n in writes:
        counts[int((at - start).total_seconds() // width)] += n
    return Timeline(
        job_id, start, width, [Bucket(start + dt.timedelta(seconds=i * width), n) for i, n in enumerate(counts)]
    )


@dataclass(frozen=True)
class ErrorCount:
    code: str
    count: int
    #: One message of the code (the smallest, so that it is the same on every read).
    sample_message: str | None


def error_summary(session: Session, job_id: str, limit: int = DEFAULT_ERROR_CODES) -> list[ErrorCount]:
    """The job's failed items by error code, most frequent first (ties by code), at most ``limit`` codes."""
    return [
        ErrorCount(row.error_code or UNKNOWN_CODE, int(row.items), row.sample_message)
        for row in results.error_counts(session, job_id, limit)
    ]


def _datetime(value: Any) -> dt.datetime:
    """SQLite may hand a grouped timestamp back as text."""
    return value if isinstance(value, dt.datetime) else dt.datetime.fromisoformat(str(value))
