"""The producer side stays light: importing it never imports torch or transformers."""

from __future__ import annotations

import subprocess
import sys


def test_producer_and_core_import_neither_torch_nor_transformers() -> None:
    # Given a fresh interpreter
    code = (
        "import sys\n"
        "import inferq, inferq.cli, inferq.db, inferq.schema, inferq.migrate, inferq.celery_app, inferq.models\n"
        "import producer, producer.client, producer.cli, producer.inputs, producer.export, producer.results\n"
        "from inferq.cli import main\n"
        "main.list_commands(None)\n"
        "heavy = sorted(m for m in ('torch', 'transformers', 'worker') if m in sys.modules)\n"
        "print(','.join(heavy))\n"
    )
    # When the producer side and the CLI entry are imported
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    # Then neither torch, transformers nor the worker package came along
    assert out.stdout.strip() == ""


def test_the_cli_status_command_does_not_load_torch() -> None:
    code = (
        "import sys\n"
        "from inferq.cli import main\n"
        "main.get_command(None, 'status'); main.get_command(None, 'submit'); main.get_command(None, 'results')\n"
        "print('torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
