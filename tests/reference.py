"""The transformers pipelines, as the reference every result is compared with."""

from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Any

#: Largest accepted difference between an inferq score and the pipeline's.
SCORE_TOLERANCE = 1e-5


@functools.cache
def _pipeline(task: str, model: str) -> Any:
    from transformers import pipeline

    return pipeline(task, model=model, tokenizer=model, device="cpu")


def classification_reference(model: Path, inputs: list[dict[str, Any]], **params: Any) -> list[list[dict[str, Any]]]:
    """What ``pipeline("text-classification")`` returns for each input with ``truncation=True``."""
    clf = _pipeline("text-classification", str(model))
    out = []
    for item in inputs:
        arg = {"text": item["text"], "text_pair": item["text_pair"]} if item.get("text_pair") else item["text"]
        out.append(clf(arg, truncation=True, **params))
    return out


def assert_same_labels(got: list[dict[str, Any]], want: list[dict[str, Any]], where: str) -> None:
    """Same labels in the same order with scores within tolerance; labels whose scores tie (within tolerance)
    may come in either order."""
    assert len(got) == len(want), f"{where}: {len(got)} labels, pipeline has {len(want)}"
    got_scores = {g["label"]: g["score"] for g in got}
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        assert math.isclose(g["score"], w["score"], abs_tol=SCORE_TOLERANCE), f"{where}[{i}]: {g} != {w}"
        if g["label"] != w["label"]:
            # Allowed only for a tie.
            assert math.isclose(got_scores.get(w["label"], -1.0), w["score"], abs_tol=SCORE_TOLERANCE), (
                f"{where}[{i}]: label {g['label']} != {w['label']}"
            )
