"""Masked language modelling, equal to the transformers fill-mask pipeline called with
``tokenizer_kwargs={"truncation": True}``: top-k fillers for every mask token of a text.

Differences from the pipeline, on purpose:

* the result always has one entry per mask (``[[...]]`` for a single mask; the pipeline flattens that case);
* the model-independent placeholder ``[[MASK]]`` (`MASK_PLACEHOLDER`) is replaced by the model's mask token;
* texts are truncated to the model's maximum length (the pipeline does so only when asked with
  ``tokenizer_kwargs={"truncation": True}``; without it, a text longer than the model's position table makes the
  forward pass fail). Masks past the cut get no entry; a text left with no mask at all fails with `InputError`,
  as one that never had a mask does;
* scores are computed in float32 even when the model runs at fp16/bf16 (the pipeline takes the softmax in the
  model's dtype);
* ``top_k`` larger than the number of candidates returns every candidate (the pipeline raises);
* for the architectures in `_HEAD_SPLITS` the masked-LM head runs only on the hidden states at the mask positions,
  not on every token. Same numbers at fp32/fp16/bf16 (row by row, up to float rounding); at int8 the dynamic
  quantization of the head's inputs takes its scale from the mask rows of the micro-batch only, not from every
  token of it (padding included), so int8 scores move slightly (int8 never matched the pipeline exactly).

The results are serialised in one pass (`FillMaskEngine._result_texts`, `worker.engines.columnar`); the sequences
are still decoded one by one by the tokenizer, most of what postprocess costs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import numpy as np
import torch
import transformers

from inferq.errors import InputError, InvalidParameter, ModelLoadError
from inferq.store.chunks import result_json
from inferq.task_specs import MASK_PLACEHOLDER, FillMaskParams, TaskName
from worker.engines.base import Engine, Outcome
from worker.engines.batching import Features, RunOutputs
from worker.engines.columnar import finite, format_items, json_strings

log = logging.getLogger(__name__)


#: Masked-LM classes whose ``forward`` is ``logits = head(encoder(...)[0])`` and nothing else (read in the
#: installed transformers' source): class name → (the encoder attribute, the head's modules in the order
#: ``forward`` applies them). Only these run the head at the mask positions; any other class, subclasses
#: included (their ``forward`` may differ), runs the whole model. The head's modules are the model's own, looked
#: up after loading, so they are the converted ones at int8 (dynamic quantization swaps the ``nn.Linear``s).
_HEAD_SPLITS: dict[str, tuple[str, tuple[str, ...]]] = {
    "BertForMaskedLM": ("bert", ("cls",)),
    "RobertaForMaskedLM": ("roberta", ("lm_head",)),
    "XLMRobertaForMaskedLM": ("roberta", ("lm_head",)),
    "CamembertForMaskedLM": ("roberta", ("lm_head",)),
    "DistilBertForMaskedLM": ("distilbert", ("vocab_transform", "activation", "vocab_layer_norm", "vocab_projector")),
}


class FillMaskEngine(Engine[FillMaskParams]):
    """Fill-mask engine.

    ``forward`` runs the encoder on the batch (``[B, T, H]`` hidden states), gathers the hidden states at the
    ``M`` mask positions of the batch (``[M, H]``) and runs the masked-LM head on those only (``[M, V]`` logits):
    the head (a vocabulary-wide projection per token) is a large part of the work, and only the masks need it.
    An architecture without a known encoder/head split (`_HEAD_SPLITS`; `head_at_masks` says which way the engine
    went) runs the whole model and picks the ``[M, V]`` rows of its ``[B, T, V]`` logits. Either way nothing
    of size ``T × V`` reaches the CPU: on the device the engine takes the softmax over the vocabulary,
    restricts to the targets when there are some, and keeps the top ``k`` there. The ``M`` masks are then laid out
    per sequence as ``[B, max_masks, k]`` arrays (scores and token ids), padded with score 0 and token id -1 where
    a sequence has fewer masks than the batch's most. ``postprocess`` reads each feature's rows (`RunOutputs.rows`)
    and keeps its first ``n_masks`` entries; only ``B × max_masks × k`` numbers cross to the CPU.
    """

    task: ClassVar[TaskName] = TaskName.FILL_MASK
    auto_model: ClassVar[str] = "AutoModelForMaskedLM"
    #: Serialise a chunk's results in one pass (`_result_texts`); ``False``: each item's result as dicts,
    #: serialised by the write (the reference the columnar text is tested against).
    columnar: ClassVar[bool] = True

    def __init__(self, loaded: Any) -> None:
        super().__init__(loaded)
        mask_id = self.tokenizer.mask_token_id
        self.mask_id: int | None = int(mask_id) if mask_id is not None else None
        self.mask_token: str | None = self.tokenizer.mask_token
        #: The pipeline filters the tokenizer's pad id out of sequences (nothing when the tokenizer has none).
        raw_pad = self.tokenizer.pad_token_id
        self._filter_pad: int | None = int(raw_pad) if raw_pad is not None else None
        self._targets: dict[tuple[str, ...], np.ndarray] = {}
        self._target_tensors: dict[tuple[str, ...], Any] = {}
        self._token_strs: dict[int, str] = {}
        split = _head_split(self.model)
        #: Whether the head runs on the mask positions only (else the whole model runs, head on every token).
        self.head_at_masks = split is not None
        #: ``batch → [B, T, H]`` hidden states, and ``[M, H] → [M, V]`` logits; or, without a split, ``batch →
        #: [B, T, V]`` logits and the identity. Chosen once here: the hot path takes the same steps either way.
        self._encode: Callable[[dict[str, Any]], Any]
        self._head: Callable[[Any], Any]
        if split is None:
            log.info("fill-mask: %s has no known encoder/head split: the head runs on every token", _class(self.model))
            self._encode, self._head = _full_logits(self.model), _identity
        else:
            self._encode, self._head = split

    # -- targets ---------------------------------------------------------------------------------------

    def target_ids(self, targets: Sequence[str]) -> np.ndarray:
        """The candidate ids for ``targets``, as the pipeline's ``get_target_ids`` finds them: a target in the
        vocabulary is its id; any other is tokenized (no special tokens, truncated to one token) and its first
        token is used; one that tokenizes to nothing is ignored. Duplicates are dropped (in the pipeline's
        ``list(set(...))`` order). Raises `InvalidParameter` when nothing is left."""
        key = tuple(targets)
        cached = self._targets.get(key)
        if cached is not None:
            return cached
        try:
            vocab = self.tokenizer.get_vocab()
        except Exception:
            vocab = {}
        ids: list[int] = []
        for target in targets:
            id_ = vocab.get(target)
            if id_ is None:
                encoded = self.tokenizer(
                    target,
                    add_special_tokens=False,
                    return_attention_mask=False,
                    return_token_type_ids=False,
                    max_length=1,
                    truncation=True,
                )["input_ids"]
                if len(encoded) == 0:
                    log.warning("target %r is not in the vocabulary and tokenizes to nothing: ignored", target)
                    continue
                id_ = encoded[0]
                log.warning(
                    "target %r is not in the vocabulary: using its first token %r",
                    target,
                    self.tokenizer.convert_ids_to_tokens(id_),
                )
            ids.append(int(id_))
        unique = list(set(ids))
        if not unique:
            raise InvalidParameter("parameter targets: none of the targets is a token of this model", field="targets")
        result = np.array(unique, dtype=np.int64)
        self._targets[key] = result
        return result

    def _target_tensor(self, targets: Sequence[str]) -> Any:
        key = tuple(targets)
        tensor = self._target_tensors.get(key)
        if tensor is None:
            tensor = torch.from_numpy(self.target_ids(targets)).to(self.device)
            self._target_tensors[key] = tensor
        return tensor

    def _k(self, params: FillMaskParams) -> int:
        """Candidates kept per mask: ``top_k``, capped at the number of targets (as the pipeline does) and at the
        vocabulary size."""
        top_k = params.top_k
        targets = params.targets
        if targets is not None:
            top_k = min(top_k, len(self.target_ids(targets)))
        return max(1, min(top_k, int(self.config.vocab_size)))

    # -- the three steps -------------------------------------------------------------------------------

    def preprocess(self, inputs: Sequence[dict[str, Any]], params: FillMaskParams) -> Features:
        """Tokenize (truncated); only texts with a mask token after truncation become features."""
        empty = Features(input_ids=[], item_of=np.zeros(0, dtype=np.int64), extra={"mask_positions": []})
        if not inputs or self.mask_id is None or self.mask_token is None:
            return empty
        targets = params.targets
        if targets is not None:
            try:
                self.target_ids(targets)
            except InvalidParameter:
                return empty  # every item fails with it in postprocess
        texts = [str(i["text"]).replace(MASK_PLACEHOLDER, self.mask_token) for i in inputs]
        enc = self.tokenize(texts)
        all_ids: list[list[int]] = enc["input_ids"]
        all_types: list[list[int]] | None = enc.get("token_type_ids")
        ids: list[list[int]] = []
        types: list[list[int]] = []
        items: list[int] = []
        positions: list[list[int]] = []
        mask_id = self.mask_id
        for i, seq in enumerate(all_ids):
            where = [t for t, tok in enumerate(seq) if tok == mask_id]
            if not where:
                continue
            ids.append(seq)
            if all_types is not None:
                types.append(all_types[i])
            items.append(i)
            positions.append(where)
        return Features(
            input_ids=ids,
            token_type_ids=types if all_types is not None else None,
            item_of=np.array(items, dtype=np.int64),
            extra={"mask_positions": positions},
        )

    def forward(self, batch: dict[str, Any], params: FillMaskParams) -> dict[str, Any]:
        input_ids = batch["input_ids"]
        states = self._encode(batch)  # [B, T, H] (or [B, T, V] logits without a split), stays on the device
        is_mask = (input_ids == self.mask_id) & batch["attention_mask"].bool()
        rows, cols = is_mask.nonzero(as_tuple=True)  # row-major: each row's masks in position order
        logits = self._head(states[rows, cols])  # [M, V]
        probs = logits.float().softmax(dim=-1)  # [M, V]
        targets = params.targets
        target_ids = self._target_tensor(targets) if targets is not None else None
        if target_ids is not None:
            probs = probs[:, target_ids]
        k = min(self._k(params), probs.shape[-1])
        values, indices = probs.topk(k, dim=-1)  # [M, k], best first
        if target_ids is not None:
            indices = target_ids[indices]
        counts = is_mask.sum(dim=1)  # [B]
        n_rows = input_ids.shape[0]
        width = int(counts.max().item()) if rows.numel() else 0
        first = counts.cumsum(0) - counts  # index in [M] of each row's first mask
        slot = torch.arange(rows.numel(), device=rows.device) - first[rows]
        scores = torch.zeros((n_rows, width, k), dtype=torch.float32, device=probs.device)
        token_ids = torch.full((n_rows, width, k), -1, dtype=torch.int64, device=probs.device)
        scores[rows, slot] = values
        token_ids[rows, slot] = indices.to(torch.int64)
        return {"scores": scores, "token_ids": token_ids}

    def postprocess(
        self,
        inputs: Sequence[dict[str, Any]],
        features: Features,
        outputs: RunOutputs,
        params: FillMaskParams,
    ) -> list[Outcome]:
        if self.mask_id is None:
            error = ModelLoadError(f"model {self.loaded.name!r}: its tokenizer defines no mask token")
            return [Outcome.failure(error) for _ in inputs]
        targets = params.targets
        if targets is not None:
            try:
                self.target_ids(targets)
            except InvalidParameter as exc:
                return [Outcome.failure(exc) for _ in inputs]
        no_mask = (
            f"no mask token in the text: write {MASK_PLACEHOLDER} or this model's mask token {self.mask_token!r}"
            f" (a mask past the model's maximum length of {self.loaded.max_length} tokens is cut off)"
        )
        outcomes = [Outcome.failure(InputError(no_mask)) for _ in inputs]
        positions: list[list[int]] = features.extra["mask_positions"]
        #: (item, its candidates' scores and token ids per mask, their sequences decoded), as they ran.
        filled: list[tuple[int, list[list[float]], list[list[int]], list[str]]] = []
        finite_scores = True
        for rows, out in outputs.batches:
            # One conversion a micro-batch ([B, max_masks, k] arrays); a feature failed in forward is in none
            # (`run` gives its item the error).
            scores, tokens = out["scores"], out["token_ids"]
            finite_scores = finite_scores and finite(scores)
            score_lists: list[list[list[float]]] = scores.tolist()
            token_lists: list[list[list[int]]] = tokens.tolist()
            for j, f in enumerate(rows.tolist()):
                n_masks = len(positions[f])
                score_rows, token_rows = score_lists[j][:n_masks], token_lists[j][:n_masks]
                decoded = self._sequences(features.input_ids[f], positions[f], token_rows)
                filled.append((int(features.item_of[f]), score_rows, token_rows, decoded))
        texts: list[str] | list[None]
        if self.columnar and finite_scores and filled:
            texts = self._result_texts(
                [(score_rows, token_rows, decoded) for _, score_rows, token_rows, decoded in filled]
            )
        else:
            texts = [None] * len(filled)
        for (item, score_rows, token_rows, decoded), text in zip(filled, texts, strict=True):
            best = token_rows[0][0]
            if text is not None:
                outcomes[item] = Outcome(label=self._token_str(best), score=score_rows[0][0], result_text=text)
            else:
                outcomes[item] = Outcome(
                    result=self._result(score_rows, token_rows, decoded),
                    label=self._token_str(best),
                    score=score_rows[0][0],
                )
        return outcomes

    # -- helpers ---------------------------------------------------------------------------------------

    def _token_str(self, token: int) -> str:
        text = self._token_strs.get(token)
        if text is None:
            text = str(self.tokenizer.decode([token]))
            self._token_strs[token] = text
        return text

    def _sequences(self, ids: list[int], positions: list[int], token_rows: list[list[int]]) -> list[str]:
        """The text with each candidate at its mask, decoded: mask after mask, candidate after candidate."""
        pad = self._filter_pad
        sequences: list[list[int]] = []
        for pos, candidates in zip(positions, token_rows, strict=True):
            # The pipeline writes the candidate at the mask, then drops every pad id (the candidate's too).
            left = [t for t in ids[:pos] if t != pad]
            right = [t for t in ids[pos + 1 :] if t != pad]
            for p in candidates:
                sequences.append([*left, p, *right] if p != pad else [*left, *right])
        # One mask: special tokens are skipped; several: kept, so the other masks stay visible (as the pipeline).
        # What ``tokenizer.decode`` of the batch does, sequence by sequence, without its conversion of every id to a
        # Python object first (ids here are Python ints already): a third of fill-mask's postprocess.
        skip = len(positions) == 1
        decode_one = getattr(self.tokenizer, "_decode", None)
        if decode_one is not None:
            return [decode_one(sequence, skip_special_tokens=skip) for sequence in sequences]
        return list(self.tokenizer.decode(sequences, skip_special_tokens=skip))

    def _result(
        self, score_rows: list[list[float]], token_rows: list[list[int]], decoded: list[str]
    ) -> list[list[dict[str, Any]]]:
        """One item's result: per mask, its candidates as dicts (the per-item path)."""
        result: list[list[dict[str, Any]]] = []
        n = 0
        for score_row, token_row in zip(score_rows, token_rows, strict=True):
            row = []
            for s, p in zip(score_row, token_row, strict=True):
                row.append({"score": s, "token": p, "token_str": self._token_str(p), "sequence": decoded[n]})
                n += 1
            result.append(row)
        return result

    def _result_texts(self, filled: list[tuple[list[list[float]], list[list[int]], list[str]]]) -> list[str]:
        """Every item's result (per mask, ``[{"score", "token", "token_str", "sequence"}, …]``) as the write
        stores it (`inferq.store.chunks.result_json`), in one pass: one ``%`` format of the chunk. Every mask has
        the chunk's ``k`` candidates (`forward`'s top-k), so one mask's entry is one fixed format."""
        k = len(filled[0][1][0])
        quoted = json_strings(x for _, _, decoded in filled for x in decoded)
        token_strs = {
            p: result_json(self._token_str(p)) for _, token_rows, _ in filled for row in token_rows for p in row
        }
        args: list[Any] = []
        for score_rows, token_rows, decoded in filled:
            n = 0
            for score_row, token_row in zip(score_rows, token_rows, strict=True):
                for s, p in zip(score_row, token_row, strict=True):
                    args += (s, p, token_strs[p], quoted[decoded[n]])
                    n += 1
        one = '{"score": %r, "token": %d, "token_str": %s, "sequence": %s}'
        mask = "[" + ", ".join([one] * k) + "]"
        return format_items(mask, [len(score_rows) for score_rows, _, _ in filled], args)


