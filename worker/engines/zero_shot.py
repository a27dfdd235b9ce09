"""Zero-shot classification with an NLI model, equal to the transformers zero-shot-classification pipeline.

* Labels: the line's ``candidate_labels`` (a string is split at commas, as the pipeline splits it), else the job's
  parameter. Each label becomes the hypothesis ``hypothesis_template.format(label)``, and every (text, hypothesis)
  pair is one feature (`Features.item_of` maps it to its line), batched under the token budget with every other
  pair of the chunk.
* Tokenization as the pipeline's: ``tokenizer(text, hypothesis, truncation="only_first")``, so that only the text
  is cut, to the model's maximum length; a pair whose hypothesis alone leaves no room (the tokenizer raises
  "… too short …") is tokenized without truncation, as the pipeline retries it.
* The entailment logit is the one of the first ``label2id`` key starting with "entail" (any case); the
  contradiction logit is, as in the pipeline, column 0, or the last column when entailment is 0.
* Scores: without ``multi_label`` (and with more than one label), softmax of the labels' entailment logits;
  with ``multi_label`` or a single label, per label the softmax over its [contradiction, entailment] logits.
* The result lists every label, best first, in the pipeline's order (``reversed(scores.argsort())``).

A model without an entailment label is refused at load (``ValueError``, reported by the model cache as
``ModelLoadError``); the pipeline only warns and then reads the last logit as entailment.

Differences from the pipeline, on purpose: softmaxes are taken with the maximum subtracted first (the pipeline
exponentiates the logits as they are, which overflows to NaN for large logits); a tokenizer without a maximum
length truncates to the model's position table (`worker.loaded.effective_max_length`), where the pipeline does
not truncate at all.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, cast

import numpy as np

from inferq.errors import InputError
from inferq.task_specs import TaskName, ZeroShotParams
from worker.engines.base import Engine, Outcome, softmax
from worker.engines.batching import Features, RunOutputs
from worker.engines.columnar import finite, format_items, json_strings
from worker.loaded import LoadedModel


class ZeroShotEngine(Engine[ZeroShotParams]):
    task: ClassVar[TaskName] = TaskName.ZERO_SHOT_CLASSIFICATION
    auto_model: ClassVar[str] = "AutoModelForSequenceClassification"
    reads_first_token: ClassVar[bool] = True

    def __init__(self, loaded: LoadedModel) -> None:
        super().__init__(loaded)
        num_labels = int(self.config.num_labels)
        entailment = entailment_id(self.config.label2id)
        if entailment is None:
            labels = ", ".join(repr(k) for k in self.config.label2id) or "none"
            raise ValueError(
                f"zero-shot classification needs an NLI model with an entailment label (a label starting with "
                f"'entail'); this model's labels are {labels}"
            )
        if not 0 <= entailment < num_labels:
            raise ValueError(f"the entailment label's id {entailment} is outside the model's {num_labels} logits")
        #: Logit columns, as the pipeline picks them.
        self.entailment_id = entailment
        self.contradiction_id = num_labels - 1 if entailment == 0 else 0

    def preprocess(self, inputs: Sequence[dict[str, Any]], params: ZeroShotParams) -> Features:
        texts: list[str] = []
        hypotheses: list[str] = []
        item_of: list[int] = []
        labels_of: list[list[str]] = []
        for i, line in enumerate(inputs):
            labels = labels_of_line(line, params)
            labels_of.append(labels)
            for label in labels:
                texts.append(str(line["text"]))
                hypotheses.append(params.hypothesis_template.format(label))
                item_of.append(i)
        extra = {"labels": labels_of}
        if not texts:
            return Features(input_ids=[], item_of=np.zeros(0, dtype=np.int64), extra=extra)
        ids, types = self._tokenize_pairs(texts, hypotheses)
        return Features(input_ids=ids, token_type_ids=types, item_of=np.asarray(item_of, dtype=np.int64), extra=extra)

    def _tokenize_pairs(
        self, texts: list[str], hypotheses: list[str]
    ) -> tuple[list[list[int]], list[list[int]] | None]:
        try:
            enc = self.tokenize(texts, hypotheses, truncation="only_first")
            return enc["input_ids"], enc.get("token_type_ids")
        except Exception as exc:
            if "too short" not in str(exc):
                raise
        # Some hypothesis leaves the text no room: as the pipeline (which tokenizes pair by pair), such a pair is
        # tokenized without truncation, the others as before.
        ids: list[list[int]] = []
        types: list[list[int]] | None = [] if self._accepts_token_types else None
        for text, hypothesis in zip(texts, hypotheses, strict=True):
            try:
                enc = self.tokenize([text], [hypothesis], truncation="only_first")
            except Exception as exc:
                if "too short" not in str(exc):
                    raise
                enc = self.tokenize([text], [hypothesis], truncation=False, max_length=None)
            ids.append(enc["input_ids"][0])
            if types is not None:
                types.append(enc["token_type_ids"][0])
        return ids, types

    #: Serialise a chunk's results in one pass (`worker.engines.columnar`); ``False``: each item's result as dicts,
    #: serialised by the write (the reference the columnar text is tested against).
    columnar: ClassVar[bool] = True

    def postprocess(
        self,
        inputs: Sequence[dict[str, Any]],
        features: Features,
        outputs: RunOutputs,
        params: ZeroShotParams,
    ) -> list[Outcome]:
        logits = outputs.stacked("logits")
        if logits.ndim != 2 or logits.shape[1] != self.config.num_labels:  # nothing ran
            logits = np.zeros((len(features), int(self.config.num_labels)), dtype=np.float32)
        labels_of: list[list[str]] = features.extra["labels"]
        counts = np.fromiter((len(labels) for labels in labels_of), dtype=np.int64, count=len(labels_of))
        starts = np.cumsum(counts) - counts
        if params.multi_label:
            # Per label the softmax over its [contradiction, entailment] logits: every pair of the chunk at once.
            pair_scores = softmax(logits[:, [self.contradiction_id, self.entailment_id]], axis=-1)[:, 1]
        outcomes: list[Outcome | None] = [None] * len(labels_of)
        # Lines with the same number of labels (a job's own labels: every line) are one [lines, labels] matrix:
        # softmax and argsort along its rows compute, row by row, what they compute on one line's vector.
        for count in np.unique(counts).tolist():
            lines = np.flatnonzero(counts == count)
            if count == 0:
                for i in lines.tolist():
                    outcomes[i] = Outcome.failure(InputError("no candidate labels"))
                continue
            rows = starts[lines][:, None] + np.arange(count)  # [lines, count]: each line's features
            if params.multi_label:
                scores = pair_scores[rows]
            elif count == 1:
                scores = softmax(logits[rows.ravel()][:, [self.contradiction_id, self.entailment_id]], axis=-1)[:, 1:]
            else:
                scores = softmax(logits[rows, self.entailment_id], axis=-1)
            # The pipeline's order: ascending argsort, reversed (equal scores come in reverse label order).
            order = scores.argsort(axis=1)[:, ::-1]
            top = np.take_along_axis(scores, order, axis=1)
            for i, outcome in zip(
                lines.tolist(), self._outcomes([labels_of[i] for i in lines], order, top), strict=True
            ):
                outcomes[i] = outcome
        return cast(list[Outcome], outcomes)

    def _outcomes(self, labels: list[list[str]], order: np.ndarray, top: np.ndarray) -> list[Outcome]:
        """Lines of the same number of labels: their labels, ``order`` and sorted scores ``top`` ([lines, labels])."""
        order_list: list[list[int]] = order.tolist()
        top_list: list[list[float]] = top.astype(np.float64).tolist()  # Python floats: their repr is JSON's
        ranked = [[own[j] for j in line_order] for own, line_order in zip(labels, order_list, strict=True)]
        if not self.columnar or not finite(top):
            return [
                Outcome(
                    result=[{"label": x, "score": s} for x, s in zip(names, scores, strict=True)],
                    label=names[0],
                    score=scores[0],
                )
                for names, scores in zip(ranked, top_list, strict=True)
            ]
        quoted = json_strings(x for names in ranked for x in names)
        args = np.empty((*order.shape, 2), dtype=object)
        args[:, :, 0] = [[quoted[x] for x in names] for names in ranked]
        args[:, :, 1] = top_list
        texts = format_items('{"label": %s, "score": %r}', [order.shape[1]] * len(labels), args.ravel().tolist())
        return [
            Outcome(label=names[0], score=scores[0], result_text=text)
            for names, scores, text in zip(ranked, top_list, texts, strict=True)
        ]


def entailment_id(label2id: dict[str, Any]) -> int | None:
    """The id of the first label (in ``label2id`` order) starting with "entail", any case; as the pipeline."""
    for label, index in label2id.items():
        if str(label).lower().startswith("entail"):
            return int(index)
    return None


def labels_of_line(line: dict[str, Any], params: ZeroShotParams) -> list[str]:
    """The line's own ``candidate_labels`` (they win), else the job's; a string is split at commas."""
    labels = line.get("candidate_labels")
    if labels is None:
        labels = params.candidate_labels
    if isinstance(labels, str):
        return [s.strip() for s in labels.split(",") if s.strip()]
    return [str(x) for x in labels or []]
