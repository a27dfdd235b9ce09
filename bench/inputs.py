"""Benchmark inputs: real English sentences (`inferq_demo.stand_ins.corpus`, ~3,000 of them, ~19 words on average,
with a long tail), drawn with a fixed seed so that every run and every variant sees the same items.

Embedding and zero-shot items are single sentences (zero-shot scores each against the same `ZERO_SHOT_LABELS`);
a rerank item is a short query and `RERANK_DOCUMENTS` sentences to rank, one of which the query was taken from.

Pure functions of ``(sentences, n, seed)``: the tests pass their own sentences."""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from typing import Any

from inferq.task_specs import MASK_PLACEHOLDER

#: Sentences per QA context: a paragraph of 2 to 6 consecutive sentences (~40 to ~120 words).
QA_CONTEXT_SENTENCES = (2, 6)

#: Candidate labels of every zero-shot item: ten topics, as a user would pass them (``candidate_labels``).
ZERO_SHOT_LABELS = (
    "politics",
    "sports",
    "technology",
    "business",
    "science",
    "health",
    "entertainment",
    "education",
    "travel",
    "programming",
)

#: Documents per rerank query.
RERANK_DOCUMENTS = 50

#: Words a fill-mask item may mask: a word of letters only, never the first (so that the mask has a left context).
_MASKABLE = re.compile(r"^[A-Za-z]{3,}$")


def draw(sentences: Sequence[str], n: int, seed: int) -> list[str]:
    """``n`` sentences: a random sample without repeats while ``n`` fits, then the corpus again (reshuffled)."""
    if not sentences:
        raise ValueError("no sentences to draw from")
    rng = random.Random(seed)
    out: list[str] = []
    while len(out) < n:
        out.extend(rng.sample(list(sentences), min(len(sentences), n - len(out))))
    return out


def classification_inputs(sentences: Sequence[str], n: int, seed: int = 0) -> list[dict[str, Any]]:
    """Single texts, one real sentence each."""
    return [{"text": s} for s in draw(sentences, n, seed)]


def qa_inputs(sentences: Sequence[str], n: int, seed: int = 0) -> list[dict[str, Any]]:
    """A question about a paragraph: the context is 2 to 6 consecutive sentences, the question the first words of
    one of them turned into a question (so that an answer exists in the context)."""
    if not sentences:
        raise ValueError("no sentences to draw from")
    rng = random.Random(seed)
    lo, hi = QA_CONTEXT_SENTENCES
    out: list[dict[str, Any]] = []
    for _ in range(n):
        k = rng.randint(lo, hi)
        start = rng.randrange(max(1, len(sentences) - k + 1))
        paragraph = list(sentences[start : start + k])
        words = rng.choice(paragraph).rstrip(".!?").split()
        question = "What is " + " ".join(words[: rng.randint(3, 8)]) + "?"
        out.append({"question": question, "context": " ".join(paragraph)})
    return out


def fill_mask_inputs(sentences: Sequence[str], n: int, seed: int = 0) -> list[dict[str, Any]]:
    """A sentence with one word replaced by the model-independent mask placeholder ``[[MASK]]``. Sentences without
    a maskable word are skipped over; the words kept are the first 30 (the mask stays well inside any model's
    maximum length)."""
    rng = random.Random(seed)
    out: list[dict[str, Any]] = []
    for s in draw(sentences, 2 * n + 16, seed):
        words = s.split()
        candidates = [i for i, w in enumerate(words[:30]) if i > 0 and _MASKABLE.match(w)]
        if not candidates:
            continue
        words[rng.choice(candidates)] = MASK_PLACEHOLDER
        out.append({"text": " ".join(words)})
        if len(out) == n:
            return out
    raise ValueError(f"only {len(out)} of {n} sentences have a maskable word")


def embedding_inputs(sentences: Sequence[str], n: int, seed: int = 0) -> list[dict[str, Any]]:
    """Single texts, one real sentence each (as classification)."""
    return classification_inputs(sentences, n, seed)


def zero_shot_inputs(sentences: Sequence[str], n: int, seed: int = 0) -> list[dict[str, Any]]:
    """Single texts, one real sentence each; the labels come as the job's ``candidate_labels`` parameter."""
    return classification_inputs(sentences, n, seed)


def rerank_inputs(
    sentences: Sequence[str], n: int, seed: int = 0, documents: int = RERANK_DOCUMENTS
) -> list[dict[str, Any]]:
    """``n`` queries, each with ``documents`` distinct sentences to rank: one sentence's first 3 to 8 words are the
    query, and that sentence is among the documents at a random place (the others are drawn at random)."""
    if len(sentences) < documents:
        raise ValueError(f"{len(sentences)} sentences, fewer than the {documents} documents of a query")
    rng = random.Random(seed)
    out: list[dict[str, Any]] = []
    for _ in range(n):
        docs = rng.sample(list(sentences), documents)
        words = rng.choice(docs).rstrip(".!?").split()
        out.append({"query": " ".join(words[: rng.randint(3, 8)]), "documents": docs})
    return out


def scale_rows(sentences: Sequence[str], n: int) -> list[dict[str, Any]]:
    """``n`` classification lines with ids, cycling through the corpus (for the submission/export scale runs)."""
    m = len(sentences)
    return [{"text": sentences[i % m], "id": f"r{i}"} for i in range(n)]
