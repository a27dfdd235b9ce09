"""The one-token last layer (`worker.backends.first_token`): the model with its last layer cut to the first token
gives the logits of the whole model, on tiny BERT, DistilBERT and RoBERTa classifiers, with padding on either side,
pairs with token types, truncated texts, SDPA and eager attention, and dynamic int8; the model cache runs it on torch
and under CTranslate2 (every layer but the last there), and the engines stay equal to the pipelines (the engine
tests of each task, tests/worker/engines/test_backends.py)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch

from inferq.settings import Settings
from inferq.task_specs import TaskName
from tests.support.engines import TinyEngines
from tests.support.tiny_models import corpus
from worker.backends import first_token
from worker.backends.first_token import FirstTokenLayer
from worker.model_cache import ModelCache

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ARCHS = ["bert", "distilbert", "roberta"]

#: Short and long texts (the last two far past the tiny models' 64 tokens: truncated), so that a batch is padded.
TEXTS = [*corpus()[:14], "x", "a much longer sentence " * 12, " ".join(corpus()[20:40])]
PAIRS = [*corpus()[40:54], "y", "z", "another long second text " * 10]


def classifier(tiny_engines: TinyEngines, arch: str) -> Path:
    """A tiny three-label classifier (2 layers), its weights large enough that every token moves the logits."""
    return tiny_engines.model(
        TaskName.CLASSIFICATION, f"{arch}-3", arch=arch, labels=["A", "B", "C"], initializer_range=0.3
    )


def logits_both_ways(path: Path, attention: str, padding_side: str, pairs: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The logits of the whole model and of its copy with the one-token last layer, on one padded batch."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    whole = AutoModelForSequenceClassification.from_pretrained(path, attn_implementation=attention).eval()
    cut = copy.deepcopy(whole)
    assert first_token.apply(cut), first_token.refusal(cut)
    assert isinstance(first_token.encoder_layers(cut)[-1], FirstTokenLayer)  # type: ignore[index]
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.padding_side = padding_side
    batch = tokenizer(TEXTS, PAIRS if pairs else None, padding=True, truncation=True, return_tensors="pt")
    assert not bool(batch["attention_mask"].all())  # padded: the mask matters
    with torch.inference_mode():
        return cut(**batch).logits, whole(**batch).logits


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("padding_side", ["right", "left"])
@pytest.mark.parametrize("pairs", [False, True])
def test_the_one_token_last_layer_gives_the_whole_models_logits(
    tiny_engines: TinyEngines, arch: str, attention: str, padding_side: str, pairs: bool
) -> None:
    # Given a tiny classifier and a padded batch (texts, or pairs with token types where the model has them)
    path = classifier(tiny_engines, arch)
    # when its last layer runs for the first token only
    got, want = logits_both_ways(path, attention, padding_side, pairs)
    # then the logits are the whole model's (rounding apart), and far from equal across items (so that a wrong mask
    # or a wrong token would show).
    assert (got - want).abs().max().item() < 1e-5
    assert (want - want.mean(dim=0)).abs().max().item() > 1e-2


@pytest.mark.parametrize("arch", ARCHS)
def test_int8_quantizes_the_one_token_layers_weights_too(tiny_engines: TinyEngines, arch: str) -> None:
    # Given a classifier at int8 through the model cache
    path = classifier(tiny_engines, arch)
    engine = ModelCache(
        Settings(models={"m": {"source": str(path), "task": "classification", "precision": "int8"}})
    ).engine("m", TaskName.CLASSIFICATION)
    # then its last layer is the one-token layer, over the layer's quantized linear modules
    last = first_token.encoder_layers(engine.model)[-1]  # type: ignore[index]
    assert isinstance(last, FirstTokenLayer)
    linears = [type(m).__module__ for m in last.modules() if "Linear" in type(m).__name__]
    assert linears and all("quantized" in m for m in linears), linears
    # and it runs.
    outcomes = engine.run([{"text": t} for t in TEXTS], {})
    assert all(o is not None and o.ok for o in outcomes)


@pytest.mark.parametrize(
    ("task", "arch"),
    [
        (TaskName.CLASSIFICATION, "bert"),
        (TaskName.CLASSIFICATION, "distilbert"),
        (TaskName.RERANK, "roberta"),
        (TaskName.ZERO_SHOT_CLASSIFICATION, "bert"),
    ],
)
def test_the_model_cache_cuts_the_last_layer_for_first_token_engines_on_torch(
    tiny_engines: TinyEngines, task: TaskName, arch: str
) -> None:
    path = tiny_engines.model(task, f"{arch}-ft", arch=arch)
    settings = Settings(models={"m": {"source": str(path), "task": task.value, "backend": "torch"}})
    engine = ModelCache(settings).engine("m", task)
    assert isinstance(first_token.encoder_layers(engine.model)[-1], FirstTokenLayer)  # type: ignore[index]


def test_engines_that_read_every_token_keep_the_whole_last_layer(tiny_engines: TinyEngines) -> None:
    path = tiny_engines.model(TaskName.TOKEN_CLASSIFICATION, "bert-tok", arch="bert")
    engine = ModelCache(Settings(models={"m": {"source": str(path), "task": "token_classification"}})).engine(
        "m", TaskName.TOKEN_CLASSIFICATION
    )
    assert first_token.refusal(engine.model) is not None
    assert not any(isinstance(m, FirstTokenLayer) for m in engine.model.modules())


@pytest.mark.parametrize("arch", ARCHS)
def test_ctranslate2_runs_every_layer_but_the_last_and_torch_the_last_for_the_first_token(
    tiny_engines: TinyEngines, arch: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("ctranslate2")
    from worker.backends.ct2 import Ct2SequenceClassifier

    monkeypatch.setenv("INFERQ_CT2_CACHE", str(tmp_path / "ct2"))
    path = classifier(tiny_engines, arch)
    settings = Settings(models={"m": {"source": str(path), "task": "classification", "backend": "ctranslate2"}})
    engine = ModelCache(settings).engine("m", TaskName.CLASSIFICATION)
    model: Any = engine.model
    assert isinstance(model, Ct2SequenceClassifier) and isinstance(model.last_layer, FirstTokenLayer)
    # the conversion holds the first of the two layers
    (converted,) = [p for p in (tmp_path / "ct2").iterdir() if p.name.endswith("-layers1")]
    assert (converted / "model.bin").is_file()
    # and its logits are the whole torch model's, padded batches and all.
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    whole = AutoModelForSequenceClassification.from_pretrained(path).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    for pairs in (None, PAIRS):
        batch = tokenizer(TEXTS, pairs, padding=True, truncation=True, return_tensors="pt")
        with torch.inference_mode():
            got, want = model(**batch).logits, whole(**batch).logits
        assert (got - want).abs().max().item() < 1e-4


def test_a_head_that_reads_more_than_the_first_token_is_left_whole(tiny_engines: TinyEngines) -> None:
    from transformers import AutoModelForTokenClassification

    path = tiny_engines.model(TaskName.TOKEN_CLASSIFICATION, "bert-tok", arch="bert")
    model = AutoModelForTokenClassification.from_pretrained(path)
    assert not first_token.apply(model)
    assert "not one known" in str(first_token.refusal(model))
