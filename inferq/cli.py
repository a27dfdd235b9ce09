"""The ``inferq`` command. A thin layer over `producer.Client` and the worker: each command's module is imported
only when that command runs, so ``inferq status`` never imports torch."""

from __future__ import annotations

import importlib
import sys
from typing import Any

import click

from inferq.errors import InferqError

#: command name → "module:attribute" of its click command.
COMMANDS = {
    "submit": "producer.cli:submit",
    "status": "producer.cli:status",
    "results": "producer.cli:results",
    "cancel": "producer.cli:cancel",
    "jobs": "producer.cli:jobs",
    "models": "producer.cli:models",
    "db": "inferq.cli_db:db",
    "recover": "inferq.maintenance:recover_command",
    "purge": "inferq.maintenance:purge_command",
    "worker": "worker.cli:worker_command",
    "demo": "inferq_demo.cli:demo_command",
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

    def invoke(self, ctx: click.Context) -> Any:
        from inferq.errors import TransientError

        try:
            return super().invoke(ctx)
        except TransientError as exc:
            click.echo(f"error [{exc.code}]: {exc.message}", err=True)
            sys.exit(EXIT_UNAVAILABLE)
        except InferqError as exc:
            click.echo(f"error [{exc.code}]: {exc.message}", err=True)
            sys.exit(EXIT_USER_ERROR)
        except Exception as exc:
            from sqlalchemy.exc import OperationalError

            if not isinstance(exc, OperationalError):
                raise
            # The database went away under a read (status, results …): say so, without a traceback or the URL.
            reason = str(exc.orig).splitlines()[0] if exc.orig is not None else type(exc).__name__
            click.echo(f"error [database_unavailable]: database unreachable: {reason}", err=True)
            sys.exit(EXIT_UNAVAILABLE)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="inferq")
def main() -> None:
    """inferq: batch inference jobs for Hugging Face Transformers models, on Celery, with results in SQL."""


if __name__ == "__main__":
    main()
