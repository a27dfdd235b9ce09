"""The engine tests' one factory: tiny random-weight models of a task, built by name from their builder's arguments
(``arch`` among them) once a session, and model caches (`ModelCache`) over model directories, on the CPU.

Each task's models come from its builder in `tests.support.tiny_models` (`BUILDERS`; the others: `build_model` with
the task's head). The engine tests ask for them through the session fixture ``tiny_engines``
(tests/worker/engines/conftest.py) and build caches with `model_cache`, so that no test file keeps a builder or a
cache recipe of its own."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from inferq.settings import ModelSpec, Settings
from inferq.task_specs import TaskName
from tests.support.tiny_models import build_cross_encoder, build_model, build_nli_model, build_sentence_transformer
from worker.model_cache import ModelCache

#: The builder of each task's models where it is not `build_model` with the task's head: the model directories
#: the task's real models come as (a CrossEncoder save, NLI labels, a sentence-transformers save).
BUILDERS: dict[TaskName, Callable[..., Path]] = {
    TaskName.RERANK: build_cross_encoder,
    TaskName.ZERO_SHOT_CLASSIFICATION: build_nli_model,
    TaskName.EMBEDDING: build_sentence_transformer,
}


def build(path: Path, task: TaskName, **arguments: Any) -> Path:
    """One model of ``task`` at ``path``, from its builder's keyword ``arguments`` (``arch`` among them)."""
    builder = BUILDERS.get(task)
    return builder(path, **arguments) if builder is not None else build_model(path, task, **arguments)


class TinyEngines:
    """Models built under ``root``, each (task, name, arguments) once."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._built: dict[tuple[TaskName, str, str], Path] = {}

    def models(self, task: TaskName, specs: Mapping[str, Mapping[str, Any]]) -> dict[str, Path]:
        """Name → directory of a model of ``task`` for each name → builder arguments of ``specs``."""
        return {name: self.model(task, name, **arguments) for name, arguments in specs.items()}

    def model(self, task: TaskName, name: str, **arguments: Any) -> Path:
        key = (task, name, json.dumps(arguments, sort_keys=True, default=str))
        if key not in self._built:
            self._built[key] = build(self.root / task.value / f"{name}-{len(self._built)}", task, **arguments)
        return self._built[key]


def model_cache(
    sources: Mapping[str, str | Path],
    *,
    precision: str | None = None,
    device: str = "cpu",
    **settings: Any,
) -> ModelCache:
    """A model cache over ``sources`` (name → model directory) on ``device``; ``precision`` for every model (None:
    each model's own), ``settings`` (``max_batch_tokens=…``) over the defaults."""
    models = {name: ModelSpec(source=str(Path(source).resolve())) for name, source in sources.items()}
    return ModelCache(Settings(models=models, **settings), device=device, precision=precision)
