"""In-process runs on one model and one list of inputs: the reference implementation (the transformers pipeline;
for question answering a plain forward loop over the raw model, transformers 5.3+ ship no QA pipeline;
sentence-transformers' ``SentenceTransformer.encode`` for embeddings and ``CrossEncoder.predict`` for rerank) and
inferq's engine through the model cache, as a worker holds it. Every run is warmed up first, then timed once
over all the items."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from bench.inputs import ZERO_SHOT_LABELS
from bench.measure import Measurement, Ranked, padded_in_order, padded_in_plan, vector_of
from bench.models import BenchModel
from inferq.settings import Settings
from inferq.task_specs import MASK_PLACEHOLDER, TaskName, read_params, validate_params
from worker.engines.base import Engine, Outcome
from worker.model_cache import ModelCache

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Items run once, untimed, before a timed run (first-call costs: allocator, kernels, lazy imports): the longest
#: of the run's inputs, so that the first timed run does not meet its largest shapes (and the memory they take)
#: for the first time. Every variant, the system's worker included, warms up on the same items.
WARMUP_ITEMS = 32

#: Fewer for tasks whose item is many sequences: a zero-shot text is one per label (8 × 10 = 80 pairs), a rerank
#: query one per document (2 × 50 = 100 pairs).
WARMUP_ITEMS_OF: dict[TaskName, int] = {TaskName.ZERO_SHOT_CLASSIFICATION: 8, TaskName.RERANK: 2}


def warm_up_items(inputs: Sequence[T], n: int = WARMUP_ITEMS) -> list[T]:
    """The ``n`` longest of ``inputs`` (by the length of their text fields, lists of texts counted whole)."""

    def length(v: Any) -> int:
        if isinstance(v, str):
            return len(v)
        if isinstance(v, list):
            return sum(len(x) for x in v if isinstance(x, str))
        return 0

    def size(x: Any) -> int:
        return sum(length(v) for v in x.values()) if isinstance(x, dict) else len(str(x))

    return sorted(inputs, key=size, reverse=True)[:n]


def warm_up_for(task: TaskName, inputs: Sequence[T]) -> list[T]:
    """The warm-up items of ``task`` (`WARMUP_ITEMS_OF`)."""
    return warm_up_items(inputs, WARMUP_ITEMS_OF.get(task, WARMUP_ITEMS))


#: Parameters every variant of a task runs with: all labels for classification (so that every score is
#: compared), the defaults elsewhere (5 fillers; the best answer, windows of 384 tokens with a stride of 128).
TASK_PARAMS: dict[TaskName, dict[str, Any]] = {
    TaskName.CLASSIFICATION: {"top_k": None},
    TaskName.FILL_MASK: {"top_k": 5},
    TaskName.QUESTION_ANSWERING: {},
    # The model's own pooling and normalization, float32 vectors.
    TaskName.EMBEDDING: {},
    TaskName.ZERO_SHOT_CLASSIFICATION: {"candidate_labels": list(ZERO_SHOT_LABELS)},
    # Every document, ranked; the activation CrossEncoder takes for the model (sigmoid).
    TaskName.RERANK: {},
}

#: A run's result for one item: ranked ``(key, score)`` pairs, or an embedding's vector(s) (float32, one row per
#: vector), or ``None`` (no result).
Result = Ranked | np.ndarray | None


def params_for(task: TaskName) -> dict[str, Any]:
    return validate_params(task, dict(TASK_PARAMS[task]))


# -- ranked results, for comparing runs ------------------------------------------------------------------


def ranked(task: TaskName, result: list[Any] | None) -> Ranked | None:
    """A stored (or engine) result as ``(key, score)`` best first: labels; the first mask's token ids; answer
    spans; document indices."""
    if result is None:
        return None
    if task in (TaskName.CLASSIFICATION, TaskName.ZERO_SHOT_CLASSIFICATION):
        return [(r["label"], float(r["score"])) for r in result]
    if task is TaskName.FILL_MASK:
        return [(int(r["token"]), float(r["score"])) for r in result[0]]
    if task is TaskName.RERANK:
        return [(int(r["index"]), float(r["score"])) for r in result]
    return [((int(r["start"]), int(r["end"])), float(r["score"])) for r in result]


def result_of_outcome(task: TaskName, outcome: Outcome | None) -> Result:
    if outcome is None or not outcome.ok:
        return None
    if task is TaskName.EMBEDDING:
        return vector_of(outcome.result, outcome.vector)
    return ranked(task, outcome.result)


def ranked_by_score(scores: Sequence[float] | np.ndarray) -> Ranked:
    """Indices ``0..n-1`` with their scores, best first; equal scores keep their order (a stable sort, as
    ``CrossEncoder.rank`` sorts)."""
    values = [float(x) for x in scores]
    return [(i, values[i]) for i in sorted(range(len(values)), key=lambda i: -values[i])]


def ranked_from_pipeline(task: TaskName, result: Any) -> Ranked:
    if task is TaskName.CLASSIFICATION:
        return [(r["label"], float(r["score"])) for r in result]
    if task is TaskName.FILL_MASK:
        one = result[0] if result and isinstance(result[0], list) else result
        return [(int(r["token"]), float(r["score"])) for r in one]
    raise ValueError(f"no pipeline for {task.value}")


# -- the engine -----------------------------------------------------------------------------------------


def make_engine(settings: Settings, model: BenchModel, precision: str) -> Engine:
    return ModelCache(settings, precision=precision).engine(model.name, model.task)


def engine_tokens(
    engine: Engine, inputs: Sequence[dict[str, Any]], params: dict[str, Any], chunk_size: int
) -> tuple[int, int]:
    """Real and padded tokens of the engine's micro-batches when the inputs come in chunks of ``chunk_size``
    (all at once in-process: ``chunk_size >= len(inputs)``)."""
    real = padded = 0
    for start in range(0, len(inputs), chunk_size):
        features = engine.preprocess(inputs[start : start + chunk_size], read_params(engine.task, params))
        plan = engine.plan(features)
        real += int(features.lengths.sum())
        padded += padded_in_plan(features.lengths, plan)
    return real, padded


def run_engine(
    engine: Engine, model: BenchModel, inputs: Sequence[dict[str, Any]], precision: str, *, warm_up: bool = True
) -> tuple[Measurement, list[Result]]:
    params = params_for(model.task)
    if warm_up:
        engine.run(warm_up_for(model.task, inputs), params)
    start, cpu = time.perf_counter(), time.process_time()
    outcomes = engine.run(inputs, params)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    failed = sum(1 for o in outcomes if o is None or not o.ok)
    real, padded = engine_tokens(engine, inputs, params, len(inputs))
    m = Measurement(
        model.task.value,
        "engine (in-process)",
        precision,
        len(inputs),
        seconds,
        real,
        padded,
        cpu_seconds=cpu,
        notes=f"{failed} failed" if failed else "",
    )
    return m, [result_of_outcome(model.task, o) for o in outcomes]


# -- the transformers pipeline ----------------------------------------------------------------------------


def load_pipeline(model: BenchModel) -> Any:
    from transformers import pipeline

    kind: Any = {TaskName.CLASSIFICATION: "text-classification", TaskName.FILL_MASK: "fill-mask"}[model.task]
    return pipeline(kind, model=str(model.path), tokenizer=str(model.path), device="cpu")


def run_pipeline(
    pipe: Any, model: BenchModel, inputs: Sequence[dict[str, Any]], batch_size: int, *, warm_up: bool = True
) -> tuple[Measurement, list[Ranked]]:
    """The pipeline over every input in one call (it batches ``batch_size`` consecutive inputs, each batch
    padded to its longest), with ``truncation=True``."""
    task = model.task
    tokenizer = pipe.tokenizer
    if task is TaskName.CLASSIFICATION:
        texts = [i["text"] for i in inputs]
        kwargs: dict[str, Any] = {"truncation": True, "top_k": TASK_PARAMS[task]["top_k"]}
    else:
        texts = [i["text"].replace(MASK_PLACEHOLDER, tokenizer.mask_token) for i in inputs]
        kwargs = {"tokenizer_kwargs": {"truncation": True}, "top_k": TASK_PARAMS[task]["top_k"]}
    if warm_up:
        pipe(warm_up_items(texts), batch_size=batch_size, **kwargs)
    start, cpu = time.perf_counter(), time.process_time()
    out = pipe(texts, batch_size=batch_size, **kwargs)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    lengths = [len(ids) for ids in tokenizer(texts, truncation=True)["input_ids"]]
    m = Measurement(
        task.value,
        f"pipeline bs={batch_size}",
        "fp32",
        len(inputs),
        seconds,
        sum(lengths),
        padded_in_order(lengths, batch_size) if batch_size > 1 else sum(lengths),
        cpu_seconds=cpu,
    )
    return m, [ranked_from_pipeline(task, r) for r in out]


# -- question answering: the raw model ---------------------------------------------------------------------


@dataclass
class RawQA:
    """A QA model and its tokenizer, loaded by hand."""

    tokenizer: Any
    net: Any


def load_raw_qa(model: BenchModel) -> RawQA:
    from transformers import AutoModelForQuestionAnswering, AutoTokenizer

    net = AutoModelForQuestionAnswering.from_pretrained(model.path).eval()
    return RawQA(AutoTokenizer.from_pretrained(model.path), net)


def run_raw_qa(
    raw: RawQA, inputs: Sequence[dict[str, Any]], batch_size: int, *, warm_up: bool = True
) -> tuple[Measurement, None]:
    """What a user writes by hand without a QA pipeline: tokenize ``batch_size`` consecutive items into windows
    (the engine's defaults: 384 tokens, stride 128, question first), pad to the longest window, forward. Span
    decoding is left out, so this baseline does less work than the engine (and than the 5.2 pipeline did)."""
    import torch

    params = params_for(TaskName.QUESTION_ANSWERING)

    def loop(items: Sequence[dict[str, Any]]) -> tuple[int, int]:
        real = padded = 0
        for i in range(0, len(items), batch_size):
            batch = items[i : i + batch_size]
            enc = raw.tokenizer(
                [b["question"] for b in batch],
                [b["context"] for b in batch],
                truncation="only_second",
                max_length=params["max_seq_len"],
                stride=params["doc_stride"],
                return_overflowing_tokens=True,
                padding=True,
                return_tensors="pt",
            )
            enc.pop("overflow_to_sample_mapping", None)
            with torch.inference_mode():
                raw.net(**enc)
            real += int(enc["attention_mask"].sum())
            padded += int(enc["attention_mask"].numel())
        return real, padded

    if warm_up:
        loop(warm_up_items(inputs))
    start, cpu = time.perf_counter(), time.process_time()
    real, padded = loop(inputs)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    m = Measurement(
        TaskName.QUESTION_ANSWERING.value,
        f"raw model loop bs={batch_size}",
        "fp32",
        len(inputs),
        seconds,
        real,
        padded,
        cpu_seconds=cpu,
        notes="no QA pipeline in transformers 5.24: tokenize+forward only, no span decoding",
    )
    return m, None


# -- sentence-transformers: embeddings and cross-encoders -------------------------------------------------------


def load_sentence_transformer(model: BenchModel) -> Any:
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(model.path), device="cpu")


def run_encode(
    st: Any, inputs: Sequence[dict[str, Any]], batch_size: int, *, warm_up: bool = True
) -> tuple[Measurement, list[Result]]:
    """``SentenceTransformer.encode(texts, batch_size=…)``: it sorts the texts by length (characters, longest
    first) and pads each batch of ``batch_size`` to its longest."""
    texts = [i["text"] for i in inputs]
    if warm_up:
        st.encode(warm_up_items(texts), batch_size=batch_size, show_progress_bar=False)
    start, cpu = time.perf_counter(), time.process_time()
    vectors = st.encode(texts, batch_size=batch_size, convert_to_numpy=True, show_progress_bar=False)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    lengths = np.array(
        [len(ids) for ids in st.tokenizer(texts, truncation=True, max_length=st.max_seq_length)["input_ids"]]
    )
    order = np.argsort([-len(t) for t in texts], kind="stable")
    m = Measurement(
        TaskName.EMBEDDING.value,
        f"ST encode bs={batch_size}",
        "fp32",
        len(inputs),
        seconds,
        int(lengths.sum()),
        padded_in_order(lengths[order], batch_size),
        cpu_seconds=cpu,
        notes="SentenceTransformer.encode (sorts by length)",
    )
    return m, [np.asarray(v, dtype=np.float32).reshape(1, -1) for v in vectors]


def load_cross_encoder(model: BenchModel) -> Any:
    from sentence_transformers import CrossEncoder

    return CrossEncoder(str(model.path), device="cpu")


def rerank_pairs(inputs: Sequence[dict[str, Any]]) -> list[tuple[str, str]]:
    """Every (query, document) pair of the lines, line after line."""
    return [(i["query"], d) for i in inputs for d in i["documents"]]


def run_cross_encoder(
    ce: Any, inputs: Sequence[dict[str, Any]], batch_size: int, *, warm_up: bool = True
) -> tuple[Measurement, list[Result]]:
    """``CrossEncoder.predict(pairs, batch_size=…)`` over every (query, document) pair at once (it sorts the pairs
    by length, as encode does), then each query's documents ranked by score."""
    pairs = rerank_pairs(inputs)
    if warm_up:
        ce.predict(rerank_pairs(warm_up_for(TaskName.RERANK, inputs)), batch_size=batch_size, show_progress_bar=False)
    start, cpu = time.perf_counter(), time.process_time()
    scores = ce.predict(pairs, batch_size=batch_size, show_progress_bar=False)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    enc = ce.tokenizer([q for q, _ in pairs], [d for _, d in pairs], truncation=True, max_length=ce.max_length)
    lengths = np.array([len(ids) for ids in enc["input_ids"]])
    order = np.argsort([-(len(q) + len(d)) for q, d in pairs], kind="stable")
    out: list[Result] = []
    at = 0
    for item in inputs:
        k = len(item["documents"])
        out.append(ranked_by_score(scores[at : at + k]))
        at += k
    m = Measurement(
        TaskName.RERANK.value,
        f"CrossEncoder bs={batch_size}",
        "fp32",
        len(inputs),
        seconds,
        int(lengths.sum()),
        padded_in_order(lengths[order], batch_size),
        cpu_seconds=cpu,
        notes=f"CrossEncoder.predict over {len(pairs)} pairs (sorts by length)",
    )
    return m, out


# -- zero-shot: the transformers pipeline -------------------------------------------------------------------


def load_zero_shot_pipeline(model: BenchModel) -> Any:
    from transformers import pipeline

    return pipeline("zero-shot-classification", model=str(model.path), tokenizer=str(model.path), device="cpu")


def run_zero_shot_pipeline(
    pipe: Any, inputs: Sequence[dict[str, Any]], batch_size: int, *, warm_up: bool = True
) -> tuple[Measurement, list[Result]]:
    """``pipeline("zero-shot-classification")(texts, candidate_labels=…, batch_size=…)``: one (text, hypothesis)
    pair per label, batches of ``batch_size`` consecutive pairs (across texts), each padded to its longest."""
    task = TaskName.ZERO_SHOT_CLASSIFICATION
    labels = list(TASK_PARAMS[task]["candidate_labels"])
    template = "This example is {}."
    texts = [i["text"] for i in inputs]
    if warm_up:
        pipe(warm_up_for(task, texts), candidate_labels=labels, batch_size=batch_size)
    start, cpu = time.perf_counter(), time.process_time()
    out = pipe(texts, candidate_labels=labels, batch_size=batch_size)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    enc = pipe.tokenizer(
        [t for t in texts for _ in labels], [template.format(x) for _ in texts for x in labels], truncation="only_first"
    )
    lengths = [len(ids) for ids in enc["input_ids"]]
    m = Measurement(
        task.value,
        f"pipeline bs={batch_size}",
        "fp32",
        len(inputs),
        seconds,
        sum(lengths),
        padded_in_order(lengths, batch_size),
        cpu_seconds=cpu,
        notes=f"{len(labels)} labels: {len(lengths)} pairs",
    )
    return m, [[(lab, float(s)) for lab, s in zip(r["labels"], r["scores"], strict=True)] for r in out]
