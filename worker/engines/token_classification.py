"""Token classification (NER), equal to the transformers token-classification pipeline: the same offsets, special
tokens mask, subword detection, aggregation strategies (none/simple/first/average/max) and ``ignore_labels``.

Texts longer than the model's maximum length are truncated, as the pipeline does by default (it tokenizes with
``truncation=True``; it reads the whole text only when given a ``stride``, which inferq does not offer): tokens past
the cut get no entity. One difference: for a tokenizer with no ``model_max_length``, inferq truncates to the
model's position table, where the pipeline would not truncate and its forward pass would fail.

Results are plain Python values (``float`` scores, ``int`` offsets), where the pipeline returns numpy scalars.

The softmax and the argmax run once over every token of the chunk; the entities are then made per text, as dicts
(pre-entities, words and groups are found token by token, with the tokenizer's strings), and serialised in one
pass (`result_texts`, `worker.engines.columnar`: each strategy's entities have fixed keys).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from inferq.task_specs import TaskName, TokenClassificationParams
from worker.engines.base import Engine, Outcome, softmax
from worker.engines.batching import Features, RunOutputs
from worker.engines.columnar import format_items, json_strings

log = logging.getLogger(__name__)

_WORD_STRATEGIES = ("first", "average", "max")


class TokenClassificationEngine(Engine[TokenClassificationParams]):
    """``forward`` returns each token's logits (``[B, T, num_labels]``, read back per feature with
    `RunOutputs.rows`); ``postprocess`` follows the pipeline's ``gather_pre_entities``, ``aggregate`` and
    ``group_entities`` step by step."""

    task: ClassVar[TaskName] = TaskName.TOKEN_CLASSIFICATION
    auto_model: ClassVar[str] = "AutoModelForTokenClassification"
    #: Serialise a chunk's results in one pass (`result_texts`); ``False``: each item's result as dicts,
    #: serialised by the write (the reference the columnar text is tested against).
    columnar: ClassVar[bool] = True

    def __init__(self, loaded: Any) -> None:
        super().__init__(loaded)
        backend = getattr(self.tokenizer, "_tokenizer", None)
        #: A word-aware tokenizer (WordPiece's ``##``): a token is a subword when its text and its span differ in
        #: length. Otherwise the pipeline's fallback heuristic (no space just before the token).
        self._word_aware = bool(backend and getattr(backend.model, "continuing_subword_prefix", None))
        self._is_fast = bool(getattr(self.tokenizer, "is_fast", False))
        unk = self.tokenizer.unk_token_id
        self._unk_id: int | None = int(unk) if unk is not None else None
        id2label = self.config.id2label
        self._labels = [str(id2label[i]) for i in range(int(self.config.num_labels))]
        self._warned_fallback = False

    # -- the three steps -------------------------------------------------------------------------------

    def preprocess(self, inputs: Sequence[dict[str, Any]], params: TokenClassificationParams) -> Features:
        if not inputs:
            return Features(input_ids=[], item_of=np.zeros(0, dtype=np.int64), extra={"special": [], "offsets": []})
        texts = [str(i["text"]) for i in inputs]
        enc = self.tokenize(texts, return_special_tokens_mask=True, return_offsets_mapping=self._is_fast)
        offsets = enc["offset_mapping"] if self._is_fast else [None] * len(texts)
        return Features(
            input_ids=enc["input_ids"],
            token_type_ids=enc.get("token_type_ids"),
            item_of=np.arange(len(inputs)),
            extra={"special": enc["special_tokens_mask"], "offsets": offsets},
        )

    def postprocess(
        self,
        inputs: Sequence[dict[str, Any]],
        features: Features,
        outputs: RunOutputs,
        params: TokenClassificationParams,
    ) -> list[Outcome]:
        strategy = params.aggregation_strategy
        ignore_labels: list[Any] = list(params.ignore_labels)
        if strategy in _WORD_STRATEGIES and not self._word_aware and not self._warned_fallback:
            log.warning("tokenizer of %r does not mark subwords: words are found by whitespace", self.loaded.name)
            self._warned_fallback = True
        all_logits = outputs.rows("logits")
        ran = [f for f in range(len(features)) if all_logits[f] is not None]
        # Every token of the chunk in one [tokens, labels] array: one softmax and one argmax for all, each row the
        # very numbers of its feature's own (a row's reductions run over its labels alone).
        lengths = [len(features.input_ids[f]) for f in ran]
        ends = np.cumsum(lengths).tolist()
        if ran:
            scores = softmax(np.concatenate([all_logits[f][:n] for f, n in zip(ran, lengths, strict=True)]))  # type: ignore[index]
            best = scores.argmax(axis=-1)
            best_scores = scores[np.arange(len(best)), best]
        key = "entity" if strategy == "none" else "entity_group"
        outcomes: list[Outcome] = [Outcome() for _ in range(len(features))]  # failed in forward: `run` sets the error
        results: list[list[dict[str, Any]]] = []
        for f, end, n in zip(ran, ends, lengths, strict=True):
            rows = slice(end - n, end)
            results.append(
                self._entities(
                    str(inputs[int(features.item_of[f])]["text"]),
                    features.input_ids[f],
                    scores[rows],
                    best[rows],
                    best_scores[rows],
                    features.extra["offsets"][f],
                    features.extra["special"][f],
                    strategy,
                    ignore_labels,
                )
            )
        texts = result_texts(results, key) if self.columnar else [None] * len(results)
        for f, entities, text in zip(ran, results, texts, strict=True):
            outcomes[f] = _outcome(entities, key, text)
        return outcomes

    # -- the pipeline's postprocessing -----------------------------------------------------------------

    def _entities(
        self,
        sentence: str,
        ids: list[int],
        scores: np.ndarray,
        best: np.ndarray,
        best_scores: np.ndarray,
        offsets: list[tuple[int, int]] | None,
        special: list[int],
        strategy: str,
        ignore_labels: list[Any],
    ) -> list[dict[str, Any]]:
        """One text's entities; ``scores`` its tokens' probabilities, ``best`` each token's most probable label
        and ``best_scores`` its probability (computed for the whole chunk at once)."""
        pre = self._pre_entities(sentence, ids, scores, offsets, special)
        if strategy in ("none", "simple"):
            entities = []
            for p in pre:
                idx = p["index"]
                entities.append(
                    {
                        "entity": self._labels[int(best[idx])],
                        "score": best_scores[idx],
                        "index": idx,
                        "word": p["word"],
                        "start": p["start"],
                        "end": p["end"],
                    }
                )
        else:
            entities = self._aggregate_words(pre, strategy)
        if strategy != "none":
            entities = self._group_entities(entities)
        kept = [
            e
            for e in entities
            if e.get("entity", None) not in ignore_labels and e.get("entity_group", None) not in ignore_labels
        ]
        return [_plain(e) for e in kept]

    def _pre_entities(
        self,
        sentence: str,
        ids: list[int],
        scores: np.ndarray,
        offsets: list[tuple[int, int]] | None,
        special: list[int],
    ) -> list[dict[str, Any]]:
        tokens: list[str] = self.tokenizer.convert_ids_to_tokens(ids)
        pre: list[dict[str, Any]] = []
        for idx, token_id in enumerate(ids):
            if special[idx]:
                continue
            word = tokens[idx]
            start: int | None
            end: int | None
            if offsets is not None:
                start, end = int(offsets[idx][0]), int(offsets[idx][1])
                word_ref = sentence[start:end]
                if self._word_aware:
                    is_subword = len(word) != len(word_ref)
                else:
                    is_subword = start > 0 and " " not in sentence[start - 1 : start + 1]
                if token_id == self._unk_id:
                    word = word_ref
                    is_subword = False
            else:
                start = end = None
                is_subword = False
            pre.append(
                {
                    "word": word,
                    "scores": scores[idx],
                    "start": start,
                    "end": end,
                    "index": idx,
                    "is_subword": is_subword,
                }
            )
        return pre

    def _aggregate_word(self, entities: list[dict[str, Any]], strategy: str) -> dict[str, Any]:
        word = self.tokenizer.convert_tokens_to_string([e["word"] for e in entities])
        if strategy == "first":
            scores = entities[0]["scores"]
            idx = int(scores.argmax())
            score = scores[idx]
        elif strategy == "max":
            max_entity = max(entities, key=lambda e: e["scores"].max())
            scores = max_entity["scores"]
            idx = int(scores.argmax())
            score = scores[idx]
        else:  # average
            average = np.nanmean(np.stack([e["scores"] for e in entities]), axis=0)
            idx = int(average.argmax())
            score = average[idx]
        return {
            "entity": self._labels[idx],
            "score": score,
            "word": word,
            "start": entities[0]["start"],
            "end": entities[-1]["end"],
        }

    def _aggregate_words(self, entities: list[dict[str, Any]], strategy: str) -> list[dict[str, Any]]:
        """Tokens of one word (a token and the subwords after it) become one entity."""
        words: list[dict[str, Any]] = []
        group: list[dict[str, Any]] | None = None
        for entity in entities:
            if group is None:
                group = [entity]
            elif entity["is_subword"]:
                group.append(entity)
            else:
                words.append(self._aggregate_word(group, strategy))
                group = [entity]
        if group is not None:
            words.append(self._aggregate_word(group, strategy))
        return words

    def _group_sub_entities(self, entities: list[dict[str, Any]]) -> dict[str, Any]:
        entity = entities[0]["entity"].split("-", 1)[-1]
        return {
            "entity_group": entity,
            "score": mean_score([e["score"] for e in entities]),
            "word": self.tokenizer.convert_tokens_to_string([e["word"] for e in entities]),
            "start": entities[0]["start"],
            "end": entities[-1]["end"],
        }

    def _group_entities(self, entities: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Adjacent entities of one tag merge, unless the next begins (``B-``) an entity of its own."""
        groups: list[dict[str, Any]] = []
        current: list[dict[str, Any]] = []
        for entity in entities:
            if not current:
                current.append(entity)
                continue
            bi, tag = _tag(entity["entity"])
            _, last_tag = _tag(current[-1]["entity"])
            if tag == last_tag and bi != "B":
                current.append(entity)
            else:
                groups.append(self._group_sub_entities(current))
                current = [entity]
        if current:
            groups.append(self._group_sub_entities(current))
        return groups


