"""The producer's commands: submit, status, results, cancel, jobs, models.

On the database and the broker (`Client`), or, with ``INFERQ_SERVER_URL`` and ``INFERQ_API_KEY`` set, through the
HTTP API (`producer.remote.RemoteClient`, imported only then): the commands program against their one interface
(`producer.protocol.JobClient`), so the flags, output and exit codes are the same either way.

What a single command needs (the task table for submit, the exporters for results) is imported in that command, so
that `inferq status` loads no more than the client and the settings."""

from __future__ import annotations

import datetime as dt
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import click

from inferq.settings import get_settings
from inferq.task_names import TaskName
from producer.client import Client

if TYPE_CHECKING:
    from producer.client import JobStatus
    from producer.protocol import JobClient

TASK_CHOICES = [t.value for t in TaskName]


def _client() -> JobClient:
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
@click.option(
    "--priority",
    type=click.IntRange(0, 9),
    default=5,
    show_default=True,
    help="Higher runs first among your own jobs (0 to 9).",
)
@click.option(
    "--deadline",
    default=None,
    metavar="WINDOW",
    help='Completion window (seconds, or 90m, 24h, 7d): items not done by then end "expired".',
)
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
    priority: int,
    deadline: str | None,
    wait: bool,
    as_json: bool,
) -> None:
    """Submit FILE (JSONL or CSV, one input a line; - for stdin) as one job."""
    from inferq.task_specs import parse_task
    from producer.client import JobOptions, parse_deadline

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
            options=JobOptions(priority=priority, deadline=parse_deadline(deadline)),
        )
        for err in sub.skipped:
            click.echo(f"skipped {err}", err=True)
        if sub.skipped_total > len(sub.skipped):
            click.echo(f"skipped … and {sub.skipped_total - len(sub.skipped)} more", err=True)
        click.echo(f"submitted job {sub.job_id}: {sub.total} items in {sub.chunks} chunks", err=True)
        out: dict[str, Any] = {"job_id": sub.job_id, "total": sub.total, "skipped": sub.skipped_total}
        if wait:
            status = client.wait(sub.job_id, on_progress=ProgressBar())
            out["status"] = status.model_dump(mode="json")
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
        f"priority   {s.get('priority', 5)}" + (f"  deadline {s['deadline_at']}" if s.get("deadline_at") else ""),
    ]
    if s.get("position") is not None and s["state"] == "queued":
        lines.append(f"position   {s['position']} chunks ahead")
    if s.get("dispatcher"):
        lines += _dispatcher_text(s["dispatcher"])
    if s["error"]:
        lines.append(f"error      [{s['error']['code']}] {s['error']['message']}")
    return "\n".join(lines)


def _dispatcher_text(d: dict[str, Any]) -> list[str]:
    """The dispatcher's state (`inferq.api.Dispatcher` as JSON), a line for it and one per queue."""
    if d["mode"] == "direct":
        return ["dispatch   direct (every chunk sent at submit, first in, first out)"]
    if not d.get("leader"):
        seen = f" (last round {d['last_round']})" if d.get("last_round") else ""
        return [f"dispatch   fair: no leader{seen}"]
    ran = dt.datetime.fromisoformat(d["last_round"])
    ago = max(0.0, (dt.datetime.now(dt.UTC) - ran).total_seconds())
    lines = [
        f"dispatch   fair: leader {d['leader']} since {d['leader_since']}, last round {ago:.1f} s ago "
        f"(released {d['released']})"
    ]
    for q in d.get("queues", []):
        held = f"{q['held']} held back"
        if q["held_by_cap"]:
            whose = f": {', '.join(q['capped'])}" if q.get("capped") else ""
            held += f" ({q['held_by_cap']} by tenant caps{whose})"
        lines.append(f"queue      {q['queue']}: {q['waiting']}/{q['window']} waiting, {q['running']} running, {held}")
    return lines


@click.command()
@click.option("--json", "as_json", is_flag=True)
def dispatcher(as_json: bool) -> None:
    """Who dispatches chunks, its last round, and each queue's window and held-back chunks."""
    with _client() as client:
        d = client.dispatcher().model_dump(mode="json")
    click.echo(json.dumps(d) if as_json else "\n".join(_dispatcher_text(d)))


@click.command()
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True)
def status(job_id: str, as_json: bool) -> None:
    """State, counts, timestamps and rate of a job."""
    with _client() as client:
        s = client.status(job_id).model_dump(mode="json")
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
    if fmt in ("npy", "parquet") and not output:
        raise click.UsageError(f"--format {fmt} writes a file: give it with -o/--output")
    with _client() as client:
        filters: dict[str, Any] = {"label": label, "min_score": min_score, "failed": failed}
        if output is None:
            sys.stdout.flush()
            client.export(job_id, sys.stdout.buffer, format=fmt, **filters)  # type: ignore[arg-type]
            sys.stdout.buffer.flush()
            return
        done = client.export(job_id, output, format=fmt, **filters)  # type: ignore[arg-type]
    if done.rows_path is not None:
        import numpy as np

        rows, dim = np.load(output, mmap_mode="r").shape
        with open(done.rows_path, "rb") as side:
            items = sum(1 for _ in side)
        click.echo(
            f"{rows} vectors ({dim}-d float32) of {items} items in {output}; whose each row is: {done.rows_path}",
            err=True,
        )


@click.command()
@click.argument("job_id")
def cancel(job_id: str) -> None:
    """Cancel a job: unfinished items stop; finished results stay."""
    with _client() as client:
        s = client.cancel(job_id)
    click.echo(f"job {s.id} {s.state.value}: {s.succeeded} succeeded, {s.failed} failed of {s.total}")


@click.command()
@click.option("--limit", "-n", default=20, show_default=True)
@click.option("--state", default=None, help="Only jobs in this state (queued, running, succeeded, ...).")
@click.option("--task", default=None, help="Only jobs of this task.")
@click.option("--model", default=None, help="Only jobs of this model.")
@click.option(
    "--meta", "meta", multiple=True, metavar="KEY=VALUE", help="Only jobs whose metadata hold it (repeatable)."
)
@click.option("--after", default=None, metavar="JOB_ID", help="The page after this job (the last id of the previous).")
@click.option("--json", "as_json", is_flag=True)
def jobs(
    limit: int,
    state: str | None,
    task: str | None,
    model: str | None,
    meta: tuple[str, ...],
    after: str | None,
    as_json: bool,
) -> None:
    """Recent jobs, one line each.

    Newest first; the filters are the HTTP API's and `JobClient.jobs`'."""
    from inferq.states import JobState

    try:
        wanted = JobState(state) if state is not None else None
    except ValueError:
        raise click.BadParameter(f"one of {', '.join(s.value for s in JobState)}", param_hint="--state") from None
    metadata: dict[str, str] = {}
    for pair in meta:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{pair!r} is not KEY=VALUE", param_hint="--meta")
        metadata[key] = value
    with _client() as client:
        recent = client.jobs(limit, wanted, task=task, model=model, metadata=metadata or None, after=after)
    for s in recent:
        if as_json:
            click.echo(json.dumps(s.model_dump(mode="json")))
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
