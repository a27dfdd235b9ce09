"""The worker's half of the per-task table: one engine class per task, naming its auto class, and engines that
read their typed parameters instead of re-typing defaults."""

from __future__ import annotations

import inspect
import re

from inferq.task_specs import TASKS, TaskName
from worker.engines import ENGINES, engine_class


def test_every_task_has_an_engine_that_names_its_task_and_auto_class() -> None:
    assert set(ENGINES) == set(TaskName)
    for task in TaskName:
        cls = engine_class(task)
        assert cls.task is task
        assert cls.auto_model.startswith("AutoModel"), cls


def test_engines_never_spell_a_parameter_default() -> None:
    # Defaults live in the parameter models (inferq.task_specs); an engine reading ``params.get("top_k", 1)`` or
    # ``params["top_k"]`` would write one a second time.
    for task in TaskName:
        source = inspect.getsource(inspect.getmodule(engine_class(task)))  # type: ignore[arg-type]
        assert not re.search(r"params\.get\(|params\[", source), task
        assert TASKS[task].params.__name__ in source, task
