"""Inference engines, one per task, each split the way transformers pipelines are:
``preprocess(inputs) → features``, ``forward(batch) → tensors`` (tensor work only), ``postprocess → results``.
Batching (length sort, token budget, padding) lives in `worker.engines.batching`, shared by every task.

`ENGINES` is the worker's half of the per-task table (the producer's half is `inferq.task_specs.TASKS`): task → the
engine class, named by module so that nothing imports torch before a model is needed. Each engine class names
its transformers auto class (`Engine.auto_model`)."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from inferq.task_specs import TaskName

if TYPE_CHECKING:
    from worker.engines.base import Engine

#: task → ``"module:Class"`` of its engine.
ENGINES: dict[TaskName, str] = {
    TaskName.CLASSIFICATION: "worker.engines.classification:ClassificationEngine",
    TaskName.QUESTION_ANSWERING: "worker.engines.question_answering:QuestionAnsweringEngine",
    TaskName.FILL_MASK: "worker.engines.fill_mask:FillMaskEngine",
    TaskName.TOKEN_CLASSIFICATION: "worker.engines.token_classification:TokenClassificationEngine",
    TaskName.EMBEDDING: "worker.engines.embedding:EmbeddingEngine",
    TaskName.RERANK: "worker.engines.rerank:RerankEngine",
    TaskName.ZERO_SHOT_CLASSIFICATION: "worker.engines.zero_shot:ZeroShotEngine",
}


def engine_class(task: TaskName) -> type[Engine[Any]]:
    """The engine class for ``task`` (its module imported now)."""
    module, _, name = ENGINES[task].partition(":")
    cls: type[Engine[Any]] = getattr(importlib.import_module(module), name)
    return cls
