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

from inferq.store.chunks import result_json
from inferq.task_specs import RerankParams, TaskName
from worker.engines.base import Engine, Outcome
from worker.engines.batching import Features, RunOutputs
from worker.engines.columnar import finite, format_items
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

    #: Serialise a chunk's results in one pass (`worker.engines.columnar`); ``False``: each item's result as dicts,
    #: serialised by the write (the reference the columnar text is tested against).
    columnar: ClassVar[bool] = True

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
        # Features are laid out line by line, each line's documents in order: one sort of the whole chunk by line,
        # then score, best first; equal scores keep the documents' order (lexsort is stable, as CrossEncoder's sort).
        item_of = features.item_of
        counts = np.bincount(item_of, minlength=len(inputs))
        starts = np.cumsum(counts) - counts
        order = np.lexsort((-scores, item_of))
        rank = np.arange(len(order)) - starts[item_of]  # item_of is sorted: the line of ``order``'s n-th entry
        kept = order if params.top_k is None else order[rank < params.top_k]
        kept_counts = counts if params.top_k is None else np.minimum(counts, params.top_k)
        documents = kept - starts[item_of[kept]]  # each kept pair's index among its line's documents
        kept_scores = scores[kept].astype(np.float64)  # Python floats: their repr is JSON's
        firsts = iter(kept_scores[(np.cumsum(kept_counts) - kept_counts)[kept_counts > 0]].tolist())
        best: list[float | None] = [next(firsts) if c else None for c in kept_counts.tolist()]
        docs_of = [pairs_of(line)[1] for line in inputs] if params.return_documents else None
        if self.columnar and finite(kept_scores):
            return self._texts(kept_counts, documents, kept_scores, docs_of, best)
        outcomes: list[Outcome] = []
        index_list: list[int] = documents.tolist()
        score_list: list[float] = kept_scores.tolist()
        at = 0
        for i, count in enumerate(kept_counts.tolist()):
            ranked: list[dict[str, Any]] = [
                {"index": j, "score": s}
                for j, s in zip(index_list[at : at + count], score_list[at : at + count], strict=True)
            ]
            if docs_of is not None:
                for entry in ranked:
                    entry["document"] = docs_of[i][entry["index"]]
            outcomes.append(Outcome(result=ranked, score=best[i]))
            at += count
        return outcomes

    @staticmethod
    def _texts(
        counts: np.ndarray,
        documents: np.ndarray,
        scores: np.ndarray,
        docs_of: list[list[str]] | None,
        best: list[float | None],
    ) -> list[Outcome]:
        """Every line's ranking serialised in one pass: ``counts`` entries a line, ``documents`` and ``scores`` the
        entries' in order (``docs_of``: each line's documents, where the result repeats them)."""
        fields = 2 if docs_of is None else 3
        args = np.empty((len(documents), fields), dtype=object)
        args[:, 0] = documents.tolist()
        args[:, 1] = scores.tolist()
        entry = '{"index": %d, "score": %r}'
        if docs_of is not None:
            lines = np.repeat(np.arange(len(counts)), counts).tolist()
            args[:, 2] = [result_json(docs_of[i][j]) for i, j in zip(lines, args[:, 0].tolist(), strict=True)]
            entry = '{"index": %d, "score": %r, "document": %s}'
        texts = format_items(entry, counts.tolist(), args.ravel().tolist())
        return [Outcome(score=s, result_text=t) for s, t in zip(best, texts, strict=True)]


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
