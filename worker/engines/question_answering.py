"""Extractive question answering, equal to the transformers 5.2 ``QuestionAnsweringPipeline`` (transformers 5.3
and later ship no question-answering pipeline, so inferq decodes the spans itself, the pipeline's way):

* **windows**: the question and the context are tokenized as a pair, the context truncated (``only_second``, or
  ``only_first`` with the context first when the tokenizer pads on the left) to ``max_seq_len`` tokens with
  ``doc_stride`` tokens of overlap; every window is a feature of its own (`Features.item_of` maps it back), and
  the windows of one item may run in different micro-batches;
* **scores**: per window, logits outside the context (question, special and padding tokens; the CLS token stays
  in) are set to -10000, start and end logits go through a softmax each, the CLS start×end product is the null
  score (the smallest over the windows is kept), CLS is zeroed, and a span ``start ≤ end < start +
  max_answer_len`` scores ``p_start × p_end``, all in float32 as the pipeline computes them;
* **candidates**: the best ``top_k`` spans of each window (``2 × top_k + 10`` with ``align_to_words``, since
  several spans can widen to the same words), widened to whole words with the tokenizer's word ids (the token
  offsets when a token has no word), then merged across windows: spans whose text is equal (ignoring case) are
  one answer whose score is the sum, the first one's offsets kept; with ``handle_impossible_answer`` the null
  answer ``{"answer": "", "start": 0, "end": 0}`` joins them; the ``top_k`` best answers are the result.

``start``/``end`` are character offsets into the context, ``answer == context[start:end]``.

Differences from the pipeline, on purpose:

* the result is always a list (the pipeline returns a bare dict when it has a single answer);
* ``max_seq_len`` larger than the model's maximum length is cut to it (the pipeline uses it as given only when
  asked, and the forward pass then fails); ``doc_stride`` is then cut to half of it when it no longer fits;
* an item that cannot be split into windows (a question that leaves no room for ``doc_stride`` tokens of
  context) fails alone with `InputError`; the others still run (the pipeline raises for the whole call);
* ``max_question_len`` is accepted and, as in the pipeline with a fast tokenizer, unused;
* scores are computed in float32 even when the model runs at fp16 (the pipeline keeps fp16 logits in fp16);
* only fast (Rust) tokenizers are supported: the pipeline's slow-tokenizer path (SQuAD feature conversion) is not
  ported; a model without one fails every item with `ModelLoadError`.

Decoding follows the pipeline's ``decode_spans`` result exactly, but is cheaper: it scores only the band of
``max_answer_len`` spans per start token (``T × max_answer_len`` products, not the pipeline's ``T × T``) and
takes the best ones there. When a window has fewer positive span scores than candidates asked for (a context of a
few tokens), the pipeline's top-k also picks zero-score pairs (the ``T × T`` matrix's ties), which then take part
in the answers; there the pipeline's own computation is run instead, so that it picks the same pairs.

The windows of a chunk that have one length are decoded together (`select_spans_many`: the same numbers, bit for
bit, as each window's `select_spans`); widening to words and merging across windows stay per item (they read each
window's `tokenizers.Encoding`). The answers are serialised in one pass (`result_texts`, `worker.engines.columnar`).
"""

from __future__ import annotations

import inspect
import logging
import math
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from inferq.errors import InferqError, InputError, ModelLoadError
from inferq.task_specs import QuestionAnsweringParams, TaskName
from worker.engines.base import Engine, Outcome
from worker.engines.batching import Features, RunOutputs
from worker.engines.columnar import format_items, json_strings
from worker.loaded import LoadedModel

log = logging.getLogger(__name__)

#: What the pipeline writes over the logits of tokens that cannot be in an answer.
_MASKED_LOGIT = np.float32(-10000.0)
#: The pipeline's starting ``min_null_score`` ("large and positive").
_NO_NULL_SCORE = 1000000

#: One window's best spans: ``(starts, ends, scores, null_score)`` (`select_spans`).
Spans = tuple[np.ndarray, np.ndarray, np.ndarray, float]


