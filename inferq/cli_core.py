"""The core's own commands: ``inferq db`` (schema migrations), ``inferq recover`` and ``inferq purge``.

This module is imported only when one of its commands runs (`inferq.cli.COMMANDS`), so that listing the commands
costs nothing."""

from __future__ import annotations

import datetime as dt
import json
import re

import click

from inferq import constants, migrate
from inferq.celery_app import create_celery
from inferq.db import make_engine, make_sessionmaker
from inferq.errors import InvalidParameter
from inferq.recovery import recover
from inferq.retention import purge, purge_expired_files
from inferq.settings import get_settings


@click.group("db")
def db() -> None:
    """Database schema (Alembic migrations)."""


@db.command("upgrade")
@click.argument("revision", default="head")
def upgrade(revision: str) -> None:
    """Apply migrations up to REVISION (default: head)."""
    migrate.upgrade(get_settings(), revision)
    click.echo(f"database at {migrate.current(get_settings())}", err=True)


@db.command("current")
def current() -> None:
    """Print the applied revision."""
    click.echo(migrate.current(get_settings()) or "none")


@click.command("recover")
@click.option("--job", "job_id", default=None, help="Only this job.")
@click.option(
    "--older-than",
    default=None,
    help="Only chunks enqueued at least this long ago (30s, 5m, 0 …; default: INFERQ_RECOVER_OLDER_THAN).",
)
@click.option("--dry-run", is_flag=True, help="Say what would be re-enqueued; change nothing.")
@click.option("--json", "as_json", is_flag=True)
def recover_command(job_id: str | None, older_than: str | None, dry_run: bool, as_json: bool) -> None:
    """Re-enqueue every unfinished chunk whose broker message is gone (after a Redis flush or restart, a dead
    worker, a failed enqueue). Safe to run at any time: chunks are idempotent."""
    settings = get_settings()
    age = parse_age(older_than).total_seconds() if older_than is not None else None
    engine = make_engine(settings)
    try:
        report = recover(
            settings,
            make_sessionmaker(engine),
            create_celery(settings, name="inferq-recover"),
            job_id=job_id,
            older_than=age,
            dry_run=dry_run,
        )
    finally:
        engine.dispose()
    if as_json:
        click.echo(json.dumps(report.to_json()))
        return
    verb = "would re-enqueue" if dry_run else "re-enqueued"
    for c in report.requeued:
        click.echo(f"{verb} job {c.job_id} chunk {c.seq} ({c.reason.replace('_', ' ')})")
    listed = (
        " (this broker's messages cannot be listed: only expired leases and unsent chunks count)"
        if report.broker_listed is False
        else ""
    )
    click.echo(f"{verb} {len(report.requeued)} of {report.checked} unfinished chunk(s){listed}", err=True)


@click.command("purge")
@click.option("--older-than", required=True, help="Delete jobs that finished longer ago than this (30d, 12h, …).")
@click.option("--batch-rows", default=constants.PURGE_BATCH_ROWS, show_default=True, help="Items per transaction.")
@click.option("--dry-run", is_flag=True, help="Say what would be deleted; delete nothing.")
@click.option("--json", "as_json", is_flag=True)
def purge_command(older_than: str, batch_rows: int, dry_run: bool, as_json: bool) -> None:
    """Delete finished jobs (succeeded, failed, cancelled) and their items, and expired files; running jobs are never
    touched. The files are the OpenAI-compatible API's whose ``expires_at`` passed: their rows, then their bytes."""
    if batch_rows < 1:
        raise InvalidParameter("--batch-rows must be at least 1", field="batch_rows")
    settings = get_settings()
    engine = make_engine(settings)
    try:
        sessions = make_sessionmaker(engine)
        report = purge(sessions, parse_age(older_than), batch_rows=batch_rows, dry_run=dry_run)
        files = purge_expired_files(sessions, settings.files_dir, batch_rows=batch_rows, dry_run=dry_run)
    finally:
        engine.dispose()
    if as_json:
        click.echo(json.dumps({**report.to_json(), "expired_files": len(files), "file_ids": files}))
    else:
        verb = "would delete" if dry_run else "deleted"
        click.echo(f"{verb} {len(report.jobs)} job(s), {report.items} item(s) and {len(files)} expired file(s)")


_AGE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_age(text: str) -> dt.timedelta:
    """``30d``, ``12h``, ``90m``, ``45s`` or plain seconds."""
    match = _AGE.match(text)
    if match is None:
        raise InvalidParameter(f"{text!r} is not an age such as 30d, 12h, 90m, 45s or 3600", field="older_than")
    return dt.timedelta(seconds=float(match.group(1)) * _UNIT_SECONDS[match.group(2)])
