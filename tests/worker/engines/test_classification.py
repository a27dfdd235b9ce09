"""Classification parity with ``pipeline("text-classification")`` on three families of tiny models."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from inferq.task_specs import TaskName, validate_params
from tests.reference import assert_same_labels, classification_reference
from tests.support.engines import model_cache
from tests.support.tiny_models import corpus
from worker.engines.base import Engine

EDGE_TEXTS = [
    "I hate you",
    "I love you",
    "x",
    "Ünïcödé façade — naïve café, 東京, 한국어 문장 🤗🤗",
    "spaces   and\ttabs\n\nand newlines     ",
    " ".join(corpus()[:40]),  # far beyond the 64-token maximum: truncated
]


def classifier(registry_json: str, model: str) -> Engine[Any]:
    """The engine of the session's tiny classifier ``model`` (`tests.conftest.tiny_models`)."""
    sources = {name: spec["source"] for name, spec in json.loads(registry_json).items()}
    return model_cache(sources, max_batch_tokens=512, max_batch_size=16).engine(model, TaskName.CLASSIFICATION)


def run_engine(registry_json: str, model: str, inputs: list[dict[str, Any]], **params: Any) -> list[Any]:
    engine = classifier(registry_json, model)
    outcomes = engine.run(inputs, validate_params(TaskName.CLASSIFICATION, params))
    assert all(o is not None and o.ok for o in outcomes)
    return outcomes


@pytest.mark.parametrize("model", ["cls-distilbert", "cls-roberta", "cls-bert-pair"])
@pytest.mark.parametrize("top_k", [1, 2, None])
def test_single_texts_match_the_pipeline(
    model: str, top_k: int | None, tiny_models: dict[str, Path], registry_json: str
) -> None:
    inputs = [{"text": t} for t in [*EDGE_TEXTS, *corpus()[:150]]]
    outcomes = run_engine(registry_json, model, inputs, top_k=top_k)
    reference = classification_reference(tiny_models[model], inputs, top_k=top_k)
    for i, (o, want) in enumerate(zip(outcomes, reference, strict=True)):
        assert_same_labels(o.result, want, where=f"{model}[{i}]")
        assert (o.label, o.score) == (o.result[0]["label"], o.result[0]["score"])


@pytest.mark.parametrize("model", ["cls-bert-pair", "cls-roberta"])
def test_pairs_and_a_mix_of_pairs_and_single_texts_match_the_pipeline(
    model: str, tiny_models: dict[str, Path], registry_json: str
) -> None:
    sentences = corpus()
    inputs: list[dict[str, Any]] = []
    for i in range(120):
        if i % 3:
            inputs.append({"text": sentences[i], "text_pair": sentences[-i - 1]})
        else:
            inputs.append({"text": sentences[i]})
    inputs.append({"text": " ".join(sentences[:30]), "text_pair": " ".join(sentences[30:60])})  # both too long
    outcomes = run_engine(registry_json, model, inputs, top_k=2)
    reference = classification_reference(tiny_models[model], inputs, top_k=2)
    for i, (o, want) in enumerate(zip(outcomes, reference, strict=True)):
        assert_same_labels(o.result, want, where=f"{model}[{i}]")


@pytest.mark.parametrize("function", ["sigmoid", "softmax", "none"])
def test_function_to_apply_matches_the_pipeline(
    function: str, tiny_models: dict[str, Path], registry_json: str
) -> None:
    inputs = [{"text": t} for t in corpus()[:30]]
    outcomes = run_engine(registry_json, "cls-roberta", inputs, top_k=None, function_to_apply=function)
    reference = classification_reference(tiny_models["cls-roberta"], inputs, top_k=None, function_to_apply=function)
    for i, (o, want) in enumerate(zip(outcomes, reference, strict=True)):
        assert_same_labels(o.result, want, where=str(i))


def test_a_batch_that_runs_out_of_device_memory_is_split_and_every_item_still_gets_its_result(
    tiny_models: dict[str, Path], registry_json: str, caplog: pytest.LogCaptureFixture
) -> None:
    import torch

    # Given a model whose device holds at most 4 sequences at a time (a forward hook raises the error a CUDA
    # device raises when a batch does not fit)
    engine = classifier(registry_json, "cls-roberta")
    batch_sizes: list[int] = []

    def device_memory(module: Any, args: Any, kwargs: dict[str, Any]) -> None:
        rows = int(kwargs["input_ids"].shape[0])
        batch_sizes.append(rows)
        if rows > 4:
            raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate a batch of {rows}")

    hook = engine.model.register_forward_pre_hook(device_memory, with_kwargs=True)
    inputs = [{"text": t} for t in corpus()[:40]]
    try:
        # When 40 texts run, in micro-batches of up to 16
        outcomes = engine.run(inputs, validate_params(TaskName.CLASSIFICATION, {"top_k": 2}))
    finally:
        hook.remove()

    # Then the batches that did not fit were split down to ones that did, and every result equals the pipeline's
    assert max(batch_sizes) > 4 and "out of memory" in caplog.text
    reference = classification_reference(tiny_models["cls-roberta"], inputs, top_k=2)
    for i, (o, want) in enumerate(zip(outcomes, reference, strict=True)):
        assert o is not None and o.ok, i
        assert_same_labels(o.result, want, where=f"oom[{i}]")