def _outcome(entities: list[dict[str, Any]], key: str, text: str | None) -> Outcome:
    """One text's outcome: its entities (as ``text``, their JSON, where serialised in one pass), the best one's
    label and score (the first of equal scores), their count."""
    result = entities if text is None else None
    if not entities:
        return Outcome(result=result, result_text=text, entity_count=0)
    best = max(entities, key=lambda e: e["score"])
    return Outcome(
        result=result, result_text=text, label=str(best[key]), score=best["score"], entity_count=len(entities)
    )


#: One entity's JSON, as `inferq.store.chunks.result_json` writes the dicts: per strategy its keys, in order.
_ENTITY_FORMATS = {
    "entity": '{"entity": %s, "score": %r, "index": %d, "word": %s, "start": %s, "end": %s}',
    "entity_group": '{"entity_group": %s, "score": %r, "word": %s, "start": %s, "end": %s}',
}


def result_texts(results: Sequence[list[dict[str, Any]]], key: str) -> list[str] | list[None]:
    """Every text's entities as the write stores them (`inferq.store.chunks.result_json`), in one pass: one ``%``
    format of the chunk. The entities themselves are still made per text, as dicts (words, subwords and groups are
    found token by token); only their serialisation is one pass. ``None`` for each where a score is not finite."""
    entities = [e for result in results for e in result]
    if not results or not all(math.isfinite(e["score"]) for e in entities):
        return [None] * len(results)
    quoted = json_strings([*(e[key] for e in entities), *(e["word"] for e in entities)])
    args: list[Any] = []
    for e in entities:
        start, end = e["start"], e["end"]
        span = ("null" if start is None else start, "null" if end is None else end)  # str(int) is its JSON
        if key == "entity":
            args += (quoted[e["entity"]], e["score"], e["index"], quoted[e["word"]], *span)
        else:
            args += (quoted[e["entity_group"]], e["score"], quoted[e["word"]], *span)
    return format_items(_ENTITY_FORMATS[key], [len(r) for r in results], args)


