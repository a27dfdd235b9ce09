"""The one client interface: `JobClient`, which `producer.Client` (on the database and the broker) and
`producer.RemoteClient` (over the HTTP API) both implement with the same methods, arguments and filters, so that
code written against it (the CLI, a user's script) runs on either. tests/producer/test_contract.py runs one suite
against both.

The tenant: `Client` acts for every tenant and takes ``tenant=`` keywords (status, jobs, cancel, retry; a
submit's `JobOptions.tenant`) that the HTTP API reads from the request's key instead. The protocol leaves them out:
on `RemoteClient` the key decides, and `Client` keeps them as extra keywords of its own (``None``: every tenant).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Literal, Protocol

from inferq import constants
from inferq.errors import InvalidParameter

if TYPE_CHECKING:
    from inferq import api
    from inferq.settings import ModelSpec
    from inferq.states import ItemState, JobState
    from inferq.task_names import TaskName
    from producer.client import Inputs, JobOptions, JobStatus, Submission
    from producer.results import ResultRow

__all__ = ["ExportFormat", "Exported", "JobClient", "export_target"]

#: The formats of an export (see `producer.export`).
ExportFormat = Literal["jsonl", "csv", "npy", "parquet"]
#: Formats written to a file only: NPY (with its rows file beside it) and Parquet.
FILE_FORMATS: frozenset[str] = frozenset({"npy", "parquet"})


@dataclass(frozen=True)
class Exported:
    """What an export wrote: ``path`` (``None`` for a stream), and for NPY the rows file beside it."""

    format: ExportFormat
    path: Path | None
    #: NPY: which rows of the matrix are whose (`producer.export.npy_rows_path`).
    rows_path: Path | None = None


class JobClient(Protocol):
    """Submit jobs, follow them, read and export their results, cancel and retry them."""

    def submit(
        self,
        task: TaskName | str,
        model: str,
        inputs: Inputs,
        params: dict[str, Any] | None = None,
        *,
        chunk_size: int | None = None,
        skip_invalid: bool = False,
        format: Literal["auto", "jsonl", "csv"] = "auto",
        options: JobOptions | None = None,
    ) -> Submission:
        """Validate and store a job, then run it: `InvalidInput` (every bad line) and nothing stored for bad input,
        unless ``skip_invalid``."""
        ...

    def status(self, job_id: str) -> JobStatus:
        """The job's status (`JobNotFound` for an unknown job)."""
        ...

    def jobs(
        self,
        limit: int = 20,
        state: JobState | None = None,
        *,
        task: str | None = None,
        model: str | None = None,
        metadata: dict[str, str] | None = None,
        after: str | None = None,
    ) -> list[JobStatus]:
        """At most ``limit`` jobs newest first, filtered; after the job ``after`` (a cursor)."""
        ...

    def models(self) -> dict[str, ModelSpec]:
        """The model registry."""
        ...

    def dispatcher(self) -> api.Dispatcher:
        """The dispatcher's state: who leads, its last round, each queue's window and what it holds back."""
        ...

    def results(
        self,
        job_id: str,
        *,
        label: str | None = None,
        min_score: float | None = None,
        failed: bool = False,
        state: ItemState | None = None,
    ) -> Iterator[ResultRow]:
        """The job's items in input order, those the filters keep."""
        ...

    def export(
        self,
        job_id: str,
        out: str | os.PathLike[str] | IO[bytes],
        *,
        format: ExportFormat = "jsonl",
        label: str | None = None,
        min_score: float | None = None,
        failed: bool = False,
        state: ItemState | None = None,
    ) -> Exported:
        """Write the job's items that the filters keep in ``format`` to ``out`` (a path, or a binary stream for
        JSONL and CSV); NPY writes its rows file beside the matrix. Nothing is written for a refusal
        (`JobNotFound` …)."""
        ...

    def cancel(self, job_id: str) -> JobStatus:
        """Stop a job; a finished job comes back unchanged."""
        ...

    def retry(self, job_id: str) -> Submission:
        """A new job with the failed items of the finished job ``job_id``."""
        ...

    def wait(
        self,
        job_id: str,
        *,
        timeout: float | None = None,
        poll: float = constants.DEFAULT_POLL_SECONDS,
        on_progress: Callable[[JobStatus], None] | None = None,
    ) -> JobStatus:
        """Poll until the job ends (`TimeoutError` after ``timeout`` seconds)."""
        ...

    def close(self) -> None: ...

    def __enter__(self) -> JobClient: ...

    def __exit__(self, *exc: object) -> None: ...


def file_path(out: str | os.PathLike[str] | IO[bytes], format: ExportFormat) -> Path:
    """The path a file-only format is written to (`InvalidParameter` for a stream)."""
    if isinstance(out, str | os.PathLike):
        return Path(out)
    raise InvalidParameter(f"a {format} export is written to a file: give a path", field="out")


@contextmanager
def export_target(out: str | os.PathLike[str] | IO[bytes]) -> Iterator[IO[bytes]]:
    """A binary stream to write an export to: ``out`` itself, or a file at the path ``out`` written under a
    ``.part`` name and renamed when complete (removed on an error, so that a failed export leaves no file)."""
    if not isinstance(out, str | os.PathLike):
        yield out
        out.flush()
        return
    path = Path(out)
    part = path.with_name(path.name + ".part")
    try:
        with open(part, "wb") as stream:
            yield stream
        os.replace(part, path)
    except BaseException:
        part.unlink(missing_ok=True)
        raise
