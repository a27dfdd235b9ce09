"""Inference engines, one per task, each split the way transformers pipelines are:
``preprocess(inputs) → features``, ``forward(batch) → tensors`` (tensor work only), ``postprocess → results``.
Batching (length sort, token budget, padding) lives in `worker.engines.batching`, shared by every task."""

from __future__ import annotations

from typing import TYPE_CHECKING

from inferq.tasks import TaskName

if TYPE_CHECKING:
    from worker.engines.base import Engine
    from worker.loaded import LoadedModel


def engine_for(task: TaskName, loaded: LoadedModel) -> Engine:
    """The engine for ``task`` over an already loaded model."""
    if task is TaskName.CLASSIFICATION:
        from worker.engines.classification import ClassificationEngine

        return ClassificationEngine(loaded)
    if task is TaskName.QUESTION_ANSWERING:
        from worker.engines.question_answering import QuestionAnsweringEngine

        return QuestionAnsweringEngine(loaded)
    if task is TaskName.FILL_MASK:
        from worker.engines.fill_mask import FillMaskEngine

        return FillMaskEngine(loaded)
    if task is TaskName.TOKEN_CLASSIFICATION:
        from worker.engines.token_classification import TokenClassificationEngine

        return TokenClassificationEngine(loaded)
    raise ValueError(f"no engine for task {task!r}")