def mean_score(scores: list[Any]) -> Any:
    """The pipeline's ``np.mean(np.nanmean(scores))`` of a group's token scores, bit for bit, without numpy's
    function machinery (~30 µs a group, most of the postprocess) where no score is NaN: one score is itself; more
    are their float32 sum (numpy's own reduction) divided as ``nanmean`` divides it (by an ``intp`` count, in
    float64, cast back to the scores' type)."""
    if len(scores) == 1:
        only = scores[0]
        if only == only:  # not NaN
            return only
    else:
        values = np.array(scores)
        if not np.isnan(values).any():
            return values.dtype.type(np.add.reduce(values) / np.intp(len(values)))
    return np.mean(np.nanmean(scores))


def _tag(name: str) -> tuple[str, str]:
    """``B-PER`` → (``B``, ``PER``); a label without a B-/I- prefix continues (``I``)."""
    if name.startswith("B-"):
        return "B", name[2:]
    if name.startswith("I-"):
        return "I", name[2:]
    return "I", name


def _plain(entity: dict[str, Any]) -> dict[str, Any]:
    """Numpy scalars → Python numbers, so results serialise as JSON."""
    out = dict(entity)
    out["score"] = float(out["score"])
    if "index" in out:
        out["index"] = int(out["index"])
    return out
