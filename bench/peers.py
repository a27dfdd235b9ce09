"""Peers (``python -m bench --tasks peers``): on the same held-out English sentences (`bench.inputs`) and the real
all-MiniLM-L6-v2, what a user would run instead of inferq, each as the user would run it (texts sorted by length,
batches of 32, mean pooling and normalisation written by hand where the library has none), beside inferq's engine
in-process on each backend and precision:

* sentence-transformers ``encode``, fp32, and bf16 where the CPU multiplies bf16 in hardware (AVX-512 BF16 or
  AMX; emulated bf16 is several times slower than fp32 and no one would pick it);
* CTranslate2's ``Encoder``, float32 and int8 (the checkpoint converted by ``TransformersConverter``);
* ONNX Runtime, fp32 with onnxruntime's BERT graph fusion (``optimize_model``) and dynamic int8
  (``quantize_dynamic`` of the fused graph);
* inferq's `EmbeddingEngine` through the model cache, as a worker holds it: torch at fp32, bf16 and int8, and the
  CTranslate2 backend (`worker.backends`) at fp32 and int8.

Every row reports items/s (the median of its rounds; rounds interleave the variants so that they share the
machine's load) and its vectors' cosine to sentence-transformers' fp32 vectors (min and mean), then checks the
quality tier its precision promises (`inferq.precision`): PASS or FAIL. The whole system's embedding rows come from
``--tasks embedding`` (same texts, same seed). Conversions are cached under ``--models-dir``/peers."""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from inferq.precision import Quality, Tier, label_quality, tier_of, vector_quality

log = logging.getLogger(__name__)

#: The batch a user passes (sentence-transformers' default).
PEER_BATCH = 32

#: all-MiniLM-L6-v2's ``max_seq_length``: every peer truncates there, as ``encode`` does.
MAX_TOKENS = 256

#: ONNX opset of the export: 17 has LayerNormalization, which onnxruntime's fusion reads.
ONNX_OPSET = 17

#: The reference row: every row's quality is measured against its vectors.
REFERENCE = "sentence-transformers encode"


@dataclass(frozen=True)
class Timed:
    """What an ``encode`` returns when its own clock, not the call's, times it: the whole system's rows, timed
    from the submission to the job's ``finished_at`` (reading the results back for the quality check is not
    timed)."""

    values: np.ndarray
    seconds: float


#: A peer: the name of the row, its precision, and a function from texts to float32 vectors ``[n, d]`` in input
#: order (`Timed` where its own clock times it).
Encode = Callable[[list[Any]], "np.ndarray | Timed"]


@dataclass
class Peer:
    name: str
    precision: str
    encode: Encode
    notes: str = ""


@dataclass
class PeerRow:
    """One peer's runs over the same texts."""

    name: str
    precision: str
    items: int
    seconds: list[float] = field(default_factory=list)
    quality: Quality | None = None
    notes: str = ""

    @property
    def tier(self) -> Tier:
        return tier_of(self.precision)

    @property
    def items_per_second(self) -> float:
        return self.items / statistics.median(self.seconds) if self.seconds else 0.0

    @property
    def passed(self) -> bool | None:
        return None if self.quality is None else self.quality.meets(self.tier)

    def as_json(self) -> dict[str, Any]:
        q = self.quality
        return {
            "name": self.name,
            "precision": self.precision,
            "tier": self.tier.value,
            "items": self.items,
            "seconds": self.seconds,
            "items_per_second": self.items_per_second,
            "cosine_min": q.cosine_min if q else None,
            "cosine_mean": q.cosine_mean if q else None,
            "label_agreement": q.label_agreement if q else None,
            "tier_passed": self.passed,
            "notes": self.notes,
        }


# -- batches as a user writes them ------------------------------------------------------------------------


def length_sorted_batches(lengths: Sequence[int], batch: int = PEER_BATCH) -> list[np.ndarray]:
    """Indices sorted by length (longest first, ties in input order), cut into batches of ``batch``."""
    order = np.argsort(-np.asarray(lengths, dtype=np.int64), kind="stable")
    return [order[i : i + batch] for i in range(0, len(order), batch)]


