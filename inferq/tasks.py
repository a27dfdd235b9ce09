"""Task names, their input fields and parameters, and the Celery message that carries a chunk.

Shared by the producer (which validates what it stores) and the worker (which reads it back).
"""

from __future__ import annotations

import hashlib
import json
from enum import Enum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from inferq.errors import InvalidParameter

#: The one Celery task: run one chunk of one job. Its message carries ids only: `(job_id, chunk_seq)`.
RUN_CHUNK = "inferq.run_chunk"


class TaskName(str, Enum):
    #: Sequence classification of single texts or text pairs (sentiment, paraphrase, NLI …).
    CLASSIFICATION = "classification"
    #: Extractive question answering: answer spans in a context.
    QUESTION_ANSWERING = "question_answering"
    #: Masked language modelling: top-k fillers for each mask token.
    FILL_MASK = "fill_mask"
    #: Token classification (NER): entity spans.
    TOKEN_CLASSIFICATION = "token_classification"


class Field_(BaseModel):
    """One field of an input line."""

    model_config = ConfigDict(frozen=True)

    name: str
    required: bool
    #: Text fields must be non-empty strings no longer than the configured limit.
    text: bool = True


#: The fields an input line may have, per task. ``id`` (a string or an integer) is optional everywhere.
INPUT_FIELDS: dict[TaskName, tuple[Field_, ...]] = {
    TaskName.CLASSIFICATION: (Field_(name="text", required=True), Field_(name="text_pair", required=False)),
    TaskName.QUESTION_ANSWERING: (
        Field_(name="question", required=True),
        Field_(name="context", required=True),
    ),
    TaskName.FILL_MASK: (Field_(name="text", required=True),),
    TaskName.TOKEN_CLASSIFICATION: (Field_(name="text", required=True),),
}

#: A model-independent mask placeholder for fill-mask inputs; workers replace it by the model's mask token.
MASK_PLACEHOLDER = "[[MASK]]"


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=False)


class ClassificationParams(_Params):
    #: Labels returned per item, best first; ``None`` returns every label.
    top_k: int | None = Field(1, ge=1)
    #: As in the transformers pipeline: ``default`` picks sigmoid or softmax from the model's config.
    function_to_apply: Literal["default", "sigmoid", "softmax", "none"] = "default"


class QuestionAnsweringParams(_Params):
    top_k: int = Field(1, ge=1, le=100)
    doc_stride: int = Field(128, ge=1)
    max_seq_len: int = Field(384, ge=16)
    max_question_len: int = Field(64, ge=1)
    max_answer_len: int = Field(15, ge=1)
    handle_impossible_answer: bool = False
    align_to_words: bool = True

    @model_validator(mode="after")
    def _stride_fits(self) -> QuestionAnsweringParams:
        if self.doc_stride >= self.max_seq_len:
            raise ValueError(f"doc_stride ({self.doc_stride}) must be smaller than max_seq_len ({self.max_seq_len})")
        return self


class FillMaskParams(_Params):
    top_k: int = Field(5, ge=1, le=1000)
    #: Restrict the candidates to these words (checked against the vocabulary by the worker).
    targets: list[str] | None = None

    @model_validator(mode="before")
    @classmethod
    def _one_target(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("targets"), str):
            data = {**data, "targets": [data["targets"]]}
        return data


class TokenClassificationParams(_Params):
    aggregation_strategy: Literal["none", "simple", "first", "average", "max"] = "none"
    ignore_labels: list[str] = Field(default_factory=lambda: ["O"])


PARAMS: dict[TaskName, type[_Params]] = {
    TaskName.CLASSIFICATION: ClassificationParams,
    TaskName.QUESTION_ANSWERING: QuestionAnsweringParams,
    TaskName.FILL_MASK: FillMaskParams,
    TaskName.TOKEN_CLASSIFICATION: TokenClassificationParams,
}


def validate_params(task: TaskName, raw: dict[str, Any]) -> dict[str, Any]:
    """Validate ``raw`` against the task's parameters; return them complete (defaults filled in)."""
    try:
        params = PARAMS[task].model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"]) or "params"
        msg = first["msg"]
        if first["type"] == "extra_forbidden":
            known = ", ".join(sorted(PARAMS[task].model_fields))
            msg = f"unknown parameter for {task.value} (known: {known})"
        raise InvalidParameter(f"parameter {loc}: {msg}", field=loc) from None
    return params.model_dump(mode="json")


def batch_key(task: TaskName, model: str, params: dict[str, Any]) -> str:
    """What decides whether two jobs' items may share a forward pass: the same task, model name and complete
    parameters. Stored on the job (`Job.batch_key`), so that a worker finds other jobs' queued chunks it can run
    in one batch with an indexed equality, whatever the database's JSON support."""
    canonical = json.dumps([task.value, model, params], sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def parse_task(value: str) -> TaskName:
    from inferq.errors import UnknownTask

    try:
        return TaskName(value.replace("-", "_"))
    except ValueError:
        known = ", ".join(t.value for t in TaskName)
        raise UnknownTask(f"unknown task {value!r} (known: {known})") from None
