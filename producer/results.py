"""What results look like to users: one `ResultRow` per item, and typed objects for each task's result.

A stored result is plain JSON, shaped as the transformers pipelines shape theirs:

=========================  ===============================================================================
classification             ``[{"label", "score"}, …]``, best first
question_answering         ``[{"answer", "score", "start", "end"}, …]``, best first
fill_mask                  one list per mask in the text, each ``[{"token", "token_str", "score", "sequence"}, …]``
token_classification       ``[{"entity" | "entity_group", "score", "word", "start", "end"[, "index"]}, …]``
=========================  ===============================================================================
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, overload

from sqlalchemy import Result, select
from sqlalchemy.orm import Session

from inferq import constants
from inferq.schema import Item
from inferq.states import ItemState
from inferq.tasks import TaskName


def item_rows(
    session: Session,
    job_id: str,
    columns: Sequence[Any],
    *,
    label: str | None = None,
    min_score: float | None = None,
    failed: bool = False,
    state: ItemState | None = None,
) -> Result[*tuple[Any, ...]]:
    """``columns`` of the job's items in input order, filtered in SQL on the typed columns as `Client.results`
    and ``inferq results`` filter them, streamed in batches of `EXPORT_FETCH_ROWS`. A Core result on the
    session's connection: the ORM's per-row loading would cost more than the rest."""
    query = select(*columns).where(Item.job_id == job_id).order_by(Item.index)
    if label is not None:
        query = query.where(Item.label == label)
    if min_score is not None:
        query = query.where(Item.score >= min_score)
    if failed:
        query = query.where(Item.state == ItemState.FAILED.value)
    if state is not None:
        query = query.where(Item.state == state.value)
    return session.connection().execute(query.execution_options(yield_per=constants.EXPORT_FETCH_ROWS))


@dataclass(frozen=True, slots=True)
class ResultRow:
    """One item of a job, as exported: its input position and id, its state, and its result or error."""

    #: 0-based position of the item in the submitted input.
    index: int
    #: The ``id`` given on the input line, if any.
    id: str | None
    #: ``succeeded``, ``failed``, ``queued`` or ``cancelled``.
    status: str
    #: The task's result (see the module's table); None unless succeeded.
    result: list[Any] | None
    #: ``{"code": …, "message": …}`` when failed, else None.
    error: dict[str, str] | None
    #: The top result, as stored in typed columns. classification: best label; fill-mask: best ``token_str``;
    #: token classification: best entity's label.
    label: str | None = None
    score: float | None = None
    #: Question answering: the best answer and its character span in the context.
    answer: str | None = None
    start: int | None = None
    end: int | None = None
    #: Token classification: how many entities were found.
    entity_count: int | None = None
    #: The job's task, which says how to read ``result`` (see `typed`).
    task: TaskName | None = None

    def to_json(self) -> dict[str, Any]:
        return {"index": self.index, "id": self.id, "status": self.status, "result": self.result, "error": self.error}

    def typed(self) -> list[Any] | None:
        """The result as the task's typed objects (`ClassLabel`, `Answer`, lists of `MaskFill`, `Entity`);
        None when the item has no result."""
        if self.result is None or self.task is None:
            return None
        return parse_result(self.task, self.result)


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


@overload
def parse_result(task: Literal[TaskName.CLASSIFICATION], result: list[Any]) -> list[ClassLabel]: ...
@overload
def parse_result(task: Literal[TaskName.QUESTION_ANSWERING], result: list[Any]) -> list[Answer]: ...
@overload
def parse_result(task: Literal[TaskName.FILL_MASK], result: list[Any]) -> list[list[MaskFill]]: ...
@overload
def parse_result(task: Literal[TaskName.TOKEN_CLASSIFICATION], result: list[Any]) -> list[Entity]: ...
@overload
def parse_result(task: TaskName, result: list[Any]) -> list[Any]: ...
def parse_result(task: TaskName, result: list[Any]) -> list[Any]:
    """The stored ``result`` of a ``task`` item as typed objects. Raises ValueError if it is not shaped as expected."""
    try:
        if task is TaskName.CLASSIFICATION:
            return [ClassLabel(label=str(d["label"]), score=float(d["score"])) for d in result]
        if task is TaskName.QUESTION_ANSWERING:
            return [
                Answer(answer=str(d["answer"]), score=float(d["score"]), start=int(d["start"]), end=int(d["end"]))
                for d in result
            ]
        if task is TaskName.FILL_MASK:
            # One mask may also be stored flat, as the pipeline returns it for a text with a single mask.
            per_mask = [result] if result and all(isinstance(d, dict) for d in result) else result
            return [[_mask_fill(d) for d in fills] for fills in per_mask]
        if task is TaskName.TOKEN_CLASSIFICATION:
            return [_entity(d) for d in result]
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"malformed {task.value} result: {type(exc).__name__}: {exc}") from None
    raise ValueError(f"unknown task {task!r}")


def _mask_fill(d: dict[str, Any]) -> MaskFill:
    return MaskFill(
        token=int(d["token"]), token_str=str(d["token_str"]), score=float(d["score"]), sequence=str(d["sequence"])
    )


def _entity(d: dict[str, Any]) -> Entity:
    grouped = "entity_group" in d
    start, end, index = d.get("start"), d.get("end"), d.get("index")
    return Entity(
        entity=str(d["entity_group"] if grouped else d["entity"]),
        score=float(d["score"]),
        word=str(d["word"]),
        start=None if start is None else int(start),
        end=None if end is None else int(end),
        index=None if index is None else int(index),
        grouped=grouped,
    )
