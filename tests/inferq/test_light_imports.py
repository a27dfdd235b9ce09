"""The producer side stays light: importing it never imports torch or transformers, and the CLI imports what a
command needs only when it runs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from inferq.db import make_engine, make_sessionmaker
from inferq.schema import Base
from inferq.settings import Settings
from inferq.task_specs import TaskName
from producer.client import store_job
from producer.inputs import InputRecord


def imported_after(code: str, modules: tuple[str, ...], env: dict[str, str] | None = None) -> list[str]:
    """Which of ``modules`` a fresh interpreter has imported once it has run ``code``."""
    script = f"import sys\n{code}\nprint(','.join(sorted(m for m in {modules!r} if m in sys.modules)))\n"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True)
    return [m for m in out.stdout.strip().split(",") if m]


def test_producer_and_core_import_neither_torch_nor_transformers() -> None:
    # When the producer side and the CLI entry are imported in a fresh interpreter
    code = (
        "import inferq, inferq.cli, inferq.db, inferq.schema, inferq.migrate, inferq.celery_app, inferq.model_sources\n"
        "import producer, producer.client, producer.cli, producer.inputs, producer.export, producer.results\n"
        "from inferq.cli import main\n"
        "main.list_commands(None)\n"
    )
    # Then neither torch, transformers nor the worker package came along, nor httpx (the HTTP API's client only)
    assert imported_after(code, ("torch", "transformers", "worker", "httpx")) == []


def test_the_cli_status_command_does_not_load_torch() -> None:
    code = (
        "from inferq.cli import main\n"
        "main.get_command(None, 'status'); main.get_command(None, 'submit'); main.get_command(None, 'results')\n"
    )
    assert imported_after(code, ("torch",)) == []


def test_help_imports_no_command_and_no_settings() -> None:
    # When a fresh interpreter asks for the command list, as `inferq --help` does
    code = (
        "from click.testing import CliRunner\n"
        "from inferq.cli import main\n"
        "assert CliRunner().invoke(main, ['--help']).exit_code == 0\n"
    )
    # Then no command's module, nor the settings, the database or the broker library came along
    heavy = ("pydantic", "pydantic_settings", "sqlalchemy", "celery", "kombu", "producer", "worker")
    assert imported_after(code, heavy) == []


def test_status_reads_sql_without_the_broker(tmp_path: Path) -> None:
    # Given a database with one job
    url = f"sqlite:///{tmp_path / 'inferq.db'}"
    settings = Settings(database_url=url, broker_url="redis://127.0.0.1:1/0")
    engine = make_engine(settings)
    Base.metadata.create_all(engine)
    with make_sessionmaker(engine).begin() as session:
        store_job(session, "a" * 32, TaskName.CLASSIFICATION, "m", {}, [InputRecord(1, None, {"text": "t"})], 1, "q")
    engine.dispose()

    # When `inferq status` runs in a fresh interpreter
    code = (
        "from click.testing import CliRunner\n"
        "from inferq.cli import main\n"
        f"done = CliRunner().invoke(main, ['status', {'a' * 32!r}, '--json'])\n"
        "assert done.exit_code == 0, done.output\n"
    )
    env = {**os.environ, "INFERQ_DATABASE_URL": url, "INFERQ_BROKER_URL": settings.broker_url}
    heavy = ("celery", "kombu", "numpy", "torch", "transformers", "worker", "httpx")
    only_for_other_commands = (
        "inferq.task_specs",
        "inferq.model_sources",
        "inferq.webhooks",
        "producer.inputs",
        "producer.results",
    )

    # Then it answered from SQL without importing Celery, kombu (the broker), numpy or httpx (the HTTP API's client),
    # nor what only a submit, a cancel or a results read needs (the task table, the input reader, the webhooks …)
    assert imported_after(code, heavy + only_for_other_commands, env) == []
