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


def assert_same_ranking(
    got: list[dict[str, Any]], want: list[dict[str, Any]], key: tuple[str, ...], where: str
) -> None:
    """Two best-first candidate lists agree: the same length, scores position by position within tolerance, and
    the same candidates, except that candidates whose scores tie (within tolerance) at the cut may differ."""
    assert len(got) == len(want), f"{where}: {len(got)} candidates, reference has {len(want)}"
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        assert math.isclose(g["score"], w["score"], abs_tol=SCORE_TOLERANCE), f"{where}[{i}]: {g} != {w}"
    if not want:
        return
    cut = want[-1]["score"] + SCORE_TOLERANCE
    sure_got = {tuple(g[k] for k in key) for g in got if g["score"] > cut}
    sure_want = {tuple(w[k] for k in key) for w in want if w["score"] > cut}
    assert sure_got == sure_want, f"{where}: {sure_got ^ sure_want}"
    want_by_key = {tuple(w[k] for k in key): w for w in want}
    for g in got:
        w = want_by_key.get(tuple(g[k] for k in key))
        if w is not None:
            assert w == {**g, "score": w["score"]}, f"{where}: {g} != {w}"
            assert math.isclose(g["score"], w["score"], abs_tol=SCORE_TOLERANCE), f"{where}: {g} != {w}"


def assert_same_entities(got: list[dict[str, Any]], want: list[dict[str, Any]], where: str) -> None:
    """Token-classification entities: same spans, words and labels in order; scores within tolerance."""
    assert len(got) == len(want), f"{where}: {len(got)} entities, pipeline has {len(want)}"
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        w = {k: (v.item() if hasattr(v, "item") else v) for k, v in w.items()}
        assert {k: v for k, v in g.items() if k != "score"} == {k: v for k, v in w.items() if k != "score"}, (
            f"{where}[{i}]: {g} != {w}"
        )
        assert math.isclose(g["score"], w["score"], abs_tol=SCORE_TOLERANCE), f"{where}[{i}]: {g} != {w}"


def fill_mask_reference(model: Path, text: str, **params: Any) -> list[list[dict[str, Any]]]:
    """``pipeline("fill-mask")`` for one text with truncation to the model's maximum (as inferq truncates),
    always as one list of candidates per mask."""
    out = _pipeline("fill-mask", str(model))(text, tokenizer_kwargs={"truncation": True}, **params)
    return out if out and isinstance(out[0], list) else [out]


def token_classification_reference(model: Path, text: str, **params: Any) -> list[dict[str, Any]]:
    return list(_pipeline("token-classification", str(model))(text, **params))


@functools.cache
def sentence_transformer(model: str) -> Any:
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(model, device="cpu")


@functools.cache
def cross_encoder(model: str) -> Any:
    from sentence_transformers import CrossEncoder

    return CrossEncoder(model, device="cpu")


def embedding_reference(model: Path, texts: list[str], **params: Any) -> Any:
    """``SentenceTransformer(model).encode(texts, **params)``: an N×d float32 array."""
    return sentence_transformer(str(model)).encode(texts, convert_to_numpy=True, **params)


def rerank_reference(model: Path, query: str, documents: list[str], **params: Any) -> list[dict[str, Any]]:
    """``CrossEncoder(model).rank(query, documents, **params)``: ``[{"corpus_id", "score"[, "text"]}]``."""
    ranked = cross_encoder(str(model)).rank(query, documents, **params)
    return [{k: (float(v) if k == "score" else v) for k, v in r.items()} for r in ranked]


def zero_shot_reference(model: Path, text: str, labels: list[str], **params: Any) -> list[dict[str, Any]]:
    """``pipeline("zero-shot-classification")`` as ``[{"label", "score"}]``, best first."""
    out = _pipeline("zero-shot-classification", str(model))(text, candidate_labels=labels, **params)
    return [{"label": label, "score": score} for label, score in zip(out["labels"], out["scores"], strict=True)]
