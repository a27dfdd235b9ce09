"""Reranking with a cross-encoder, equal to sentence-transformers' ``CrossEncoder.rank`` (6.x): every
(query, document) pair is scored by a one-label sequence-classification model and the documents are ranked best
first.

* A line is ``{"query": str, "documents": [str, ...]}``, or ``{"text": str, "text_pair": str}`` (one pair: the
  query ``text`` and the single document ``text_pair``, index 0).
* Every pair is one feature (`Features.item_of` maps it to its line): a line with 200 documents is 200 sequences,
  batched under the token budget with every other pair of the chunk.
* Pairs are tokenized as CrossEncoder's ``Transformer`` module tokenizes them: ``tokenizer(query, document,
  truncation="longest_first")`` up to the model's maximum length, the query first, nothing stripped.
* The score is the model's one logit through an activation: ``activation="default"`` takes the one CrossEncoder
  takes for the model (`resolve_activation`): the ``activation_fn`` of a CrossEncoder save's
  ``config_sentence_transformers.json``, else ``config.json``'s ``sentence_transformers.activation_fn`` (saves of
  sentence-transformers 4 and 5), else the older ``sbert_ce_default_activation_function``, else ``Sigmoid``. As
  CrossEncoder does without ``trust_remote_code`` (the model cache never trusts remote code), only ``torch.*``
  classes are taken from a config; any other falls back to the next rule's default.
* A saved CrossEncoder's default prompt (``default_prompt_name`` in ``config_sentence_transformers.json``) is put
  before every query, as ``CrossEncoder.predict`` puts it; its ``max_seq_length`` (``sentence_bert_config.json``)
  is the maximum length.
* Ranking: by score, best first; equal scores keep the documents' order (CrossEncoder's stable ``sorted``).

Refused at load (``ValueError``, which the model cache reports as ``ModelLoadError``): a model with more than one
label (``CrossEncoder.rank`` refuses it too), and a sentence-transformers save whose modules are more than the one
``Transformer`` module (a ``Dense`` score head, a ``LogitScore`` over a causal LM …) that this engine would not
run.

Differences from CrossEncoder, on purpose: a tokenizer without a maximum length is truncated to the model's
position table as `worker.loaded.effective_max_length` computes it (CrossEncoder takes
``max_position_embeddings`` itself, which overflows RoBERTa's table); ``processing_kwargs`` and ``do_lower_case``
in ``sentence_bert_config.json`` are not read.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import numpy as np
import torch

from inferq.task_specs import RerankParams, TaskName
from worker.engines.base import Engine, Outcome
from worker.engines.batching import Features, RunOutputs
from worker.loaded import LoadedModel

log = logging.getLogger(__name__)

#: What CrossEncoder applies to a one-label model whose configs name no (trusted) activation.
DEFAULT_ACTIVATION = "torch.nn.modules.activation.Sigmoid"
_NAMED = {"sigmoid": DEFAULT_ACTIVATION, "none": "torch.nn.modules.linear.Identity"}


class RerankEngine(Engine[RerankParams]):
    task: ClassVar[TaskName] = TaskName.RERANK
    auto_model: ClassVar[str] = "AutoModelForSequenceClassification"
    reads_first_token: ClassVar[bool] = True

    def __init__(self, loaded: LoadedModel) -> None:
        super().__init__(loaded)
        num_labels = int(self.config.num_labels)
        if num_labels != 1:
            labels = ", ".join(str(v) for v in self.config.id2label.values())
            raise ValueError(
                f"a reranker scores each pair with one logit; this model has {num_labels} labels ({labels}), and "
                "CrossEncoder.rank refuses such models too (use classification for text pairs)"
            )
        st_config, module_config = _cross_encoder_config(loaded)
        #: The activation's dotted path that ``activation="default"`` applies (what CrossEncoder applies).
        self.default_activation = resolve_activation(st_config, self.config)
        prompts = st_config.get("prompts") or {}
        default_prompt = st_config.get("default_prompt_name")
        #: Put before every query (a saved CrossEncoder's default prompt), as ``CrossEncoder.predict`` does.
        self.prompt: str = str(prompts.get(default_prompt) or "") if default_prompt is not None else ""
        #: Tokens per pair: a CrossEncoder save's ``max_seq_length`` (which CrossEncoder gives the tokenizer as its
        #: ``model_max_length``), else the model's maximum.
        saved_length = module_config.get("max_seq_length")
        self.max_length = int(saved_length) if isinstance(saved_length, int) else loaded.max_length
        self._activations: dict[str, Callable[[Any], Any]] = {}
        self._activation(self.default_activation)  # a class that does not import fails the load, not a job

    def _activation(self, path: str) -> Callable[[Any], Any]:
        fn = self._activations.get(path)
        if fn is None:
            module, _, name = path.rpartition(".")
            try:
                fn = getattr(importlib.import_module(module), name)()
            except (ImportError, AttributeError, TypeError) as exc:
                raise ValueError(f"the activation {path!r} named in the model's config cannot be made: {exc}") from exc
            self._activations[path] = fn
        return fn

    def preprocess(self, inputs: Sequence[dict[str, Any]], params: RerankParams) -> Features:
        queries: list[str] = []
        documents: list[str] = []
        item_of: list[int] = []
        for i, line in enumerate(inputs):
            query, docs = pairs_of(line)
            queries.extend([self.prompt + query] * len(docs))
            documents.extend(docs)
            item_of.extend([i] * len(docs))
        if not queries:
            return Features(input_ids=[], item_of=np.zeros(0, dtype=np.int64))
        enc = self.tokenize(queries, documents, truncation="longest_first", max_length=self.max_length)
        return Features(
            input_ids=enc["input_ids"],
            token_type_ids=enc.get("token_type_ids"),
            item_of=np.asarray(item_of, dtype=np.int64),
        )

    def scores(self, logits: np.ndarray, activation: str) -> np.ndarray:
        """``[n, 1]`` logits → ``[n]`` scores, through the activation CrossEncoder would apply (on a
        ``[n, 1]`` float32 tensor, then squeezed, as ``CrossEncoder.predict`` does)."""
        path = self.default_activation if activation == "default" else _NAMED[activation]
        with torch.inference_mode():
            out = self._activation(path)(torch.from_numpy(np.ascontiguousarray(logits, dtype=np.float32)))
        return np.asarray(out.float().numpy(), dtype=np.float32).reshape(len(logits))

    def postprocess(
        self,
        inputs: Sequence[dict[str, Any]],
        features: Features,
        outputs: RunOutputs,
        params: RerankParams,
    ) -> list[Outcome]:
        logits = outputs.stacked("logits")
        if logits.ndim != 2 or logits.shape[1] != 1:  # nothing ran (every feature failed, or no feature at all)
            logits = np.zeros((len(features), 1), dtype=np.float32)
        scores = self.scores(logits, params.activation)
        # Features are laid out line by line, each line's documents in order.
        ends = np.cumsum(np.bincount(features.item_of, minlength=len(inputs)))
        outcomes: list[Outcome] = []
        start = 0
        for i, line in enumerate(inputs):
            end = int(ends[i])
            own = scores[start:end]
            # Best first; equal scores keep the documents' order (CrossEncoder's stable sort).
            order = np.argsort(-own, kind="stable")[: params.top_k]
            ranked: list[dict[str, Any]] = [
                {"index": int(j), "score": s} for j, s in zip(order.tolist(), own[order].tolist(), strict=True)
            ]
            if params.return_documents:
                _, docs = pairs_of(line)
                for entry in ranked:
                    entry["document"] = docs[entry["index"]]
            outcomes.append(Outcome(result=ranked, score=ranked[0]["score"] if ranked else None))
            start = end
        return outcomes


def pairs_of(line: dict[str, Any]) -> tuple[str, list[str]]:
    """A line's query and documents: ``query``/``documents``, or ``text``/``text_pair`` as one document."""
    if "documents" in line:
        return str(line["query"]), [str(d) for d in line["documents"]]
    return str(line["text"]), [str(line["text_pair"])]


