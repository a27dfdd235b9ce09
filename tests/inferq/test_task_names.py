from __future__ import annotations

import subprocess
import sys

from inferq import task_specs
from inferq.task_names import TaskName


def test_the_task_table_names_its_tasks_with_the_same_enum() -> None:
    assert task_specs.TaskName is TaskName
    assert set(task_specs.TASKS) == set(TaskName)


def test_task_names_load_neither_pydantic_nor_the_task_table() -> None:
    # When a fresh interpreter imports the task names alone (as the settings and the CLI's options do)
    script = (
        "import sys, inferq.task_names\nprint(sorted(m for m in ('pydantic', 'inferq.task_specs') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)

    # Then neither the per-task table nor pydantic came along
    assert out.stdout.strip() == "[]"
