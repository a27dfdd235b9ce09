"""Backends: what runs a model's encoder. ``torch`` (transformers' own modules) runs everything; ``ctranslate2`` runs
the encoder of the embedding, classification and rerank tasks for the architectures CTranslate2 converts (BERT,
DistilBERT, XLM-RoBERTa, RoBERTa, CamemBERT): inferq's own pooling, Dense layers and normalisation run on its
hidden states for embeddings, and the checkpoint's own sequence-classification head (its torch modules, fp32) for
classification and rerank (`worker.backends.ct2`).

``auto`` picks from `AUTO_TABLE`, which must cite the benchmark run (``python -m bench --tasks peers``) that
justifies each entry; a model a backend cannot run falls back to torch with one log line."""

from __future__ import annotations

import logging
from typing import Any

from inferq.task_names import TaskName

log = logging.getLogger(__name__)

#: The backends a model may name (`inferq.settings.Backend`).
BACKENDS = ("auto", "torch", "ctranslate2")

#: The config classes (``model.config.model_type``) whose encoder CTranslate2 4.x converts.
CTRANSLATE2_MODEL_TYPES = frozenset({"bert", "distilbert", "xlm-roberta", "roberta", "camembert"})

#: The tasks the CTranslate2 backend serves: those whose engine reads the bare encoder's hidden states (embedding)
#: or a sequence-classification head's logits on them (classification, rerank, zero-shot classification: NLI over
#: (text, hypothesis) pairs).
CTRANSLATE2_TASKS = frozenset(
    {TaskName.EMBEDDING, TaskName.CLASSIFICATION, TaskName.RERANK, TaskName.ZERO_SHOT_CLASSIFICATION}
)

#: The precisions each non-torch backend runs, and CTranslate2's compute type for each. bf16 needs a CPU that
#: CTranslate2 accepts for it (it refuses AVX-512 BF16 alone), so it is left to torch.
CTRANSLATE2_COMPUTE_TYPES = {"fp32": "float32", "int8": "int8_float32", "fp16": "float16"}

#: ``auto``: (task, device type, precision) → backend, each entry from a benchmark run (``python -m bench --tasks
#: peers``, `bench.peers`; docs/benchmarks.md, "Peers") on a 2-core AMD EPYC; torch wherever it says nothing.
#:
#: * embedding, CPU, fp32 → CTranslate2: inferq's engine on it 183.9 items/s against 147.6 on torch (1.25×) on
#:   the real all-MiniLM-L6-v2, vectors at the exact tier (the quiet run of 2026-12-06), and ahead again in the
#:   run measured under load, bench/results/20261207-000139-peers-quick.json (33.7 against 22.6 items/s).
#: * embedding, CPU, int8 → CTranslate2: torch's dynamic int8 misses the reduced tier on all-MiniLM-L6-v2 (cosine
#:   min 0.836), CTranslate2's int8 keeps it (0.991 / 0.997) and ran faster (357.0 against 318.4 items/s).
#:
#: * classification and rerank, CPU, fp32 → CTranslate2 (every layer but the last; the last in torch for the first
#:   token, `worker.backends.first_token`, as on torch): the whole system on it 18.7 items/s against 12.6 on torch
#:   (DistilBERT-base classifier) and 1.00 against 0.85 queries/s (MiniLM-L6-sized cross-encoder), both exact, in
#:   bench/results/20261207-015844-peers-quick.json (``--tasks peers --quick --rounds 2``, measured under load:
#:   load average 5 on 2 cores); in-process at one thread, CPU time per item 1.25× (classification) and 1.12×
#:   (rerank) below torch's, both with the one-token last layer (docs/benchmarks.md, "Peers").
#:
#: Not in it: bf16 (CTranslate2 refuses AVX-512 BF16 alone); classification at int8, where torch's dynamic int8
#: ran 134.9 items/s against CTranslate2's 110.8 on the DistilBERT-base classifier (quiet run, before the one-token
#: last layer; level in the whole system since: 40.0 against 41.3 under load); zero-shot classification (not in
#: the peers run).
AUTO_TABLE: dict[tuple[TaskName, str, str], str] = {
    (TaskName.EMBEDDING, "cpu", "fp32"): "ctranslate2",
    (TaskName.EMBEDDING, "cpu", "int8"): "ctranslate2",
    (TaskName.CLASSIFICATION, "cpu", "fp32"): "ctranslate2",
    (TaskName.RERANK, "cpu", "fp32"): "ctranslate2",
}

#: The model types ``auto`` sends to a table's non-torch backend: those the benchmark measured (all-MiniLM-L6-v2 is
#: BERT). Not the RoBERTa family on purpose: transformers numbers a RoBERTa token's position by counting the
#: non-pad tokens before it, CTranslate2 by its index, so a text holding the pad token's own text (``<pad>``)
#: comes out different (tests/worker/engines/test_embedding.py's special-token text: up to 0.65 on a tiny model);
#: ``--backend ctranslate2`` still runs them where asked.
AUTO_MODEL_TYPES = frozenset({"bert", "distilbert"})


def resolve_backend(requested: str, task: TaskName, device_type: str, precision: str, model_type: str | None) -> str:
    """The backend that runs this model: ``requested`` where it can, torch otherwise (one log line saying why);
    ``auto`` as `AUTO_TABLE` says, torch where it says nothing."""
    if requested == "auto":
        requested = auto_backend(task, device_type, precision, model_type)
    if requested == "torch":
        return "torch"
    if requested != "ctranslate2":
        raise ValueError(f"unknown backend {requested!r} (known: {', '.join(BACKENDS)})")
    reason = ctranslate2_refusal(task, device_type, precision, model_type)
    if reason is not None:
        log.info("backend ctranslate2 cannot run this model (%s): falling back to torch", reason)
        return "torch"
    return "ctranslate2"


def auto_backend(task: TaskName, device_type: str, precision: str, model_type: str | None) -> str:
    """What ``auto`` asks for: `AUTO_TABLE`'s entry for a model type of `AUTO_MODEL_TYPES`, torch otherwise."""
    if model_type not in AUTO_MODEL_TYPES:
        return "torch"
    return AUTO_TABLE.get((task, device_type, precision), "torch")


def ctranslate2_refusal(task: TaskName, device_type: str, precision: str, model_type: str | None) -> str | None:
    """Why CTranslate2 cannot run this model, or ``None`` where it can."""
    if task not in CTRANSLATE2_TASKS:
        return f"it serves {', '.join(sorted(t.value for t in CTRANSLATE2_TASKS))}, not {task.value}"
    if model_type not in CTRANSLATE2_MODEL_TYPES:
        return f"architecture {model_type!r} is not one it converts ({', '.join(sorted(CTRANSLATE2_MODEL_TYPES))})"
    if precision not in CTRANSLATE2_COMPUTE_TYPES:
        return f"precision {precision} is not one it runs here ({', '.join(CTRANSLATE2_COMPUTE_TYPES)})"
    if precision == "fp16" and device_type != "cuda":
        return "fp16 runs on CUDA only"
    try:
        import ctranslate2  # noqa: F401
    except ImportError:
        return "the ctranslate2 package is not installed (pip install ctranslate2)"
    return None


def model_type_of(source: str, revision: str | None = None) -> str | None:
    """The checkpoint's ``model_type`` (``bert``, ``distilbert`` …), read from its config without loading weights."""
    from transformers import AutoConfig

    try:
        config: Any = AutoConfig.from_pretrained(source, revision=revision, trust_remote_code=False)
    except (OSError, ValueError):
        return None
    return getattr(config, "model_type", None)