def resolve_activation(st_config: dict[str, Any], config: Any) -> str:
    """The dotted path of the activation CrossEncoder (6.x, ``trust_remote_code=False``) applies to the model:
    see the module docstring. ``st_config`` is a CrossEncoder save's ``config_sentence_transformers.json``."""
    saved = st_config.get("activation_fn")
    if isinstance(saved, str) and _trusted(saved):
        return saved
    st = getattr(config, "sentence_transformers", None)
    if isinstance(st, dict) and "activation_fn" in st:
        path = st["activation_fn"]
    else:
        path = getattr(config, "sbert_ce_default_activation_function", None)
    if isinstance(path, str) and _trusted(path):
        return path
    if path is not None:
        log.warning("activation %r in the model's config is not trusted (not torch.*): using Sigmoid", path)
    return DEFAULT_ACTIVATION


def _trusted(path: str) -> bool:
    return path.startswith("torch.")


def _cross_encoder_config(loaded: LoadedModel) -> tuple[dict[str, Any], dict[str, Any]]:
    """A sentence-transformers CrossEncoder save's (one with ``modules.json``) ``config_sentence_transformers.json``
    and its ``Transformer`` module's ``sentence_bert_config.json``, as CrossEncoder reads them; ``({}, {})`` for any
    other checkpoint (a plain transformers one, or a save of another model type, whose settings CrossEncoder
    ignores). Raises ``ValueError`` for a CrossEncoder save with modules this engine does not run."""
    modules = loaded.read_json("modules.json")
    if modules is None:
        return {}, {}
    st_config = _object(loaded, "config_sentence_transformers.json")
    if st_config.get("model_type", "SentenceTransformer") != "CrossEncoder":
        return {}, {}
    types = (
        [str(m.get("type", "")) if isinstance(m, dict) else "" for m in modules] if isinstance(modules, list) else []
    )
    if len(types) != 1 or not types[0].endswith(".Transformer") or modules[0].get("path", "") != "":
        raise ValueError(
            f"this CrossEncoder save's modules ({', '.join(types) or 'none'}) are not one sequence-classification "
            "Transformer module at the checkpoint's root, the only kind the rerank engine runs"
        )
    return st_config, _object(loaded, "sentence_bert_config.json")


def _object(loaded: LoadedModel, name: str) -> dict[str, Any]:
    content = loaded.read_json(name)
    if content is None:
        return {}
    if not isinstance(content, dict):
        raise ValueError(f"{name} is not a JSON object")
    return content
