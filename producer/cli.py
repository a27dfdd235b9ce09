"""The producer's commands: submit, status, results, cancel, jobs, models.

On the database and the broker (`Client`), or, with ``INFERQ_SERVER_URL`` and ``INFERQ_API_KEY`` set, through the
HTTP API (`producer.remote.RemoteClient`, imported only then): the same flags, output and exit codes either way.

What a single command needs (the task table for submit, the exporters for results) is imported in that command, so
that `inferq status` loads no more than the client and the settings."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, TextIO

import click

from inferq.settings import get_settings
from inferq.task_names import TaskName
from producer.client import Client

if TYPE_CHECKING:
    from producer.client import JobStatus
    from producer.remote import RemoteClient
    from producer.results import ResultFilter

TASK_CHOICES = [t.value for t in TaskName]


def _client() -> Client | RemoteClient:
    """The HTTP API's client where ``INFERQ_SERVER_URL`` is set, else the database's (httpx loads only for the
    first)."""
    settings = get_settings()
    if settings.server_url:
        from producer.remote import RemoteClient

        return RemoteClient.from_settings(settings)
    return Client(settings)


def _parse_params(values: tuple[str, ...]) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for item in values:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", param_hint="--param")
        try:
            params[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            params[key.strip()] = raw
    return params


class ProgressBar:
    """done/total, rate and ETA on stderr, redrawn in place."""

    def __init__(self, out: TextIO = sys.stderr, width: int = 30) -> None:
        self.out = out
        self.width = width
        self.tty = out.isatty()
        self._last = 0.0

    def __call__(self, status: JobStatus) -> None:
        now = time.monotonic()
        if not status.finished and now - self._last < (0.2 if self.tty else 5.0):
            return
        self._last = now
        frac = status.done / status.total if status.total else 1.0
        filled = int(frac * self.width)
        rate = status.items_per_second
        eta = (status.total - status.done) / rate if rate else None
        line = (
            f"[{'#' * filled}{'.' * (self.width - filled)}] {status.done}/{status.total} {frac:6.1%}"
            f"  {rate or 0:,.1f} items/s  ETA {_duration(eta)}  {status.state.value}"
        )
        self.out.write(("\r" if self.tty else "") + line + ("" if self.tty and not status.finished else "\n"))
        self.out.flush()


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "--:--"
    s = int(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


@click.command()
@click.option(
    "--task", "-t", required=True, type=click.Choice(TASK_CHOICES + [t.replace("_", "-") for t in TASK_CHOICES])
)
@click.option("--model", "-m", required=True, help="Registry name (see `inferq models`) or local model directory.")
@click.argument("file", type=click.Path(allow_dash=True, dir_okay=False))
@click.option("--param", "-p", "params", multiple=True, help="Task parameter KEY=VALUE (value parsed as JSON).")
@click.option("--chunk-size", type=int, default=None, help="Items per Celery message.")
@click.option("--format", "fmt", type=click.Choice(["auto", "jsonl", "csv"]), default="auto")
@click.option("--skip-invalid", is_flag=True, help="Submit the valid lines and report the others.")
@click.option("--wait", "wait", is_flag=True, help="Wait for the job to end, with a progress bar on stderr.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
def submit(
    task: str,
    model: str,
    file: str,
    params: tuple[str, ...],
    chunk_size: int | None,
    fmt: str,
    skip_invalid: bool,
    wait: bool,
    as_json: bool,
) -> None:
    """Submit FILE (JSONL or CSV, one input a line; - for stdin) as one job."""
    from inferq.task_specs import parse_task

    source: Any = sys.stdin.buffer if file == "-" else Path(file)
    with _client() as client:
        sub = client.submit(
            parse_task(task),
            model,
            source,
            _parse_params(params),
            chunk_size=chunk_size,
            skip_invalid=skip_invalid,
            format=fmt,  # type: ignore[arg-type]
        )
        for err in sub.skipped:
            click.echo(f"skipped {err}", err=True)
        if sub.skipped_total > len(sub.skipped):
            click.echo(f"skipped … and {sub.skipped_total - len(sub.skipped)} more", err=True)
        click.echo(f"submitted job {sub.job_id}: {sub.total} items in {sub.chunks} chunks", err=True)
        out: dict[str, Any] = {"job_id": sub.job_id, "total": sub.total, "skipped": sub.skipped_total}
        if wait:
            status = client.wait(sub.job_id, on_progress=ProgressBar())
            out["status"] = status.to_json()
        if as_json:
            click.echo(json.dumps(out))
        elif not wait:
            click.echo(sub.job_id)
        else:
            click.echo(_status_text(out["status"]))


def _status_text(s: dict[str, Any]) -> str:
    rate = s["items_per_second"]
    lines = [
        f"job        {s['job_id']}",
        f"task       {s['task']}  model {s['model']}",
        f"state      {s['state']}",
        f"items      {s['succeeded'] + s['failed']}/{s['total']} done ({s['succeeded']} succeeded, {s['failed']} failed)",
        f"created    {s['created_at']}",
        f"started    {s['started_at'] or '-'}",
        f"finished   {s['finished_at'] or '-'}",
        f"rate       {f'{rate:,.1f} items/s' if rate else '-'}",
    ]
    if s["error"]:
        lines.append(f"error      [{s['error']['code']}] {s['error']['message']}")
    return "\n".join(lines)


@click.command()
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True)
def status(job_id: str, as_json: bool) -> None:
    """State, counts, timestamps and rate of a job."""
    with _client() as client:
        s = client.status(job_id).to_json()
    click.echo(json.dumps(s) if as_json else _status_text(s))


@click.command()
@click.argument("job_id")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["jsonl", "csv", "npy", "parquet"]),
    default="jsonl",
    show_default=True,
    help="npy: embedding jobs' vectors as a float32 matrix, with OUT.rows.jsonl saying whose each row is.",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, writable=True),
    default=None,
    help="Default: stdout (jsonl, csv); required for npy and parquet.",
)
@click.option("--label", default=None, help="Only items whose top label (or token) is L.")
@click.option("--min-score", type=float, default=None, help="Only items whose top score is at least S.")
@click.option("--failed", is_flag=True, help="Only failed items.")
def results(
    job_id: str, fmt: str, output: str | None, label: str | None, min_score: float | None, failed: bool
) -> None:
    """Stream a job's results in input order (formats: see `producer.export`)."""
    from producer.export import export_jsonl, export_npy, export_parquet, write_csv
    from producer.results import ResultFilter

    filters = ResultFilter(label=label, min_score=min_score, failed=failed)

    if fmt in ("npy", "parquet") and not output:
        raise click.UsageError(f"--format {fmt} writes a file: give it with -o/--output")
    with _client() as client:
        job = client.status(job_id)
        if not isinstance(client, Client):
            _export_over_http(client, job_id, fmt, output, filters)
            return
        if fmt == "npy":
            assert output is not None
            with client.reader() as session:
                done = export_npy(session, job_id, output, filters)
            click.echo(
                f"{done.rows} vectors ({done.dim}-d float32) of {done.items} items in {done.path}; "
                f"whose each row is: {done.rows_path}",
                err=True,
            )
            return
        if fmt == "parquet":
            assert output is not None
            with client.reader() as session:
                export_parquet(session, job_id, output, filters)
            return
        out: TextIO
        with open(output, "w", encoding="utf-8", newline="") if output else _stdout() as out:
            if fmt == "csv":
                rows = client.results(job_id, label=label, min_score=min_score, failed=failed)
                write_csv(rows, out, TaskName(job.task))
            else:
                with client.reader() as session:
                    export_jsonl(session, job_id, out, filters)


