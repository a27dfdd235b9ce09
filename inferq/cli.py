"""The ``inferq`` command. A thin layer over `producer.Client` and the worker: each command's module is imported
only when that command runs, so ``inferq status`` never imports torch, and ``inferq --help`` imports none."""

from __future__ import annotations

import importlib
import sys
from typing import Any

import click

from inferq.errors import InferqError, TransientError

#: command name → "module:attribute" of its click command, imported only when that command runs: the core's
#: commands in `inferq.cli_core`, the producer's in `producer.cli`, the worker's in `worker.cli`, the HTTP API's in `server.cli`.
COMMANDS = {
    "submit": "producer.cli:submit",
    "status": "producer.cli:status",
    "results": "producer.cli:results",
    "cancel": "producer.cli:cancel",
    "jobs": "producer.cli:jobs",
    "models": "producer.cli:models",
    "dispatcher": "producer.cli:dispatcher",
    "db": "inferq.cli_core:db",
    "recover": "inferq.cli_core:recover_command",
    "purge": "inferq.cli_core:purge_command",
    "worker": "worker.cli:worker_command",
    "demo": "inferq_demo.cli:demo_command",
    "serve": "server.cli:serve",
    "keys": "server.cli:keys",
}

#: command name → its help's first sentence, for ``inferq --help``, which would otherwise import every command's
#: module to list them (tests/inferq/test_cli.py holds each to its command's own help).
SUMMARIES = {
    "submit": "Submit FILE (JSONL or CSV, one input a line; - for stdin) as one job.",
    "status": "State, counts, timestamps and rate of a job.",
    "results": "Stream a job's results in input order (formats: see `producer.export`).",
    "cancel": "Cancel a job: unfinished items stop; finished results stay.",
    "jobs": "Recent jobs, one line each.",
    "models": "The model registry.",
    "dispatcher": "Who dispatches chunks, its last round, and each queue's window and held-back chunks.",
    "db": "Database schema (Alembic migrations).",
    "recover": "Re-enqueue every unfinished chunk whose broker message is gone (after a Redis flush or restart, a "
    "dead worker, a failed enqueue).",
    "purge": (
        "Delete finished jobs (succeeded, failed, cancelled) and their items, and expired files; running jobs are "
        "never touched."
    ),
    "worker": "Run a worker: consume the default queue and the queues of the models it preloads.",
    "serve": "Run the HTTP API (FastAPI on uvicorn); OpenAPI at /docs.",
    "keys": "API keys of the HTTP API: create (shown once), list, revoke; a tenant's share of the workers.",
    "demo": "Run the seed examples (sentiment, paraphrase, question answering, fill-mask, entities), zero-shot "
    "classification, reranking and a semantic search as jobs through a real worker and print the results.",
}

#: Exit status for errors inferq raises on purpose (bad input, unknown job …).
EXIT_USER_ERROR = 2
#: Exit status for transient failures (broker or database unreachable).
EXIT_UNAVAILABLE = 3


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        target = COMMANDS.get(name)
        if target is None:
            return None
        module, attr = target.split(":")
        command = getattr(importlib.import_module(module), attr)
        assert isinstance(command, click.Command)
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The commands in ``--help``, one line each from `SUMMARIES`, as click writes them."""
        names = self.list_commands(ctx)
        limit = formatter.width - 6 - max(map(len, names))
        rows = [(name, click.Command(name, help=SUMMARIES[name]).get_short_help_str(limit)) for name in names]
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except TransientError as exc:
            # A broker or database gone away (`inferq.db` raises DatabaseUnavailable for the database, under any
            # command): one line, without a traceback or the URL.
            click.echo(f"error [{exc.code}]: {exc.message}", err=True)
            sys.exit(EXIT_UNAVAILABLE)
        except InferqError as exc:
            click.echo(f"error [{exc.code}]: {exc.message}", err=True)
            sys.exit(EXIT_USER_ERROR)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="inferq")
def main() -> None:
    """inferq: batch inference jobs for Hugging Face Transformers models, on Celery, with results in SQL."""


if __name__ == "__main__":
    main()
