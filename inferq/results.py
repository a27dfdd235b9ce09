"""Typed result objects, one kind per task, and the parsers that read a stored (or exported) result into them.

Torch-free and numpy-free: shared by the producer (``row.typed()``) and anything else that reads results.
A result as exported is plain JSON, shaped as the reference implementations shape theirs:

=========================  ===============================================================================
classification             ``[{"label", "score"}, …]``, best first
question_answering         ``[{"answer", "score", "start", "end"}, …]``, best first
fill_mask                  one list per mask in the text, each ``[{"token", "token_str", "score", "sequence"}, …]``
token_classification       ``[{"entity" | "entity_group", "score", "word", "start", "end"[, "index"]}, …]``
embedding                  ``{"dim", "dtype", "embedding": [...]}``, or with ``overflow=windows``
                           ``{"dim", "dtype", "windows": [{"start", "end", "embedding": [...]}, …]}``
rerank                     ``[{"index", "score"[, "document"]}, …]``, best first
zero_shot_classification   ``[{"label", "score"}, …]``, best first
=========================  ===============================================================================
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class ClassLabel:
    label: str
    score: float


@dataclass(frozen=True, slots=True)
class Answer:
    answer: str
    score: float
    #: Character span of the answer in the context: ``context[start:end] == answer``.
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class MaskFill:
    #: Vocabulary id of the filler.
    token: int
    token_str: str
    score: float
    #: The text with this filler in place of the mask.
    sequence: str


@dataclass(frozen=True, slots=True)
class Entity:
    #: The label (``entity`` for single tokens, ``entity_group`` when tokens were aggregated).
    entity: str
    score: float
    word: str
    #: Character span in the text; None where the tokenizer gives no offsets.
    start: int | None
    end: int | None
    #: Token position, for ungrouped entities.
    index: int | None = None
    #: True when tokens were aggregated into this entity (``aggregation_strategy`` other than ``none``).
    grouped: bool = False


@dataclass(frozen=True, slots=True)
class Embedding:
    """One sentence embedding: of the whole (truncated) text, or of one window of it (``overflow=windows``)."""

    embedding: list[float]
    #: With ``overflow=windows``: the window's character span, ``text[start:end]``. None for a whole text.
    start: int | None = None
    end: int | None = None


@dataclass(frozen=True, slots=True)
class RankedDocument:
    #: Position of the document in the line's ``documents`` (0 for a ``text``/``text_pair`` line).
    index: int
    score: float
    #: The document's text, with ``return_documents``.
    document: str | None = None


def parse_labels(result: Any) -> list[ClassLabel]:
    return [ClassLabel(label=str(d["label"]), score=float(d["score"])) for d in result]


def parse_answers(result: Any) -> list[Answer]:
    return [
        Answer(answer=str(d["answer"]), score=float(d["score"]), start=int(d["start"]), end=int(d["end"]))
        for d in result
    ]


def parse_mask_fills(result: Any) -> list[list[MaskFill]]:
    # One mask may also be stored flat, as the pipeline returns it for a text with a single mask.
    per_mask = [result] if result and all(isinstance(d, dict) for d in result) else result
    return [
        [
            MaskFill(
                token=int(d["token"]),
                token_str=str(d["token_str"]),
                score=float(d["score"]),
                sequence=str(d["sequence"]),
            )
            for d in fills
        ]
        for fills in per_mask
    ]


def parse_entities(result: Any) -> list[Entity]:
    entities = []
    for d in result:
        grouped = "entity_group" in d
        start, end, index = d.get("start"), d.get("end"), d.get("index")
        entities.append(
            Entity(
                entity=str(d["entity_group"] if grouped else d["entity"]),
                score=float(d["score"]),
                word=str(d["word"]),
                start=None if start is None else int(start),
                end=None if end is None else int(end),
                index=None if index is None else int(index),
                grouped=grouped,
            )
        )
    return entities


def parse_embeddings(result: Any) -> list[Embedding]:
    """One `Embedding` for a whole text, one per window with ``overflow=windows``."""
    if "windows" in result:
        return [
            Embedding(embedding=[float(x) for x in w["embedding"]], start=int(w["start"]), end=int(w["end"]))
            for w in result["windows"]
        ]
    return [Embedding(embedding=[float(x) for x in result["embedding"]])]


def parse_ranking(result: Any) -> list[RankedDocument]:
    return [
        RankedDocument(
            index=int(d["index"]),
            score=float(d["score"]),
            document=None if d.get("document") is None else str(d["document"]),
        )
        for d in result
    ]