def pad_batch(ids: Sequence[Sequence[int]], rows: np.ndarray, pad_id: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The token ids of ``rows`` right-padded to the longest, and the attention mask (int64)."""
    width = max(len(ids[r]) for r in rows)
    out = np.full((len(rows), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    for i, r in enumerate(rows):
        n = len(ids[r])
        out[i, :n] = ids[r]
        mask[i, :n] = 1
    return out, mask


def mean_pool_normalize(states: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """all-MiniLM-L6-v2's pooling: the mean over real tokens, L2-normalised."""
    m = mask[:, :, None].astype(np.float32)
    v = (states.astype(np.float32) * m).sum(axis=1) / np.maximum(m.sum(axis=1), 1e-9)
    return (v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def sorted_loop(
    tokenizer: Any, rows: Callable[[np.ndarray, np.ndarray], np.ndarray], max_length: int = MAX_TOKENS
) -> Encode:
    """Tokenize (truncated at ``max_length``), sort by length, batches of `PEER_BATCH`, ``rows(ids, mask) → one
    output row per text``, and put the rows back in input order."""

    def encode(texts: list[str]) -> np.ndarray:
        ids = tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]
        out: np.ndarray | None = None
        for batch_rows in length_sorted_batches([len(x) for x in ids]):
            batch, mask = pad_batch(ids, batch_rows, int(tokenizer.pad_token_id or 0))
            values = rows(batch, mask)
            if out is None:
                out = np.empty((len(texts), values.shape[1]), dtype=np.float32)
            out[batch_rows] = values
        return out if out is not None else np.empty((0, 0), dtype=np.float32)

    return encode


def by_hand(
    tokenizer: Any, forward: Callable[[np.ndarray, np.ndarray], np.ndarray], max_length: int = MAX_TOKENS
) -> Encode:
    """`sorted_loop` with ``forward(ids, mask) → hidden states`` mean-pooled and normalised (an embedding)."""
    return sorted_loop(tokenizer, lambda ids, mask: mean_pool_normalize(forward(ids, mask), mask), max_length)


def softmax_rows(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


# -- the peers ---------------------------------------------------------------------------------------------


def sentence_transformers_peer(source: Path, precision: str) -> Peer:
    import torch
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(source), device="cpu")
    if precision == "bf16":
        st = st.to(torch.bfloat16)

    def encode(texts: list[str]) -> np.ndarray:
        v = st.encode(texts, batch_size=PEER_BATCH, convert_to_numpy=False, show_progress_bar=False)
        return torch.stack(list(v)).float().numpy()

    return Peer(REFERENCE, precision, encode, "sorts by length itself")


def ctranslate2_peer(converted: Path, tokenizer: Any, precision: str, threads: int) -> Peer:
    import ctranslate2

    compute_type = {"fp32": "float32", "int8": "int8_float32"}[precision]
    encoder = ctranslate2.Encoder(str(converted), device="cpu", compute_type=compute_type, intra_threads=threads)

    def forward(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        lengths = mask.sum(axis=1).astype(np.int32)
        out = encoder.forward_batch(
            ctranslate2.StorageView.from_array(ids.astype(np.int32)), ctranslate2.StorageView.from_array(lengths)
        )
        return np.asarray(out.last_hidden_state)

    return Peer("CTranslate2 Encoder", precision, by_hand(tokenizer, forward), f"compute_type={compute_type}")


def onnxruntime_peer(path: Path, tokenizer: Any, precision: str, threads: int) -> Peer:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}

    def forward(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        feed = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in names:
            feed["token_type_ids"] = np.zeros_like(ids)
        return np.asarray(session.run(None, feed)[0])

    notes = "BERT graph fusion" if precision == "fp32" else "quantize_dynamic (QInt8) of the fused graph"
    return Peer("ONNX Runtime", precision, by_hand(tokenizer, forward), notes)


def engine_peer(source: Path, precision: str, backend: str) -> Peer:
    """inferq's embedding engine through the model cache (the model's own pooling and normalisation)."""
    from bench.measure import vector_of
    from inferq.settings import Settings
    from inferq.task_specs import TaskName
    from worker.model_cache import ModelCache

    engine = ModelCache(Settings(), precision=precision, backend=backend).engine(str(source), TaskName.EMBEDDING)
    used = type(engine.model).__name__

    def encode(texts: list[str]) -> np.ndarray:
        outcomes = engine.run([{"text": t} for t in texts], {})
        rows = []
        for o in outcomes:
            if o is None or not o.ok:
                raise RuntimeError(f"inferq engine failed an item: {None if o is None else o.error}")
            rows.append(vector_of(o.result, o.vector).reshape(-1))
        return np.stack(rows)

    return Peer(f"inferq engine ({backend})", precision, encode, f"in-process, runs {used}")


# -- classification peers: probabilities per label id -------------------------------------------------------


def label_order(source: Path) -> list[str]:
    """The model's labels in id order."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(source)
    return [config.id2label[i] for i in range(len(config.id2label))]


def by_label(results: Sequence[Sequence[dict[str, Any]]], labels: list[str]) -> np.ndarray:
    """``[{"label", "score"}, …]`` per item as scores in label-id order."""
    at = {label: i for i, label in enumerate(labels)}
    out = np.zeros((len(results), len(labels)), dtype=np.float32)
    for row, result in enumerate(results):
        for r in result:
            out[row, at[r["label"]]] = float(r["score"])
    return out


def pipeline_peer(source: Path) -> Peer:
    """``pipeline("text-classification")(texts, batch_size=32, truncation=True, top_k=None)``: consecutive
    batches, each padded to its longest (the pipeline sorts nothing)."""
    from transformers import pipeline

    pipe = pipeline("text-classification", model=str(source), tokenizer=str(source), device="cpu")
    labels = label_order(source)

    def encode(texts: list[str]) -> np.ndarray:
        return by_label(pipe(texts, batch_size=PEER_BATCH, truncation=True, top_k=None), labels)

    return Peer("transformers pipeline", "fp32", encode, "consecutive batches of 32")


def raw_loop_peer(source: Path, max_length: int) -> Peer:
    """The model and its tokenizer by hand: length-sorted batches of 32, softmax of the logits."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    net = AutoModelForSequenceClassification.from_pretrained(source).eval()

    def rows(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            logits = net(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).logits
        return softmax_rows(logits.float().numpy())

    return Peer("raw model loop", "fp32", sorted_loop(AutoTokenizer.from_pretrained(source), rows, max_length))


def ctranslate2_classifier_peer(source: Path, converted: Path, precision: str, threads: int, max_length: int) -> Peer:
    """CTranslate2's encoder (it converts the base model, not the head) and the head's weights applied by hand:
    DistilBERT's pre_classifier, ReLU and classifier on the first token; BERT's classifier on the pooler output."""
    import ctranslate2
    from safetensors.numpy import load_file
    from transformers import AutoConfig, AutoTokenizer

    config = AutoConfig.from_pretrained(source)
    weights = load_file(str(source / "model.safetensors"))
    compute_type = {"fp32": "float32", "int8": "int8_float32"}[precision]
    encoder = ctranslate2.Encoder(str(converted), device="cpu", compute_type=compute_type, intra_threads=threads)

    def linear(x: np.ndarray, name: str) -> np.ndarray:
        out: np.ndarray = x @ weights[f"{name}.weight"].T + weights[f"{name}.bias"]
        return out

    def rows(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        out = encoder.forward_batch(
            ctranslate2.StorageView.from_array(ids.astype(np.int32)),
            ctranslate2.StorageView.from_array(mask.sum(axis=1).astype(np.int32)),
        )
        if config.model_type == "distilbert":
            first = np.asarray(out.last_hidden_state)[:, 0]
            logits = linear(np.maximum(linear(first, "pre_classifier"), 0.0), "classifier")
        else:
            logits = linear(np.asarray(out.pooler_output), "classifier")
        return softmax_rows(logits)

    notes = f"compute_type={compute_type}; the head by hand"
    return Peer(
        "CTranslate2 Encoder", precision, sorted_loop(AutoTokenizer.from_pretrained(source), rows, max_length), notes
    )


def classifier_engine_peer(source: Path, precision: str, backend: str = "torch") -> Peer:
    """inferq's classification engine through the model cache, every label's score."""
    from inferq.settings import Settings
    from inferq.task_specs import TaskName
    from worker.model_cache import ModelCache

    cache = ModelCache(Settings(), precision=precision, backend=backend)
    engine = cache.engine(str(source), TaskName.CLASSIFICATION)
    labels = label_order(source)

    def encode(texts: list[str]) -> np.ndarray:
        outcomes = engine.run([{"text": t} for t in texts], {"top_k": None})
        results = []
        for o in outcomes:
            if o is None or not o.ok:
                raise RuntimeError(f"inferq engine failed an item: {None if o is None else o.error}")
            results.append(o.result)
        return by_label(results, labels)

    return Peer(f"inferq engine ({backend})", precision, encode, f"in-process, runs {type(engine.model).__name__}")


def build_classification_peers(source: Path, cache: Path, threads: int, max_length: int) -> list[Peer]:
    """Every classification peer and inferq variant, the pipeline (the reference) first."""
    peers = [pipeline_peer(source), raw_loop_peer(source, max_length)]
    converted = convert_ctranslate2(source, cache)
    peers += [ctranslate2_classifier_peer(source, converted, p, threads, max_length) for p in ("fp32", "int8")]
    for precision in ("fp32", *(["bf16"] if native_bf16() else []), "int8"):
        peers.append(classifier_engine_peer(source, precision))
    peers += [classifier_engine_peer(source, p, "ctranslate2") for p in ("fp32", "int8")]
    return peers


def compare_labels(got: np.ndarray, want: np.ndarray) -> Quality:
    """Top labels against the reference's, item by item."""
    return label_quality(got.argmax(axis=1).tolist(), want.argmax(axis=1).tolist())


# -- rerank peers: a score per (query, document), one row per query ------------------------------------------


def pair_loop(
    tokenizer: Any, scores: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray], max_length: int
) -> Encode:
    """Every (query, document) pair of the items tokenized as a pair (truncated), sorted by length, batches of
    `PEER_BATCH`, ``scores(ids, mask, token_types) → one score per pair``, back as ``[queries, documents]``."""

    def encode(items: list[dict[str, Any]]) -> np.ndarray:
        pairs = [(i["query"], d) for i in items for d in i["documents"]]
        enc = tokenizer([q for q, _ in pairs], [d for _, d in pairs], truncation=True, max_length=max_length)
        ids, types = enc["input_ids"], enc.get("token_type_ids")
        out = np.empty(len(pairs), dtype=np.float32)
        for rows in length_sorted_batches([len(x) for x in ids]):
            batch, mask = pad_batch(ids, rows, int(tokenizer.pad_token_id or 0))
            type_batch = pad_batch(types, rows, 0)[0] if types is not None else np.zeros_like(batch)
            out[rows] = scores(batch, mask, type_batch).reshape(-1)
        return out.reshape(len(items), -1)

    return encode


def sigmoid_rows(x: np.ndarray) -> np.ndarray:
    return (1.0 / (1.0 + np.exp(-x.astype(np.float64)))).astype(np.float32)


def cross_encoder_peer(source: Path, precision: str) -> Peer:
    """``CrossEncoder.predict(pairs, batch_size=32)`` over every pair (it sorts them by length itself)."""
    import torch
    from sentence_transformers import CrossEncoder

    ce = CrossEncoder(str(source), device="cpu")
    if precision == "bf16":
        ce.model.to(torch.bfloat16)

    def encode(items: list[dict[str, Any]]) -> np.ndarray:
        pairs = [(i["query"], d) for i in items for d in i["documents"]]
        scores = ce.predict(pairs, batch_size=PEER_BATCH, show_progress_bar=False, convert_to_numpy=False)
        flat = torch.stack(list(scores)).float().numpy() if len(scores) else np.empty(0, dtype=np.float32)
        return flat.reshape(len(items), -1)

    return Peer("CrossEncoder predict", precision, encode, "sorts by length itself")


def ctranslate2_cross_encoder_peer(
    source: Path, converted: Path, precision: str, threads: int, max_length: int
) -> Peer:
    """CTranslate2's BERT encoder on the pairs (with their token types) and the head by hand: the classifier on
    the pooler output, then CrossEncoder's default activation (sigmoid)."""
    import ctranslate2
    from safetensors.numpy import load_file
    from transformers import AutoTokenizer

    weights = load_file(str(source / "model.safetensors"))
    compute_type = {"fp32": "float32", "int8": "int8_float32"}[precision]
    encoder = ctranslate2.Encoder(str(converted), device="cpu", compute_type=compute_type, intra_threads=threads)

    def scores(ids: np.ndarray, mask: np.ndarray, types: np.ndarray) -> np.ndarray:
        out = encoder.forward_batch(
            ctranslate2.StorageView.from_array(ids.astype(np.int32)),
            ctranslate2.StorageView.from_array(mask.sum(axis=1).astype(np.int32)),
            token_type_ids=types.tolist(),
        )
        pooled = np.asarray(out.pooler_output)
        logits = pooled @ weights["classifier.weight"].T + weights["classifier.bias"]
        return sigmoid_rows(logits)

    notes = f"compute_type={compute_type}; the head by hand"
    return Peer(
        "CTranslate2 Encoder", precision, pair_loop(AutoTokenizer.from_pretrained(source), scores, max_length), notes
    )


def rerank_engine_peer(source: Path, precision: str, backend: str = "torch") -> Peer:
    """inferq's rerank engine through the model cache: every document's score, by index."""
    from inferq.settings import Settings
    from inferq.task_specs import TaskName
    from worker.model_cache import ModelCache

    engine = ModelCache(Settings(), precision=precision, backend=backend).engine(str(source), TaskName.RERANK)

    def encode(items: list[dict[str, Any]]) -> np.ndarray:
        outcomes = engine.run(items, {})
        results = []
        for o in outcomes:
            if o is None or not o.ok:
                raise RuntimeError(f"inferq engine failed an item: {None if o is None else o.error}")
            results.append(o.result)
        return by_index(results, items)

    return Peer(f"inferq engine ({backend})", precision, encode, f"in-process, runs {type(engine.model).__name__}")


def by_index(results: Sequence[Sequence[dict[str, Any]]], items: Sequence[dict[str, Any]]) -> np.ndarray:
    """Ranked ``[{"index", "score"}, …]`` per query as scores in document order."""
    out = np.zeros((len(items), max((len(i["documents"]) for i in items), default=0)), dtype=np.float32)
    for row, result in enumerate(results):
        for r in result:
            out[row, int(r["index"])] = float(r["score"])
    return out


def build_rerank_peers(source: Path, cache: Path, threads: int, max_length: int) -> list[Peer]:
    """Every rerank peer and inferq variant, CrossEncoder at fp32 (the reference) first."""
    bf16 = native_bf16()
    peers = [cross_encoder_peer(source, "fp32"), *([cross_encoder_peer(source, "bf16")] if bf16 else [])]
    converted = convert_ctranslate2(source, cache)
    peers += [ctranslate2_cross_encoder_peer(source, converted, p, threads, max_length) for p in ("fp32", "int8")]
    for precision in ("fp32", *(["bf16"] if bf16 else []), "int8"):
        peers.append(rerank_engine_peer(source, precision))
    peers += [rerank_engine_peer(source, p, "ctranslate2") for p in ("fp32", "int8")]
    return peers


# -- conversions, cached -----------------------------------------------------------------------------------


def convert_ctranslate2(source: Path, root: Path) -> Path:
    from worker.backends.ct2 import convert

    return convert(str(source), None, root / "ctranslate2")


def export_onnx(source: Path, root: Path) -> tuple[Path, Path]:
    """The fused fp32 graph and its dynamic int8 quantization (exported, fused and quantized on first use)."""
    fused, int8 = root / "onnx" / "model-fused.onnx", root / "onnx" / "model-fused-int8.onnx"
    if fused.is_file() and int8.is_file():
        return fused, int8
    import onnx
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.transformers import optimizer
    from transformers import AutoModel, AutoTokenizer

    fused.parent.mkdir(parents=True, exist_ok=True)
    plain = fused.parent / "model.onnx"
    # The eager attention exports as the MatMul/Softmax pattern that onnxruntime's fusion recognises.
    model = AutoModel.from_pretrained(source, attn_implementation="eager").eval()
    tokenizer = AutoTokenizer.from_pretrained(source)

    class LastHiddenState(torch.nn.Module):
        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
            return self.inner(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).last_hidden_state

    enc = tokenizer(["a short one", "and a somewhat longer sentence"], padding=True, return_tensors="pt")
    names = ["input_ids", "attention_mask", "token_type_ids"]
    log.info("peers: exporting %s to ONNX", source)
    torch.onnx.export(
        LastHiddenState(model),
        tuple(enc[n] for n in names),
        str(plain),
        input_names=names,
        output_names=["last_hidden_state"],
        dynamic_axes={n: {0: "batch", 1: "tokens"} for n in [*names, "last_hidden_state"]},
        opset_version=ONNX_OPSET,
        dynamo=False,
    )
    config = model.config
    optimized = optimizer.optimize_model(
        str(plain), model_type="bert", num_heads=config.num_attention_heads, hidden_size=config.hidden_size
    )
    optimized.save_model_to_file(str(fused))
    quantize_dynamic(
        str(fused),
        str(int8),
        weight_type=QuantType.QInt8,
        # The fused operators are outside ONNX's own domain: shape inference gives their outputs no type.
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
    )
    return fused, int8


def native_bf16() -> bool:
    from worker.model_cache import cpu_has_native_bf16

    return cpu_has_native_bf16()


# -- the run -----------------------------------------------------------------------------------------------


def build_peers(source: Path, cache: Path, threads: int, *, onnx: bool = True) -> list[Peer]:
    """Every peer and inferq variant, the reference first."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source)
    bf16 = native_bf16()
    peers = [sentence_transformers_peer(source, "fp32")]
    if bf16:
        peers.append(sentence_transformers_peer(source, "bf16"))
    converted = convert_ctranslate2(source, cache)
    peers += [ctranslate2_peer(converted, tokenizer, p, threads) for p in ("fp32", "int8")]
    if onnx:
        fused, int8 = export_onnx(source, cache)
        peers += [
            onnxruntime_peer(fused, tokenizer, "fp32", threads),
            onnxruntime_peer(int8, tokenizer, "int8", threads),
        ]
    for precision in ("fp32", *(["bf16"] if bf16 else []), "int8"):
        peers.append(engine_peer(source, precision, "torch"))
    peers += [engine_peer(source, p, "ctranslate2") for p in ("fp32", "int8")]
    return peers


def run_peers(
    peers: Sequence[Peer],
    texts: list[Any],
    rounds: int,
    warm_up: int = PEER_BATCH,
    compare: Callable[[np.ndarray, np.ndarray], Quality] = vector_quality,
    slices: int = 1,
) -> list[PeerRow]:
    """Each peer warmed up on the longest texts, then ``rounds`` timed runs over all of them; quality (``compare``:
    vectors by default) against the first peer's (the fp32 reference) outputs of the first round.

    The peers interleave finely, so that a shared machine's load falls on all of them alike: each round cuts the
    texts into ``slices`` consecutive slices and runs every peer on one slice before the next slice (A, B, C, A, B,
    C …), the order rotated by one at each slice; a row's time for the round is the sum of its slices'."""
    longest = sorted(texts, key=lambda x: len(x) if isinstance(x, str) else len(str(x)), reverse=True)[:warm_up]
    rows = [PeerRow(p.name, p.precision, len(texts), notes=p.notes) for p in peers]
    firsts: list[list[np.ndarray]] = [[] for _ in peers]
    for p in peers:
        p.encode(longest)
    slices = max(1, min(slices, len(texts)))
    bounds = np.linspace(0, len(texts), slices + 1).astype(int)
    for r in range(rounds):
        spent = [0.0] * len(peers)
        for k in range(slices):
            part = texts[bounds[k] : bounds[k + 1]]
            shift = (r * slices + k) % len(peers)
            for i in [*range(shift, len(peers)), *range(shift)]:
                start = time.perf_counter()
                got = peers[i].encode(part)
                elapsed = time.perf_counter() - start
                if isinstance(got, Timed):
                    values, elapsed = got.values, got.seconds
                else:
                    values = got
                spent[i] += elapsed
                if r == 0:
                    firsts[i].append(values)
        for i, p in enumerate(peers):
            rows[i].seconds.append(spent[i])
            log.info("peers round %d: %s %s %.1f items/s", r + 1, p.name, p.precision, len(texts) / spent[i])
    reference = np.concatenate(firsts[0])
    for row, got in zip(rows, firsts, strict=True):
        row.quality = compare(np.concatenate(got), reference)
    return rows


#: Slices of each round (`run_peers`): short enough that the machine's load moves little within one, many
#: enough that every row sees the same mix of it.
SLICES = 4


def bench_peers(
    source: Path,
    cache: Path,
    texts: list[Any],
    rounds: int,
    threads: int,
    task: str = "embedding",
    extra: Sequence[Peer] = (),
) -> dict[str, Any]:
    """The peer table of ``task`` (``embedding`` on a sentence-transformers model and texts, ``classification`` on
    a sequence classifier and texts, ``rerank`` on a cross-encoder and query items), with ``extra`` rows (the
    whole system's, `system_peers`) interleaved with the others: its rows, the targets (`peer_targets`) and what
    they ran on, for the JSON file and `render`."""
    if task == "embedding":
        rows = run_peers([*build_peers(source, cache, threads), *extra], texts, rounds, slices=SLICES)
    else:
        from transformers import AutoTokenizer

        max_length = min(int(AutoTokenizer.from_pretrained(source).model_max_length), 512)
        build = build_classification_peers if task == "classification" else build_rerank_peers
        # Classifiers: the top label; rerank: the top document of each query.
        # A rerank item is a query and its 50 documents: two of them warm up.
        warm_up = PEER_BATCH if task == "classification" else 2
        peers = [*build(source, cache, threads, max_length), *extra]
        rows = run_peers(peers, texts, rounds, warm_up, compare_labels, slices=SLICES)
    checks = peer_targets(task, rows)
    return {
        "task": task,
        "model": str(source),
        "items": len(texts),
        "rounds": rounds,
        "threads": threads,
        "batch": PEER_BATCH,
        "native_bf16": native_bf16(),
        "rows": [r.as_json() for r in rows],
        "targets": [t.as_json() for t in checks],
        "_rows": rows,
        "_targets": checks,
    }


def quality_cell(q: Quality | None) -> str:
    if q is None:
        return "-"
    if q.cosine_min is not None and q.cosine_mean is not None:
        return f"{q.cosine_min:.5f} / {q.cosine_mean:.5f}"
    if q.label_agreement is not None:
        return f"top-1 same {100 * q.label_agreement:.1f}%"
    return "-"


def render(rows: Sequence[PeerRow]) -> str:
    """The peer table: items/s, the ratio to the first row (the fp32 reference), quality against it (cosine min /
    mean for vectors; for classifiers and rerankers the share of items whose top label or top document is the
    reference's), the tier of the row's precision and its check."""
    base = rows[0].items_per_second if rows else 0.0
    reference = f"{rows[0].name} {rows[0].precision}" if rows else "reference"
    head = ("what", "precision", "items/s", f"vs {reference}", "quality vs reference", "tier", "check")
    lines = [head]
    for r in rows:
        lines.append(
            (
                r.name,
                r.precision,
                f"{r.items_per_second:.{1 if r.items_per_second >= 10 else 2}f}",
                f"{r.items_per_second / base:.2f}" if base else "-",
                quality_cell(r.quality),
                r.tier.value,
                {True: "PASS", False: "FAIL", None: "-"}[r.passed],
            )
        )
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(head))]
    out = ["  ".join(str(c).ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in lines]
    out.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(out)


# -- the whole system: client → Redis → one worker process → PostgreSQL ------------------------------------
#
# The whole system runs as a user's ``inferq worker`` runs with its defaults on this machine: on a CPU one pool
# process taking every core (`worker.threads.default_pool`), so a CTranslate2 classifier there runs one lane per
# core (`Engine.lanes`), and the default chunk size. Not one process per core on chunks cut small to feed each: at
# one thread a process a classifier has one lane, every chunk pays its claim, read and write, and each chunk is
# length-sorted alone (a slice of 32 texts in two chunks of 16 pads more than in one of 32).

#: The whole system's variants of each task's benchmark model: (registry suffix, precision, backend). bf16 only
#: where the CPU has it natively; torch's dynamic int8 for classification only (on vectors and rerank scores it
#: misses the reduced tier: see the peer tables).
SYSTEM_VARIANTS: dict[str, tuple[tuple[str, str, str], ...]] = {
    "embedding": (
        ("", "fp32", "torch"),
        ("@bf16", "bf16", "torch"),
        ("@ct2", "fp32", "ctranslate2"),
        ("@ct2-int8", "int8", "ctranslate2"),
    ),
    "classification": (
        ("", "fp32", "torch"),
        ("@bf16", "bf16", "torch"),
        ("@int8", "int8", "torch"),
        ("@ct2", "fp32", "ctranslate2"),
        ("@ct2-int8", "int8", "ctranslate2"),
    ),
    "rerank": (
        ("", "fp32", "torch"),
        ("@bf16", "bf16", "torch"),
        ("@ct2", "fp32", "ctranslate2"),
        ("@ct2-int8", "int8", "ctranslate2"),
    ),
}

#: The name of every whole-system row (followed by its backend).
SYSTEM_ROW = "inferq system"


def system_variants(task: str, bf16: bool) -> list[tuple[str, str, str]]:
    return [v for v in SYSTEM_VARIANTS[task] if v[1] != "bf16" or bf16]


#: Items of each task's warm-up job (`bench.__main__.start_peer_system`): enough for a few micro-batches, so that
#: every variant has loaded, converted and run its lanes once before the timed runs.
SYSTEM_WARM_ITEMS = {"embedding": 64, "classification": 16, "rerank": 1}


def system_registry(models: dict[str, tuple[str, Path]], bf16: bool) -> dict[str, dict[str, Any]]:
    """``INFERQ_MODELS`` for the system's worker: task → (registry name, directory) of each benchmark model, every
    variant of `SYSTEM_VARIANTS` under ``NAME+SUFFIX``. No chunk size: a job gets the one a user's would
    (`Settings.chunk_size_for`: 256 items on a CPU), so a slice of the peer set is one chunk."""
    entries: dict[str, dict[str, Any]] = {}
    for task, (name, path) in models.items():
        for suffix, precision, backend in system_variants(task, bf16):
            entries[name + suffix] = {
                "source": str(path),
                "task": task,
                "precision": precision,
                "backend": backend,
            }
    return entries


def system_peer(client: Any, task: str, name: str, precision: str, backend: str, source: Path) -> Peer:
    """One job through the whole system per call (the default chunk size), timed from `Client.submit` to the
    job's ``finished_at``; its results read back from PostgreSQL afterwards, untimed."""
    from bench.system import run_job, stored_vectors
    from inferq.task_specs import TaskName

    labels = label_order(source) if task == "classification" else []
    params: dict[str, Any] = {"top_k": None} if task == "classification" else {}

    def encode(texts: list[Any]) -> Timed:
        items = texts if task == "rerank" else [{"text": t} for t in texts]
        job = run_job(client, TaskName(task), name, items, params)
        if job.state != "succeeded" or job.failed:
            raise RuntimeError(f"system job {job.job_id} on {name} ended {job.state} ({job.failed} failed)")
        if task == "embedding":
            values = np.stack([v.reshape(-1) for v in stored_vectors(client, job.job_id) if v is not None])
        else:
            results = [r.result for r in client.results(job.job_id)]
            values = by_label(results, labels) if task == "classification" else by_index(results, items)
        return Timed(values, job.seconds)

    return Peer(f"{SYSTEM_ROW} ({backend})", precision, encode, f"registry name {name}")


def system_peers(client: Any, task: str, name: str, source: Path, bf16: bool) -> list[Peer]:
    return [
        system_peer(client, task, name + suffix, precision, backend, source)
        for suffix, precision, backend in system_variants(task, bf16)
    ]


# -- targets: inferq's whole system against the fastest peer of the same tier ---------------------------------

#: The issue's target: the whole system ≥ 1.1 × the fastest peer (not inferq) of at least the same quality tier,
#: measured in the same run.
SYSTEM_OVER_PEER = 1.1

#: Tiers best first (`Tier`'s order): a row of a better tier counts for every worse one.
TIER_ORDER = list(Tier)


@dataclass(frozen=True)
class PeerTarget:
    task: str
    tier: Tier
    #: The fastest whole-system row that keeps ``tier`` (a precision of that tier or better, its check passed).
    system: str
    #: The fastest row that is not inferq's and keeps ``tier``.
    peer: str
    system_items_per_second: float
    peer_items_per_second: float
    #: The median over the rounds of system items/s ÷ peer items/s within each round.
    ratio: float
    round_ratios: list[float]

    @property
    def met(self) -> bool:
        return self.ratio >= SYSTEM_OVER_PEER

    def line(self) -> str:
        rounds = ", ".join(f"{r:.2f}" for r in self.round_ratios)
        return (
            f"target {self.task} {self.tier.value}: {self.system} {self.system_items_per_second:.2f} items/s over "
            f"{self.peer} {self.peer_items_per_second:.2f} = {self.ratio:.2f} (rounds {rounds}), "
            f"≥ {SYSTEM_OVER_PEER}: {'PASS' if self.met else 'FAIL'}"
        )

    def as_json(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "tier": self.tier.value,
            "system": self.system,
            "peer": self.peer,
            "system_items_per_second": self.system_items_per_second,
            "peer_items_per_second": self.peer_items_per_second,
            "ratio": self.ratio,
            "round_ratios": self.round_ratios,
            "target": SYSTEM_OVER_PEER,
            "met": self.met,
        }


def keeps(row: PeerRow, tier: Tier) -> bool:
    """Whether ``row`` counts at ``tier``: its precision promises that tier or a better one, and kept it."""
    return TIER_ORDER.index(row.tier) <= TIER_ORDER.index(tier) and bool(row.passed)


def peer_targets(task: str, rows: Sequence[PeerRow]) -> list[PeerTarget]:
    """For each tier that has both: the fastest whole-system row against the fastest peer (a row not inferq's),
    each keeping the tier."""
    out = []
    for tier in TIER_ORDER:
        systems = [r for r in rows if r.name.startswith(SYSTEM_ROW) and keeps(r, tier)]
        peers = [r for r in rows if not r.name.startswith("inferq") and keeps(r, tier)]
        if not systems or not peers:
            continue
        best = max(systems, key=lambda r: r.items_per_second)
        rival = max(peers, key=lambda r: r.items_per_second)
        ratios = [p / s for s, p in zip(best.seconds, rival.seconds, strict=False)]
        out.append(
            PeerTarget(
                task,
                tier,
                f"{best.name} {best.precision}",
                f"{rival.name} {rival.precision}",
                best.items_per_second,
                rival.items_per_second,
                statistics.median(ratios),
                ratios,
            )
        )
    return out