def _export_over_http(client: RemoteClient, job_id: str, fmt: str, output: str | None, filters: ResultFilter) -> None:
    """The server's export, written as it arrives: byte for byte what the database path writes. The file is made
    only once the server has answered with the export, so that a refusal leaves none."""
    kwargs = {"label": filters.label, "min_score": filters.min_score, "failed": filters.failed}
    if output is None:
        sys.stdout.flush()
        client.export(job_id, sys.stdout.buffer, format=fmt, **kwargs)  # type: ignore[arg-type]
        sys.stdout.buffer.flush()
        return
    with _LazyFile(output) as out:
        client.export(job_id, out, format=fmt, **kwargs)  # type: ignore[arg-type]
    if fmt == "npy":
        import numpy as np

        rows, dim = np.load(output, mmap_mode="r").shape
        click.echo(
            f"{rows} vectors ({dim}-d float32) in {output}: the succeeded items' vectors in input order (over HTTP, "
            "the matrix only, without its rows file)",
            err=True,
        )


class _LazyFile:
    """A binary file opened on its first write (and made, empty, on a clean exit if nothing was written)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._file: BinaryIO | None = None

    def write(self, data: bytes) -> int:
        if self._file is None:
            self._file = open(self.path, "wb")  # noqa: SIM115 (closed on exit)
        return self._file.write(data)

    def __enter__(self) -> Any:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if self._file is None and exc_type is None:
            self._file = open(self.path, "wb")  # noqa: SIM115
        if self._file is not None:
            self._file.close()


class _stdout:
    def __enter__(self) -> TextIO:
        return sys.stdout

    def __exit__(self, *exc: object) -> None:
        sys.stdout.flush()


@click.command()
@click.argument("job_id")
def cancel(job_id: str) -> None:
    """Cancel a job: unfinished items stop; finished results stay."""
    with _client() as client:
        s = client.cancel(job_id)
    click.echo(f"job {s.id} {s.state.value}: {s.succeeded} succeeded, {s.failed} failed of {s.total}")


@click.command()
@click.option("--limit", "-n", default=20, show_default=True)
@click.option("--json", "as_json", is_flag=True)
def jobs(limit: int, as_json: bool) -> None:
    """Recent jobs, one line each."""
    with _client() as client:
        recent = client.jobs(limit)
    for s in recent:
        if as_json:
            click.echo(json.dumps(s.to_json()))
        else:
            click.echo(
                f"{s.id}  {s.created_at:%Y-%m-%d %H:%M:%S}  {s.state.value:<9}  {s.task:<20}  "
                f"{s.done:>8}/{s.total:<8}  {s.model}"
            )


@click.command()
@click.option("--json", "as_json", is_flag=True)
def models(as_json: bool) -> None:
    """The model registry."""
    with _client() as client:
        registry = client.models()
    if as_json:
        click.echo(json.dumps({k: v.model_dump(mode="json") for k, v in registry.items()}))
        return
    for name, spec in sorted(registry.items()):
        task = spec.task.value if spec.task else "any"
        click.echo(f"{name:<16} {task:<20} {spec.queue or '(default queue)':<16} {spec.source}  {spec.description}")
