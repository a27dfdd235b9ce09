"""The tasks inferq runs, by name: light (no pydantic), so that the settings and the CLI's options can name them
without loading the per-task table (`inferq.task_specs`, which re-exports `TaskName`)."""

from __future__ import annotations

from enum import Enum


class TaskName(str, Enum):
    #: Sequence classification of single texts or text pairs (sentiment, paraphrase, NLI …).
    CLASSIFICATION = "classification"
    #: Extractive question answering: answer spans in a context.
    QUESTION_ANSWERING = "question_answering"
    #: Masked language modelling: top-k fillers for each mask token.
    FILL_MASK = "fill_mask"
    #: Token classification (NER): entity spans.
    TOKEN_CLASSIFICATION = "token_classification"
    #: Sentence embeddings, computed as sentence-transformers computes them for the model.
    EMBEDDING = "embedding"
    #: Cross-encoder scores of (query, document) pairs, documents ranked best first.
    RERANK = "rerank"
    #: Labels chosen at submit time, scored by an NLI model (entailment of "This example is {label}.").
    ZERO_SHOT_CLASSIFICATION = "zero_shot_classification"
