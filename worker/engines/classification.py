"""Sequence classification of single texts and text pairs, equal to the transformers text-classification
pipeline (``truncation=True``): softmax or sigmoid as the pipeline chooses, ``id2label``, top_k sorted."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from inferq.store.chunks import result_json
from inferq.task_specs import ClassificationParams, TaskName
from worker.engines.base import Engine, Outcome, sigmoid, softmax
from worker.engines.batching import Features, RunOutputs


class ClassificationEngine(Engine[ClassificationParams]):
    task: ClassVar[TaskName] = TaskName.CLASSIFICATION
    auto_model: ClassVar[str] = "AutoModelForSequenceClassification"
    reads_first_token: ClassVar[bool] = True
    #: Serialise a chunk's results in one pass (`result_texts`); ``False``: each item's result as dicts, serialised
    #: by the write (the reference the columnar text is tested against).
    columnar: ClassVar[bool] = True

    def preprocess(self, inputs: Sequence[dict[str, Any]], params: ClassificationParams) -> Features:
        texts = [i["text"] for i in inputs]
        pairs = [i.get("text_pair") for i in inputs]
        if all(p is None for p in pairs):
            enc = self.tokenize(texts)
            return self._features(enc, len(inputs))
        if all(p is not None for p in pairs):
            enc = self.tokenize(texts, pairs)  # type: ignore[arg-type]
            return self._features(enc, len(inputs))
        # A mix of single texts and pairs: tokenize each group in one call, then merge in input order.
        single = [i for i, p in enumerate(pairs) if p is None]
        paired = [i for i, p in enumerate(pairs) if p is not None]
        enc_s = self.tokenize([texts[i] for i in single])
        enc_p = self.tokenize([texts[i] for i in paired], [pairs[i] for i in paired])  # type: ignore[misc]
        ids: list[list[int]] = [[] for _ in inputs]
        types: list[list[int]] | None = [[] for _ in inputs] if "token_type_ids" in enc_s else None
        for group, enc in ((single, enc_s), (paired, enc_p)):
            for j, i in enumerate(group):
                ids[i] = enc["input_ids"][j]
                if types is not None:
                    types[i] = enc["token_type_ids"][j]
        return Features(input_ids=ids, token_type_ids=types, item_of=np.arange(len(inputs)))

    @staticmethod
    def _features(enc: Any, n: int) -> Features:
        return Features(input_ids=enc["input_ids"], token_type_ids=enc.get("token_type_ids"), item_of=np.arange(n))

    def _function(self, requested: str) -> str:
        """The pipeline's choice of output function."""
        if requested != "default":
            return requested
        config = self.config
        if config.problem_type == "regression":
            return "none"
        if config.problem_type == "multi_label_classification" or config.num_labels == 1:
            return "sigmoid"
        if config.problem_type == "single_label_classification" or config.num_labels > 1:
            return "softmax"
        return str(getattr(config, "function_to_apply", "none"))

    def postprocess(
        self,
        inputs: Sequence[dict[str, Any]],
        features: Features,
        outputs: RunOutputs,
        params: ClassificationParams,
    ) -> list[Outcome]:
        logits = outputs.stacked("logits")
        fn = self._function(params.function_to_apply)
        scores = sigmoid(logits) if fn == "sigmoid" else softmax(logits) if fn == "softmax" else logits
        k = scores.shape[1] if params.top_k is None else min(params.top_k, scores.shape[1])
        # Best first; ties keep label order, as the pipeline's stable sort does.
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        top = np.take_along_axis(scores, order, axis=1)
        id2label = self.config.id2label
        names = [id2label[i] for i in range(scores.shape[1])]
        texts = result_texts(names, order, top) if self.columnar else [None] * len(order)
        if texts and texts[0] is not None:
            return [
                Outcome(label=names[c], score=s, result_text=text)
                for c, s, text in zip(order[:, 0].tolist(), top[:, 0].tolist(), texts, strict=True)
            ]
        top_list = top.tolist()
        order_list = order.tolist()
        return [
            Outcome(
                result=[{"label": names[c], "score": s} for c, s in zip(oc, sc, strict=True)],
                label=names[oc[0]],
                score=sc[0],
            )
            for oc, sc in zip(order_list, top_list, strict=True)
        ]


def result_texts(names: Sequence[str], order: np.ndarray, top: np.ndarray) -> list[str] | list[None]:
    """Every item's result (``[{"label", "score"}, …]``, labels ``names[order]`` with scores ``top``, both
    ``[items, k]``) as the write stores it (`inferq.store.chunks.result_json`), made in one pass: one ``%`` format
    of the whole chunk instead of one JSON encoding an item. ``None`` for each item where a score is not finite
    (JSON's ``NaN`` is not Python's ``repr``): the write then serialises them one by one."""
    n, k = order.shape
    if n == 0 or not np.isfinite(top).all():
        return [None] * n
    one = "[" + ", ".join(['{"label": %s, "score": %r}'] * k) + "]\n"
    args = np.empty((n, 2 * k), dtype=object)
    args[:, 0::2] = np.array([result_json(x) for x in names], dtype=object)[order]
    args[:, 1::2] = top.astype(np.float64)  # Python floats: their repr is JSON's
    # A label's JSON has no raw line break (escaped), a float none either: the lines are the items.
    return (one * n % tuple(args.ravel().tolist())).split("\n")[:-1]