class QuestionAnsweringEngine(Engine[QuestionAnsweringParams]):
    task: ClassVar[TaskName] = TaskName.QUESTION_ANSWERING
    auto_model: ClassVar[str] = "AutoModelForQuestionAnswering"
    #: Serialise a chunk's results in one pass (`result_texts`); ``False``: each item's result as dicts, serialised
    #: by the write (the reference the columnar text is tested against).
    columnar: ClassVar[bool] = True

    def __init__(self, loaded: LoadedModel) -> None:
        super().__init__(loaded)
        #: The pipeline puts the question first unless the tokenizer pads on the left.
        self.question_first = getattr(self.tokenizer, "padding_side", "right") == "right"
        cls_id = self.tokenizer.cls_token_id
        self.cls_id: int | None = int(cls_id) if cls_id is not None else None
        pad_id = self.tokenizer.pad_token_id
        self.pad_token_id: int | None = int(pad_id) if pad_id is not None else None
        # As the pipeline's `_forward`: no cache for models that take `use_cache`.
        try:
            self._no_cache = "use_cache" in inspect.signature(self.model.forward).parameters
        except (TypeError, ValueError):
            self._no_cache = False

    # -- windows ---------------------------------------------------------------------------------------

    def window_sizes(self, params: QuestionAnsweringParams) -> tuple[int, int]:
        """``(max_seq_len, doc_stride)`` for the tokenizer: the parameters, cut to the model's maximum length."""
        max_seq_len, doc_stride = params.max_seq_len, params.doc_stride
        limit = self.loaded.max_length
        if max_seq_len > limit:
            max_seq_len = limit
            if doc_stride >= max_seq_len:
                doc_stride = min(max_seq_len // 2, 128)
        return max_seq_len, doc_stride

    def _encode(self, questions: list[str], contexts: list[str], max_seq_len: int, doc_stride: int) -> Any:
        first, second = (questions, contexts) if self.question_first else (contexts, questions)
        return self.tokenizer(
            first,
            second,
            padding=False,
            truncation="only_second" if self.question_first else "only_first",
            max_length=max_seq_len,
            stride=doc_stride,
            return_overflowing_tokens=True,
            return_attention_mask=False,
            return_token_type_ids=self._accepts_token_types,
        )

    def preprocess(self, inputs: Sequence[dict[str, Any]], params: QuestionAnsweringParams) -> Features:
        """Every item's windows, in item order. ``extra["encodings"]`` keeps each window's `tokenizers.Encoding`
        (sequence ids, word ids and character offsets for postprocess); ``extra["errors"]`` the items that could
        not be tokenized, with their error."""
        max_seq_len, doc_stride = self.window_sizes(params)
        questions = [str(i["question"]) for i in inputs]
        contexts = [str(i["context"]) for i in inputs]
        errors: dict[int, InferqError] = {}
        if not inputs or not getattr(self.tokenizer, "is_fast", False):
            return _empty_features(errors)
        # (None, all items' encoding), or (item, its encoding) for every item that could be tokenized.
        parts: list[tuple[int | None, Any]]
        try:
            parts = [(None, self._encode(questions, contexts, max_seq_len, doc_stride))]
        except BaseException as exc:  # the tokenizers library panics (a BaseException) on a stride too large
            if not _is_tokenizer_error(exc):
                raise
            # Some question leaves no room for the context: tokenize item by item to find which.
            log.info("tokenizing %d QA inputs together failed (%s); tokenizing them one by one", len(inputs), exc)
            parts = []
            for i, (question, context) in enumerate(zip(questions, contexts, strict=True)):
                try:
                    parts.append((i, self._encode([question], [context], max_seq_len, doc_stride)))
                except BaseException as item_exc:
                    if not _is_tokenizer_error(item_exc):
                        raise
                    errors[i] = InputError(
                        f"the question leaves no room for the context in windows of max_seq_len={max_seq_len} "
                        f"tokens with doc_stride={doc_stride}: {str(item_exc).splitlines()[0]}"
                    )
        encodings: list[Any] = []
        item_of: list[int] = []
        ids: list[list[int]] = []
        types: list[list[int]] | None = [] if self._accepts_token_types else None
        for item, enc in parts:
            encodings.extend(enc.encodings)
            item_of.extend(enc["overflow_to_sample_mapping"] if item is None else [item] * len(enc.encodings))
            ids.extend(enc["input_ids"])
            if types is not None:
                types.extend(enc["token_type_ids"])
        return Features(
            input_ids=ids,
            token_type_ids=types,
            item_of=np.asarray(item_of, dtype=np.int64),
            extra={"encodings": encodings, "errors": errors},
        )

    # -- the model -------------------------------------------------------------------------------------

    def forward(self, batch: dict[str, Any], params: QuestionAnsweringParams) -> dict[str, Any]:
        if self._no_cache:
            batch = {**batch, "use_cache": False}
        out = self.model(**batch)
        return {
            "start_logits": out.start_logits.float(),
            "end_logits": out.end_logits.float(),
        }

    # -- answers ---------------------------------------------------------------------------------------

    def postprocess(
        self,
        inputs: Sequence[dict[str, Any]],
        features: Features,
        outputs: RunOutputs,
        params: QuestionAnsweringParams,
    ) -> list[Outcome]:
        if not getattr(self.tokenizer, "is_fast", False):
            error = ModelLoadError(
                f"model {self.loaded.name!r}: question answering needs a fast (tokenizers) tokenizer, "
                f"and {type(self.tokenizer).__name__} is not one"
            )
            return [Outcome.failure(error) for _ in inputs]
        top_k = params.top_k
        max_answer_len = params.max_answer_len
        handle_impossible = params.handle_impossible_answer
        align_to_words = params.align_to_words
        # Some candidates may widen to the same words: the pipeline asks for more when aligning.
        pre_topk = top_k * 2 + 10 if align_to_words else top_k

        starts_out = outputs.rows("start_logits")
        ends_out = outputs.rows("end_logits")
        encodings: list[Any] = features.extra["encodings"]
        errors: dict[int, InferqError] = features.extra["errors"]
        item_of = features.item_of
        first = np.searchsorted(item_of, np.arange(len(inputs)), side="left").tolist()
        last = np.searchsorted(item_of, np.arange(len(inputs)), side="right").tolist()

        # The items to answer: not failed in preprocess, every window ran (a window that failed in forward gets
        # its item the error in `run`; one stopped before it ran leaves the item without an outcome).
        answered = [
            i
            for i in range(len(inputs))
            if i not in errors
            and all(starts_out[f] is not None and ends_out[f] is not None for f in range(first[i], last[i]))
        ]
        windows = [f for i in answered for f in range(first[i], last[i])]
        spans = self._spans(windows, features, starts_out, ends_out, pre_topk=pre_topk, max_answer_len=max_answer_len)
        outcomes: list[Outcome] = [Outcome.failure(errors[i]) if i in errors else Outcome() for i in range(len(inputs))]
        results: list[list[dict[str, Any]]] = []
        for i in answered:
            results.append(
                self._answers(
                    str(inputs[i]["context"]),
                    [(encodings[f], features.input_ids[f], spans[f]) for f in range(first[i], last[i])],
                    top_k=top_k,
                    handle_impossible=handle_impossible,
                    align_to_words=align_to_words,
                )
            )
        texts = result_texts(results) if self.columnar else [None] * len(results)
        for i, answers, text in zip(answered, results, texts, strict=True):
            best = answers[0] if answers else None
            outcomes[i] = Outcome(
                result=answers if text is None else None,
                result_text=text,
                answer=best["answer"] if best else None,
                score=best["score"] if best else None,
                start_char=best["start"] if best else None,
                end_char=best["end"] if best else None,
            )
        return outcomes

    def _spans(
        self,
        windows: list[int],
        features: Features,
        starts_out: list[np.ndarray | None],
        ends_out: list[np.ndarray | None],
        *,
        pre_topk: int,
        max_answer_len: int,
    ) -> dict[int, Spans]:
        """Each of ``windows``' best spans (`select_spans`), computed for all windows of one length at once."""
        by_length: dict[int, list[int]] = {}
        for f in windows:
            by_length.setdefault(len(features.input_ids[f]), []).append(f)
        encodings: list[Any] = features.extra["encodings"]
        spans: dict[int, Spans] = {}
        for length, group in by_length.items():
            start_logits = np.stack([starts_out[f][:length] for f in group])  # type: ignore[index]
            end_logits = np.stack([ends_out[f][:length] for f in group])  # type: ignore[index]
            allowed = np.stack([self._allowed(encodings[f], features.input_ids[f]) for f in group])
            found = select_spans_many(start_logits, end_logits, allowed, top_k=pre_topk, max_answer_len=max_answer_len)
            spans.update(zip(group, found, strict=True))
        return spans

    def _answers(
        self,
        context: str,
        windows: list[tuple[Any, list[int], Spans]],
        *,
        top_k: int,
        handle_impossible: bool,
        align_to_words: bool,
    ) -> list[dict[str, Any]]:
        """One item's answers from its windows' spans: the pipeline's ``postprocess``."""
        min_null_score: float = _NO_NULL_SCORE
        answers: list[dict[str, Any]] = []
        #: lower-cased answer text → the first answer with it (the pipeline's ``get_answer``).
        by_text: dict[str, dict[str, Any]] = {}
        sequence_index = 1 if self.question_first else 0
        for enc, ids, (starts, ends, scores, null) in windows:
            if handle_impossible:
                min_null_score = min(min_null_score, null)
            # Encoding was not padded (input_ids may be): only left padding shifts the token positions.
            shift = sum(1 for t in ids if t == self.pad_token_id) if not self.question_first else 0
            offsets: list[tuple[int, int]] | None = None
            for s, e, score in zip(starts.tolist(), ends.tolist(), scores.tolist(), strict=True):
                s, e = s - shift, e - shift
                span = _word_span(enc, s, e, sequence_index) if align_to_words else None
                if span is None:
                    if offsets is None:
                        offsets = enc.offsets
                    span = (offsets[s][0], offsets[e][1])
                start_index, end_index = span
                text = context[start_index:end_index]
                key = text.lower()
                known = by_text.get(key)
                if known is not None:
                    known["score"] += score
                else:
                    answer = {"answer": text, "score": score, "start": start_index, "end": end_index}
                    by_text[key] = answer
                    answers.append(answer)
        if handle_impossible:
            answers.append({"answer": "", "score": min_null_score, "start": 0, "end": 0})
        return sorted(answers, key=lambda a: a["score"], reverse=True)[:top_k]

    def _allowed(self, enc: Any, ids: list[int]) -> np.ndarray:
        """The pipeline's ``1 - p_mask``: the context's tokens (every token when the context comes first) and any
        CLS token."""
        if self.question_first:
            allowed = np.fromiter((s == 1 for s in enc.sequence_ids), dtype=bool, count=len(ids))
        else:
            allowed = np.ones(len(ids), dtype=bool)
        if self.cls_id is not None:
            allowed |= np.asarray(ids) == self.cls_id
        return allowed


# -- span decoding (module level: pure numpy, testable alone) -------------------------------------------


def select_spans(
    start_logits: np.ndarray,
    end_logits: np.ndarray,
    allowed: np.ndarray,
    *,
    top_k: int,
    max_answer_len: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """One window's best spans, as the pipeline's ``select_starts_ends`` finds them: ``(starts, ends, scores,
    null_score)``, best first, scores in float32. ``allowed`` marks the tokens that may be in an answer."""
    start = np.where(allowed, start_logits.astype(np.float32, copy=False), _MASKED_LOGIT)[None]
    end = np.where(allowed, end_logits.astype(np.float32, copy=False), _MASKED_LOGIT)[None]
    start = np.exp(start - start.max(axis=-1, keepdims=True))
    start = start / start.sum()
    end = np.exp(end - end.max(axis=-1, keepdims=True))
    end = end / end.sum()
    null_score = float((start[0, 0] * end[0, 0]).item())
    # The CLS token is never an answer's start or end.
    start[0, 0] = end[0, 0] = 0.0
    band = _band_spans(start[0], end[0], top_k, max_answer_len)
    if band is not None:
        return (*band, null_score)
    return (*_decode_spans_full(start, end, top_k, max_answer_len, allowed), null_score)


def select_spans_many(
    start_logits: np.ndarray,
    end_logits: np.ndarray,
    allowed: np.ndarray,
    *,
    top_k: int,
    max_answer_len: int,
) -> list[Spans]:
    """`select_spans` of ``n`` windows of one length ``T`` at once (``[n, T]`` logits and ``allowed``): the same
    numbers, bit for bit (each row's softmax, band and top-k are the 1-D ones, row by row: a row's reduction runs
    over its ``T`` contiguous values as the window's own does). A window with too few positive span scores is
    decoded alone, the pipeline's way (`_decode_spans_full`)."""
    n, length = start_logits.shape
    start = np.where(allowed, start_logits.astype(np.float32, copy=False), _MASKED_LOGIT)
    end = np.where(allowed, end_logits.astype(np.float32, copy=False), _MASKED_LOGIT)
    start = np.exp(start - start.max(axis=-1, keepdims=True))
    start = start / start.sum(axis=-1, keepdims=True)
    end = np.exp(end - end.max(axis=-1, keepdims=True))
    end = end / end.sum(axis=-1, keepdims=True)
    null_scores: list[float] = (start[:, 0] * end[:, 0]).tolist()
    # The CLS token is never an answer's start or end.
    start[:, 0] = end[:, 0] = 0.0
    width = min(max_answer_len, length)
    padded_end = np.concatenate([end, np.zeros((n, width - 1), dtype=end.dtype)], axis=1)
    band = (start[:, :, None] * sliding_window_view(padded_end, width, axis=1)).reshape(n, length * width)
    banded = np.count_nonzero(band > 0, axis=1) >= max(top_k, 1)
    rows = np.flatnonzero(banded)
    spans: list[Spans | None] = [None] * n
    if rows.size:
        scores = band[rows]
        if top_k == 1:
            chosen = np.argmax(scores, axis=1)[:, None]
        else:
            if top_k < scores.shape[1]:
                picked = np.argpartition(-scores, top_k - 1, axis=1)[:, :top_k]
            else:
                picked = np.broadcast_to(np.arange(scores.shape[1]), scores.shape)
            values = np.take_along_axis(scores, picked, axis=1)
            chosen = np.take_along_axis(picked, np.lexsort((picked, -values), axis=-1), axis=1)
        best = np.take_along_axis(scores, chosen, axis=1)
        starts = chosen // width
        ends = starts + chosen % width
        for j, r in enumerate(rows.tolist()):
            spans[r] = (starts[j], ends[j], best[j], null_scores[r])
    for r in np.flatnonzero(~banded).tolist():
        full = _decode_spans_full(start[r : r + 1], end[r : r + 1], top_k, max_answer_len, allowed[r])
        spans[r] = (*full, null_scores[r])
    return spans  # type: ignore[return-value]  # every row set above


def result_texts(results: Sequence[list[dict[str, Any]]]) -> list[str] | list[None]:
    """Every item's answers (``[{"answer", "score", "start", "end"}, …]``) as the write stores them
    (`inferq.store.chunks.result_json`), in one pass; ``None`` for each where a score is not finite (the write
    then serialises them one by one)."""
    answers = [a for result in results for a in result]
    scores = [a["score"] for a in answers]
    if not results or not all(math.isfinite(x) for x in scores):
        return [None] * len(results)
    quoted = json_strings(a["answer"] for a in answers)
    args: list[Any] = []
    for a in answers:
        args += (quoted[a["answer"]], a["score"], a["start"], a["end"])
    return format_items('{"answer": %s, "score": %r, "start": %d, "end": %d}', [len(r) for r in results], args)


def _band_spans(
    start: np.ndarray, end: np.ndarray, top_k: int, max_answer_len: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """The ``top_k`` best spans with a positive score, from the ``T × max_answer_len`` band of ``start ≤ end <
    start + max_answer_len``; ``None`` when the band has fewer than ``top_k`` positive scores.

    The pipeline's ``T × T`` candidate matrix is zero outside this band, and zero at every token that may not be
    in an answer (its probability underflows to 0 after the -10000 mask), so when ``top_k`` positive scores exist,
    they are exactly its top ``top_k``, in the same order (equal scores: the earlier span first, as ``argmax``)."""
    length = start.shape[0]
    width = min(max_answer_len, length)
    padded_end = np.concatenate([end, np.zeros(width - 1, dtype=end.dtype)])
    band = (start[:, None] * sliding_window_view(padded_end, width)).ravel()
    positive = int(np.count_nonzero(band > 0))
    if positive < max(top_k, 1):
        return None
    if top_k == 1:
        chosen = np.array([np.argmax(band)])
    else:
        picked = np.argpartition(-band, top_k - 1)[:top_k] if top_k < band.size else np.arange(band.size)
        chosen = picked[np.lexsort((picked, -band[picked]))]
    starts = chosen // width
    ends = starts + chosen % width
    return starts, ends, band[chosen]


def _decode_spans_full(
    start: np.ndarray, end: np.ndarray, top_k: int, max_answer_len: int, allowed: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The pipeline's ``decode_spans``, line for line, on ``[1, T]`` probabilities: used where zero scores
    take part in the top-k, so that the same zero-score pairs are picked."""
    outer = np.matmul(np.expand_dims(start, -1), np.expand_dims(end, 1))
    candidates = np.tril(np.triu(outer), max_answer_len - 1)
    scores_flat = candidates.flatten()
    if top_k == 1:
        idx_sort = np.array([np.argmax(scores_flat)])
    elif len(scores_flat) < top_k:
        idx_sort = np.argsort(-scores_flat)
    else:
        idx = np.argpartition(-scores_flat, top_k)[0:top_k]
        idx_sort = idx[np.argsort(-scores_flat[idx])]
    starts, ends = np.unravel_index(idx_sort, candidates.shape)[1:]
    # The pipeline tests membership in `undesired_tokens.nonzero()` of a [1, T] array: a (rows, columns) pair
    # whose rows are all 0, so position 0 counts as allowed whenever any token is.
    desired = np.nonzero(allowed[None].astype(np.int64))
    keep = np.isin(starts, desired) & np.isin(ends, desired)
    starts = starts[keep]
    ends = ends[keep]
    return starts, ends, candidates[0, starts, ends]


def _word_span(enc: Any, s: int, e: int, sequence_index: int) -> tuple[int, int] | None:
    """The character span from the start of token ``s``'s word to the end of token ``e``'s word, the words as
    this window holds them; ``None`` when either token has no word (the pipeline then keeps token offsets)."""
    start_word = enc.token_to_word(s)
    end_word = enc.token_to_word(e)
    if start_word is None or end_word is None:
        return None
    start_chars = enc.word_to_chars(start_word, sequence_index=sequence_index)
    end_chars = enc.word_to_chars(end_word, sequence_index=sequence_index)
    if start_chars is None or end_chars is None:
        return None
    return int(start_chars[0]), int(end_chars[1])


def _is_tokenizer_error(exc: BaseException) -> bool:
    """An error of the tokenizer on this input: an exception, or a panic of the Rust tokenizers library."""
    return isinstance(exc, Exception) or type(exc).__name__ == "PanicException"


def _empty_features(errors: dict[int, InferqError]) -> Features:
    return Features(input_ids=[], item_of=np.zeros(0, dtype=np.int64), extra={"encodings": [], "errors": errors})
