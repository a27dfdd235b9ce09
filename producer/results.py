"""What results look like to users: one `ResultRow` per item, and typed objects for each task's result
(`inferq.results`, where each task's result shape is listed)."""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, overload

from inferq.results import Answer, ClassLabel, Embedding, Entity, MaskFill, RankedDocument
from inferq.store.results import ALL_ITEMS, TOP_COLUMNS, ResultFilter
from inferq.task_specs import TASKS, TaskName

if TYPE_CHECKING:
    from pydantic import TypeAdapter

__all__ = [
    "ALL_ITEMS",
    "Answer",
    "ClassLabel",
    "Embedding",
    "Entity",
    "MaskFill",
    "RankedDocument",
    "ResultFilter",
    "ResultRow",
    "parse_result",
]


@dataclass(frozen=True, slots=True)
class ResultRow:
    """One item of a job, as exported: its input position and id, its state, and its result or error."""

    #: 0-based position of the item in the submitted input.
    index: int
    #: The ``id`` given on the input line, if any.
    id: str | None
    #: ``succeeded``, ``failed``, ``queued`` or ``cancelled``.
    status: str
    #: The task's result (see `inferq.results`); None unless succeeded.
    result: Any
    #: ``{"code": …, "message": …}`` when failed, else None.
    error: dict[str, str] | None
    #: The top result, as stored in typed columns. classification, zero-shot: best label; fill-mask: best
    #: ``token_str``; token classification: best entity's label; rerank: the best document's score.
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

    def to_json(self, *, top: bool = False) -> dict[str, Any]:
        """The row as a line of the JSONL results: ``index``, ``id``, ``status``, ``result``, ``error``; with
        ``top``, the top result's typed columns too (`inferq.store.results.TOP_COLUMNS`): a line of the HTTP API's
        ``top=true`` results, which `from_top_json` reads back."""
        line = {"index": self.index, "id": self.id, "status": self.status, "result": self.result, "error": self.error}
        if top:
            for name in TOP_COLUMNS:
                line[name] = getattr(self, name)
        return line

    @classmethod
    def from_top_json(cls, text: str | bytes, task: TaskName) -> ResultRow:
        """The row of a line of the HTTP API's ``top=true`` results (`to_json`), each field checked against its
        type here (`pydantic.ValidationError` otherwise), of ``task``'s job."""
        return dataclasses.replace(_line_reader().validate_json(text), task=task)

    def typed(self) -> list[Any] | None:
        """The result as the task's typed objects (`ClassLabel`, `Answer`, lists of `MaskFill`, `Entity`);
        None when the item has no result."""
        if self.result is None or self.task is None:
            return None
        return parse_result(self.task, self.result)


@functools.cache
def _line_reader() -> TypeAdapter[ResultRow]:
    """`ResultRow`'s fields as pydantic checks a JSON line against them (made on first use)."""
    from pydantic import TypeAdapter

    return TypeAdapter(ResultRow)


@overload
def parse_result(task: Literal[TaskName.CLASSIFICATION], result: Any) -> list[ClassLabel]: ...
@overload
def parse_result(task: Literal[TaskName.QUESTION_ANSWERING], result: Any) -> list[Answer]: ...
@overload
def parse_result(task: Literal[TaskName.FILL_MASK], result: Any) -> list[list[MaskFill]]: ...
@overload
def parse_result(task: Literal[TaskName.TOKEN_CLASSIFICATION], result: Any) -> list[Entity]: ...
@overload
def parse_result(task: Literal[TaskName.EMBEDDING], result: Any) -> list[Embedding]: ...
@overload
def parse_result(task: Literal[TaskName.RERANK], result: Any) -> list[RankedDocument]: ...
@overload
def parse_result(task: Literal[TaskName.ZERO_SHOT_CLASSIFICATION], result: Any) -> list[ClassLabel]: ...
@overload
def parse_result(task: TaskName, result: Any) -> list[Any]: ...
def parse_result(task: TaskName, result: Any) -> list[Any]:
    """The ``result`` of a ``task`` item, as exported, as typed objects (`TaskSpec.parse`). Raises ValueError if
    it is not shaped as expected."""
    spec = TASKS.get(task)
    if spec is None:
        raise ValueError(f"unknown task {task!r}")
    try:
        return spec.parse(result)
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"malformed {task.value} result: {type(exc).__name__}: {exc}") from None