# -- the encoder/head split ----------------------------------------------------------------------------


def _class(model: Any) -> str:
    return f"{type(model).__module__}.{type(model).__qualname__}"


def _identity(x: Any) -> Any:
    return x


def _full_logits(model: Any) -> Callable[[dict[str, Any]], Any]:
    def encode(batch: dict[str, Any]) -> Any:
        return model(**batch).logits

    return encode


def _head_split(model: Any) -> tuple[Callable[[dict[str, Any]], Any], Callable[[Any], Any]] | None:
    """``(encode, head)`` for a model of a class in `_HEAD_SPLITS` (that very class, from transformers), built from
    the model's own submodules; ``None`` for any other model, or when a submodule is missing (another
    transformers version)."""
    name = type(model).__name__
    layout = _HEAD_SPLITS.get(name)
    if layout is None or type(model) is not getattr(transformers, name, None):
        return None
    encoder_name, head_names = layout
    modules: list[Any] = [getattr(model, n, None) for n in (encoder_name, *head_names)]
    if not all(isinstance(m, torch.nn.Module) for m in modules):
        log.warning("fill-mask: %s lacks the submodules %s: the head runs on every token", name, layout)
        return None
    encoder, *head_modules = modules

    def encode(batch: dict[str, Any]) -> Any:
        return encoder(**batch, return_dict=True)[0]

    def head(hidden: Any) -> Any:
        for module in head_modules:
            hidden = module(hidden)
        return hidden

    return encode, head
