"""Batches validated in the background: ``POST /v1/batches`` stores the batch ``validating`` and answers at once;
a thread of the server process (`Validator`) reads its input file (`server.openai.batches.prepare`), then makes its
job, or fails it.

The protocol, durable across server processes that die:

- The batch's row carries a lease: the validating process's token (``lease_owner``) and an end (``lease_until``,
  `inferq.constants.BATCH_VALIDATION_LEASE_SECONDS` ahead), renewed while the input is read. A process that finds
  the lease ended takes the batch over (one conditional UPDATE: `inferq.store.openai.take_over`): its periodic
  sweep (`Validator.sweep`, every `inferq.constants.BATCH_VALIDATION_SWEEP_SECONDS`, ``FOR UPDATE SKIP LOCKED`` on
  PostgreSQL) or the next read of the batch. So a batch never stays ``validating`` for longer than its validation
  and a lease.
- The job is made in one transaction with the batch's end of validation (`producer.client.Client.submit`'s
  ``on_store``): the job's rows, then a conditional UPDATE of the batch on its owner
  (`inferq.store.openai.end_validation`). A validator that lost its lease (taken over, or the batch cancelled)
  matches no row, and its job rolls back: a batch gets one job, or none, whatever processes race.
- The plan (what the output files need, `server.openai.batches`) is written under a name of the validation's own and
  renamed into place before that transaction: every validator of a batch reads the same input, so any of them
  writes a plan as good as another's.
- A cancel while validating ends the batch ``cancelled`` at once, without a job (`inferq.store.openai.mark_cancelling`).
- A server process that stops gives up its leases at their next renewal, for another process to take its batches
  over at once.
- An error of the batch as a whole (an unknown model, the input file gone, a tenant's quota) fails it, with the
  error in its ``errors``; a transient one (the database, the broker) gives the lease up, for the next sweep to
  try again.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import secrets
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from inferq import constants
from inferq.errors import FileNotFound, InferqError, TransientError
from inferq.schema import utcnow
from inferq.store import openai as stored
from producer.client import Client
from server.openai import batches, files

log = logging.getLogger(__name__)


class LeaseLost(Exception):
    """The validator no longer holds the batch: it was cancelled, or another process took it over."""


class ValidationStopped(Exception):
    """The server process is stopping: the validator gave its lease up, for another process to take the batch."""


def _lease_end(now: dt.datetime) -> dt.datetime:
    return now + dt.timedelta(seconds=constants.BATCH_VALIDATION_LEASE_SECONDS)


class _Lease:
    """One validator's lease on one batch: `renew` it (at most every
    `inferq.constants.BATCH_LEASE_RENEW_SECONDS`, unless ``now``), `LeaseLost` once it is gone."""

    def __init__(self, client: Client, batch_id: str, owner: str, stop: threading.Event | None) -> None:
        self.client, self.batch_id, self.owner, self.stop = client, batch_id, owner, stop
        self.renewed = float("-inf")

    def renew(self, *, now: bool = False) -> None:
        if self.stop is not None and self.stop.is_set():
            raise ValidationStopped(self.batch_id)
        if not now and time.monotonic() - self.renewed < constants.BATCH_LEASE_RENEW_SECONDS:
            return
        with self.client.sessions.begin() as session:
            held = stored.renew_lease(session, self.batch_id, self.owner, _lease_end(utcnow()))
        if not held:
            raise LeaseLost(self.batch_id)
        self.renewed = time.monotonic()

    def give_up(self) -> None:
        """End the lease now, for the next sweep to take the batch (after a transient error)."""
        try:
            with self.client.sessions.begin() as session:
                stored.renew_lease(session, self.batch_id, self.owner, utcnow())
        except TransientError:
            pass  # it ends on its own


def _error(exc: InferqError) -> dict[str, Any]:
    field = exc.details.get("field")
    return {"code": exc.code, "message": exc.message, "param": field if isinstance(field, str) else None, "line": None}


def validate(client: Client, batch_id: str, owner: str, stop: threading.Event | None = None) -> None:
    """Validate the batch as ``owner`` (see the module's notes): its job made, or the batch failed; `LeaseLost`
    when ``owner`` does not hold it (then nothing of its own is kept). Once ``stop`` is set, the next renewal of
    the lease gives it up instead (`ValidationStopped`)."""
    settings = client.settings
    directory = settings.files_dir
    lease = _Lease(client, batch_id, owner, stop)
    plan = batches.plan_path(directory, batch_id)
    # A name of this call's own: two validations of the batch (even of one owner) never write the same file.
    partial = plan.with_name(f".{batch_id}.{secrets.token_hex(8)}.plan.partial")
    prepared: batches.Prepared | None = None
    try:
        lease.renew(now=True)
        with client.reader() as session:
            batch = stored.batch_of(session, batch_id, None)
            endpoint, tenant, source_id = batch.endpoint, batch.tenant, batch.input_file_id
            metadata, window, webhook_url = batch.meta, batch.completion_window, batch.webhook_url
            source = stored.file_of(session, source_id, tenant)
        path = files.file_path(directory, source.id)
        if not path.is_file():
            raise FileNotFound(f"the bytes of file {source.id} are missing from the files directory")
        prepared = batches.prepare(settings, path, endpoint, partial, lease.renew)
        os.replace(partial, plan)
        lease.renew(now=True)
        counts: dict[str, Any] = {
            "total_lines": prepared.total_lines,
            "bad_lines": prepared.bad_lines,
            "one_item_per_line": prepared.one_item_per_line,
            "errors": prepared.errors or None,
        }

        def record(session: Session, job_id: str | None) -> None:
            if not stored.end_validation(session, batch_id, owner, job_id=job_id, now=utcnow(), **counts):
                raise LeaseLost(batch_id)

        if prepared.good_lines:
            options = batches.job_options_for(batch_id, tenant, metadata, window, webhook_url=webhook_url)
            client.submit(
                batches.BATCH_ENDPOINTS[endpoint],
                prepared.model or "",
                prepared.inputs,
                prepared.params,
                format="jsonl",
                options=options,
                on_store=record,
            )
        else:
            with client.sessions.begin() as session:
                record(session, None)
    except LeaseLost:
        partial.unlink(missing_ok=True)
        _drop_plan_if_finalized(client, batch_id, plan)
        raise
    except (TransientError, ValidationStopped):
        partial.unlink(missing_ok=True)
        lease.give_up()
        raise
    except InferqError as exc:
        partial.unlink(missing_ok=True)
        total = prepared.total_lines if prepared is not None else 0
        with client.sessions.begin() as session:
            ended = stored.end_validation(
                session,
                batch_id,
                owner,
                job_id=None,
                total_lines=total,
                bad_lines=total,
                one_item_per_line=True,
                errors=[_error(exc)],
                now=utcnow(),
                finalized=True,
            )
        if not ended:
            _drop_plan_if_finalized(client, batch_id, plan)
            raise LeaseLost(batch_id) from exc
        plan.unlink(missing_ok=True)
    finally:
        if prepared is not None:
            prepared.discard()


def _drop_plan_if_finalized(client: Client, batch_id: str, plan: Path) -> None:
    """Remove the batch's plan if nobody will read it any more: the batch has no output files to write (cancelled
    while validating, or written already). Otherwise the plan is the one the winning validator uses (any
    validator's is as good as another's), and stays."""
    with client.reader() as session:
        finalized = stored.batch_of(session, batch_id, None).finalized_at is not None
    if finalized:
        plan.unlink(missing_ok=True)


class Validator:
    """A server process's batch validation: `start` validates a batch in one of its threads, `sweep` takes over
    the batches whose validator's lease ended, every `inferq.constants.BATCH_VALIDATION_SWEEP_SECONDS` once
    `start_sweeping`. ``owner``: this process's token on the leases it takes."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.owner = secrets.token_hex(16)
        self._pool = ThreadPoolExecutor(
            max_workers=constants.BATCH_VALIDATION_THREADS, thread_name_prefix="inferq-batch-validation"
        )
        self._stop = threading.Event()
        self._sweeper: threading.Thread | None = None

    def lease_end(self) -> dt.datetime:
        """The end of a lease taken now."""
        return _lease_end(utcnow())

    def start(self, batch_id: str) -> None:
        """Validate the batch (leased by this process) in one of its threads."""
        self._pool.submit(self._run, batch_id)

    def _run(self, batch_id: str) -> None:
        try:
            validate(self.client, batch_id, self.owner, self._stop)
        except LeaseLost:
            log.info("batch %s: validated by another process, or cancelled", batch_id)
        except ValidationStopped:
            log.info("batch %s: validation given up as the server stops; another process takes it over", batch_id)
        except Exception:
            log.exception("batch %s: validation stopped; another try once its lease ends", batch_id)

    def take_over(self, batch_id: str) -> bool:
        """Take over the batch if its validator's lease ended (and validate it here): whether it was."""
        now = utcnow()
        with self.client.sessions.begin() as session:
            if not stored.lease_ended(session, batch_id, now):
                return False
            taken = stored.take_over(session, batch_id, self.owner, now, _lease_end(now))
        if taken:
            self.start(batch_id)
        return taken

    def sweep(self) -> list[str]:
        """Take over the batches (a few at a time) whose validator's lease ended, and validate them here."""
        now = utcnow()
        with self.client.sessions.begin() as session:
            taken = stored.take_over_expired(session, self.owner, now, _lease_end(now), constants.BATCH_SWEEP_LIMIT)
        for batch_id in taken:
            self.start(batch_id)
        return taken

    def start_sweeping(self) -> None:
        def loop() -> None:
            while True:
                try:
                    self.sweep()
                except Exception:
                    log.exception("batch validation sweep failed; trying again")
                if self._stop.wait(constants.BATCH_VALIDATION_SWEEP_SECONDS):
                    return

        self._sweeper = threading.Thread(target=loop, name="inferq-batch-sweep", daemon=True)
        self._sweeper.start()

    def close(self) -> None:
        """Stop sweeping and validating: a validation gives its lease up at its next renewal (every
        `server.openai.batches.PLAN_FLUSH_LINES` lines read), a batch waiting its turn keeps its lease until it
        ends; either is taken over by another process, or this one's next start."""
        self._stop.set()
        self._pool.shutdown(wait=False, cancel_futures=True)
        if self._sweeper is not None:
            self._sweeper.join(timeout=5)
