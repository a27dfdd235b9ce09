"""The per-task table (`TASKS`: one `TaskSpec` per task: input fields, typed parameters with their defaults,
result parser, SQL and CSV columns) and the Celery message that carries a chunk.

Shared by the producer (which validates what it stores) and the worker (which reads it back, typed, at claim).
Adding a task is one `TaskSpec` here, its name in `inferq.task_names` (`TaskName`, imported from here too) and one
engine in `worker.engines`.
"""

from __future__ import annotations

import hashlib
import json
import re
import types
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from inferq import constants, results
from inferq.errors import InvalidParameter, MalformedValue, UnknownTask
from inferq.task_names import TaskName

#: The one Celery task: run one chunk of one job. Its message carries ids only: `(job_id, chunk_seq)`.
RUN_CHUNK = "inferq.run_chunk"

#: Send one webhook delivery (`inferq.webhooks.deliver`). Its message carries the delivery's id only; it goes to
#: `Settings.webhook_queue`.
DELIVER_WEBHOOK = "inferq.deliver_webhook"


class InputField(BaseModel):
    """One field of an input line."""

    model_config = ConfigDict(frozen=True)

    name: str
    required: bool
    #: ``text``: a non-empty string no longer than the configured limit. ``texts``: a non-empty list of such
    #: strings (at most `constants.MAX_LIST_TEXTS`); in a CSV cell, a JSON array.
    kind: Literal["text", "texts"] = "text"


#: A model-independent mask placeholder for fill-mask inputs; workers replace it by the model's mask token.
MASK_PLACEHOLDER = "[[MASK]]"

#: Most tokens a window may hold (``window_tokens``), whatever the model: well beyond any encoder's context, and
#: small enough that a mistyped value (``1e9``) is refused at submit even where the model's own maximum is not
#: known there (a hub model not on the submitting machine).
MAX_WINDOW_TOKENS = 1 << 20


#: A lone UTF-16 surrogate: JSON's ``\\ud800`` escape decodes to one, and no UTF-8 encoder takes it.
_SURROGATE = re.compile("[\ud800-\udfff]")


def unstorable(text: str) -> str | None:
    """What makes ``text`` impossible to store (a NUL character, which PostgreSQL's text refuses; a lone surrogate,
    which has no UTF-8 form), said in a few words; None for a storable text."""
    if "\x00" in text:
        return "must not contain NUL characters"
    if not text.isascii() and _SURROGATE.search(text) is not None:
        return "must not contain lone surrogates (\\ud800-\\udfff): not valid Unicode text"
    return None


def find_unstorable(value: Any, where: str) -> tuple[str, str] | None:
    """The first string in a decoded JSON value (keys too) that `unstorable` refuses: its place (``where``, then
    ``.key`` or ``[i]``) and why; None when every one is fine."""
    if isinstance(value, str):
        problem = unstorable(value)
        return (where, problem) if problem is not None else None
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(key, str) and (problem := unstorable(key)) is not None:
                return f"{where} key", problem
            found = find_unstorable(item, f"{where}.{key}")
            if found is not None:
                return found
    if isinstance(value, list):
        for i, item in enumerate(value):
            found = find_unstorable(item, f"{where}[{i}]")
            if found is not None:
                return found
    return None


def _is_int_field(annotation: Any) -> bool:
    """An ``int`` (or ``int | None``) parameter, where JSON's ``true`` must not pass for 1."""
    if annotation is int:
        return True
    if get_origin(annotation) in (Union, types.UnionType):
        members = get_args(annotation)
        return int in members and bool not in members
    return False


class TaskParams(BaseModel):
    """A task's parameters: every default written here, once. Stored complete on the job (defaults filled in)
    and read back typed by the worker when it claims a chunk."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=False)

    @field_validator("*", mode="before")
    @classmethod
    def _bool_is_not_a_count(cls, value: Any, info: ValidationInfo) -> Any:
        # Lax mode takes true as 1 (a bool is an int in Python): a count given as true is a mistake, refused.
        name = info.field_name
        if isinstance(value, bool) and name is not None and _is_int_field(cls.model_fields[name].annotation):
            raise ValueError("must be an integer, not a boolean")
        return value


class ClassificationParams(TaskParams):
    #: Labels returned per item, best first; ``None`` returns every label.
    top_k: int | None = Field(1, ge=1)
    #: As in the transformers pipeline: ``default`` picks sigmoid or softmax from the model's config.
    function_to_apply: Literal["default", "sigmoid", "softmax", "none"] = "default"


class QuestionAnsweringParams(TaskParams):
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


class FillMaskParams(TaskParams):
    top_k: int = Field(5, ge=1, le=1000)
    #: Restrict the candidates to these words (checked against the vocabulary by the worker).
    targets: list[str] | None = Field(None, max_length=constants.MAX_LIST_TEXTS)

    @model_validator(mode="before")
    @classmethod
    def _one_target(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("targets"), str):
            data = {**data, "targets": [data["targets"]]}
        return data


class TokenClassificationParams(TaskParams):
    aggregation_strategy: Literal["none", "simple", "first", "average", "max"] = "none"
    ignore_labels: list[str] = Field(default_factory=lambda: ["O"], max_length=constants.MAX_LIST_TEXTS)


class EmbeddingParams(TaskParams):
    #: Unit-length vectors. ``None``: as the model's sentence-transformers modules say (a ``Normalize`` module).
    normalize: bool | None = None
    #: Pooling of the token vectors. ``None``: as the model's ``1_Pooling/config.json`` says (mean without one).
    pooling: Literal["mean", "cls", "max", "lasttoken"] | None = None
    #: Keep the first ``dimensions`` components (Matryoshka truncation), re-normalized when normalizing.
    dimensions: int | None = Field(None, ge=1)
    #: A prefix put before every text (``"query: "``). Overrides the model's default prompt.
    prompt: str | None = None
    #: One of the prompts named in the model's ``config_sentence_transformers.json``.
    prompt_name: str | None = None
    #: How vectors are stored: float32 (exact), or float16 (half the size).
    dtype: Literal["float32", "float16"] = "float32"
    #: A text longer than the model's maximum: ``truncate`` it (as sentence-transformers does), or split it into
    #: overlapping token ``windows``, each embedded, with its character span.
    overflow: Literal["truncate", "windows"] = "truncate"
    #: Tokens per window (special tokens not counted). ``None``: as many as the model takes.
    window_tokens: int | None = Field(None, ge=1, le=MAX_WINDOW_TOKENS)
    #: Tokens two neighbouring windows share; smaller than ``window_tokens``.
    stride: int = Field(32, ge=0)

    @model_validator(mode="after")
    def _consistent(self) -> EmbeddingParams:
        if self.prompt is not None and self.prompt_name is not None:
            raise ValueError("give prompt or prompt_name, not both")
        if self.window_tokens is not None and self.overflow != "windows":
            raise ValueError("window_tokens is used with overflow=windows only")
        if self.window_tokens is not None and self.stride >= self.window_tokens:
            raise ValueError(f"stride ({self.stride}) must be smaller than window_tokens ({self.window_tokens})")
        return self


class RerankParams(TaskParams):
    #: Documents returned per line, best first; ``None`` returns all of them.
    top_k: int | None = Field(None, ge=1)
    #: Put each document's text in the result beside its index.
    return_documents: bool = False
    #: The function applied to the model's score. ``default``: as sentence-transformers' CrossEncoder applies it
    #: for that model (sigmoid for a one-label model unless its config names another).
    activation: Literal["default", "sigmoid", "none"] = "default"


class ZeroShotParams(TaskParams):
    #: Labels for every line that gives none of its own (``candidate_labels`` on a line wins). A string is split
    #: at commas, as the transformers pipeline splits it. At most `constants.MAX_LIST_TEXTS`, as on a line: each
    #: label is one more forward pass per item.
    candidate_labels: list[str] | None = Field(None, max_length=constants.MAX_LIST_TEXTS)
    #: Each label becomes the hypothesis ``hypothesis_template.format(label)``.
    hypothesis_template: str = "This example is {}."
    #: Score each label on its own (entailment against contradiction) instead of softmax over the labels.
    multi_label: bool = False

    @model_validator(mode="before")
    @classmethod
    def _split_labels(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("candidate_labels"), str):
            data = {**data, "candidate_labels": [s.strip() for s in data["candidate_labels"].split(",") if s.strip()]}
        return data

    @field_validator("hypothesis_template")
    @classmethod
    def _has_slot(cls, value: str) -> str:
        try:
            slotted = value.format("a") != value.format("b")
        except (IndexError, KeyError, ValueError):
            raise ValueError(f"{value!r} is not a template with one {{}} for the label") from None
        if not slotted:
            raise ValueError(f"{value!r} has no {{}} for the label")
        return value

    @field_validator("candidate_labels")
    @classmethod
    def _labels(cls, value: list[str] | None) -> list[str] | None:
        if value is not None:
            if not value:
                raise ValueError("must not be empty")
            if any(not x.strip() for x in value):
                raise ValueError("must be non-empty strings")
        return value


@dataclass(frozen=True)
class LineContext:
    """What a task's line check may look at besides the line: the job's parameters and the model's mask tokens."""

    params: TaskParams
    mask_tokens: tuple[str, ...] = ()


#: A line check's complaint: the field (or None for the whole line) and what is wrong.
LineProblem = tuple[str | None, str]

#: Reads one of a model's JSON files by its name in the model directory (``"config.json"``,
#: ``"modules.json"``): the decoded JSON, or None where the file is not on this machine.
ModelFiles = Callable[[str], Any]


@dataclass(frozen=True)
class TaskSpec:
    """Everything the producer side knows of a task, in one place (the worker's half is `worker.engines.ENGINES`)."""

    name: TaskName
    #: The fields an input line may have. ``id`` (a string or an integer) is optional everywhere.
    fields: tuple[InputField, ...]
    #: The parameters, with their defaults.
    params: type[TaskParams]
    #: Reads a stored (exported) result into the task's typed objects (`inferq.results`).
    parse: Callable[[Any], list[Any]]
    #: The `Item` columns the top result fills, so that ``--label`` / ``--min-score`` filter in SQL.
    top_columns: tuple[str, ...]
    #: CSV columns between ``status`` and ``error_code``: (column, `ResultRow` attribute).
    csv_columns: tuple[tuple[str, str], ...]
    #: A check of one line's fields beyond their kinds (a mask in the text, a label set somewhere …).
    check_line: Callable[[dict[str, Any], LineContext], LineProblem | None] | None = None
    #: A check of the parameters against the model's files, at submit (where the model is a local directory):
    #: given the parameters and a reader of the model's JSON files (None where absent), the bad field and why.
    check_model: Callable[[TaskParams, ModelFiles], LineProblem | None] | None = None
    #: Results carry vectors, stored as bytes in `Result.vector` (exportable as NPY).
    vectors: bool = False

    @property
    def single_text(self) -> bool:
        """Lines may be plain strings (the task needs one ``text`` and nothing else)."""
        return [f.name for f in self.fields if f.required] == ["text"]


def _check_mask(data: dict[str, Any], ctx: LineContext) -> LineProblem | None:
    masks = (MASK_PLACEHOLDER, *(t for t in ctx.mask_tokens if t))
    if any(m in data["text"] for m in masks):
        return None
    model_masks = ", ".join(repr(t) for t in ctx.mask_tokens if t and t != MASK_PLACEHOLDER)
    return "text", (
        f"no mask token: put {MASK_PLACEHOLDER} or the model's mask token"
        + (f" ({model_masks})" if model_masks else "")
        + " in the text"
    )


def _check_rerank(data: dict[str, Any], ctx: LineContext) -> LineProblem | None:
    query, pair = "query" in data or "documents" in data, "text" in data or "text_pair" in data
    if query and pair:
        return None, "give query and documents, or text and text_pair, not both"
    for a, b in (("query", "documents"), ("documents", "query"), ("text", "text_pair"), ("text_pair", "text")):
        if a in data and b not in data:
            return b, f"missing required field {b!r} (a line with {a!r} needs it)"
    if not query and not pair:
        return None, "missing fields: give query and documents, or text and text_pair"
    return None


def _check_labels(data: dict[str, Any], ctx: LineContext) -> LineProblem | None:
    if "candidate_labels" in data or getattr(ctx.params, "candidate_labels", None):
        return None
    return "candidate_labels", "no candidate labels: give them on the line or as --param candidate_labels=…"


def _check_embedding_model(params: TaskParams, files: ModelFiles) -> LineProblem | None:
    assert isinstance(params, EmbeddingParams)
    config = files("config.json") or {}
    modules = files("modules.json")
    dense = isinstance(modules, list) and any("Dense" in str(m.get("type", "")) for m in modules)
    width = next((config[k] for k in ("hidden_size", "dim", "d_model") if isinstance(config.get(k), int)), None)
    if params.dimensions is not None and width is not None and not dense and params.dimensions > width:
        return "dimensions", f"{params.dimensions} is more than the model's {width} dimensions"
    if params.window_tokens is not None:
        limit = _model_max_tokens(config, files)
        if limit is not None and params.window_tokens > limit:
            return "window_tokens", f"{params.window_tokens} is more than the model's maximum of {limit} tokens"
    if params.prompt_name is not None:
        prompts = (files("config_sentence_transformers.json") or {}).get("prompts") or {}
        if params.prompt_name not in prompts:
            known = ", ".join(sorted(prompts)) or "none"
            return "prompt_name", f"the model has no prompt named {params.prompt_name!r} (its prompts: {known})"
    return None


def _model_max_tokens(config: dict[str, Any], files: ModelFiles) -> int | None:
    """The most tokens the model takes, as far as its JSON files tell (None where none does): the smallest of its
    sentence-transformers ``max_seq_length``, its tokenizer's ``model_max_length`` (transformers writes a huge
    number for "none") and its position table. The worker's check counts the special and prompt tokens too."""
    found = [
        value
        for value in (
            _object(files("sentence_bert_config.json")).get("max_seq_length"),
            _object(files("tokenizer_config.json")).get("model_max_length"),
            config.get("max_position_embeddings"),
        )
        if isinstance(value, int) and not isinstance(value, bool) and 0 < value < MAX_WINDOW_TOKENS
    ]
    return min(found) if found else None


def _object(content: Any) -> dict[str, Any]:
    return content if isinstance(content, dict) else {}


def _check_nli_model(params: TaskParams, files: ModelFiles) -> LineProblem | None:
    config = files("config.json")
    if config is None:
        return None
    # As transformers reads a config: label2id, else id2label, else its default two labels.
    labels = [str(k) for k in config.get("label2id") or {}] or [
        str(v) for v in (config.get("id2label") or {"0": "LABEL_0", "1": "LABEL_1"}).values()
    ]
    if any(label.lower().startswith("entail") for label in labels):
        return None
    return "model", (
        f"not an NLI model: zero-shot classification needs an entailment label, and its labels are {', '.join(labels)}"
    )


_TEXT = InputField(name="text", required=True)

TASKS: dict[TaskName, TaskSpec] = {
    spec.name: spec
    for spec in (
        TaskSpec(
            name=TaskName.CLASSIFICATION,
            fields=(_TEXT, InputField(name="text_pair", required=False)),
            params=ClassificationParams,
            parse=results.parse_labels,
            top_columns=("label", "score"),
            csv_columns=(("label", "label"), ("score", "score")),
        ),
        TaskSpec(
            name=TaskName.QUESTION_ANSWERING,
            fields=(InputField(name="question", required=True), InputField(name="context", required=True)),
            params=QuestionAnsweringParams,
            parse=results.parse_answers,
            top_columns=("answer", "score", "start_char", "end_char"),
            csv_columns=(("answer", "answer"), ("score", "score"), ("start", "start"), ("end", "end")),
        ),
        TaskSpec(
            name=TaskName.FILL_MASK,
            fields=(_TEXT,),
            params=FillMaskParams,
            parse=results.parse_mask_fills,
            top_columns=("label", "score"),
            csv_columns=(("token_str", "label"), ("score", "score")),
            check_line=_check_mask,
        ),
        TaskSpec(
            name=TaskName.TOKEN_CLASSIFICATION,
            fields=(_TEXT,),
            params=TokenClassificationParams,
            parse=results.parse_entities,
            top_columns=("entity_count", "label", "score"),
            csv_columns=(("entity_count", "entity_count"), ("label", "label"), ("score", "score")),
        ),
        TaskSpec(
            name=TaskName.EMBEDDING,
            fields=(_TEXT,),
            params=EmbeddingParams,
            parse=results.parse_embeddings,
            top_columns=(),
            csv_columns=(),
            check_model=_check_embedding_model,
            vectors=True,
        ),
        TaskSpec(
            name=TaskName.RERANK,
            fields=(
                InputField(name="query", required=False),
                InputField(name="documents", required=False, kind="texts"),
                InputField(name="text", required=False),
                InputField(name="text_pair", required=False),
            ),
            params=RerankParams,
            parse=results.parse_ranking,
            top_columns=("score",),
            csv_columns=(("score", "score"),),
            check_line=_check_rerank,
        ),
        TaskSpec(
            name=TaskName.ZERO_SHOT_CLASSIFICATION,
            fields=(_TEXT, InputField(name="candidate_labels", required=False, kind="texts")),
            params=ZeroShotParams,
            parse=results.parse_labels,
            top_columns=("label", "score"),
            csv_columns=(("label", "label"), ("score", "score")),
            check_line=_check_labels,
            check_model=_check_nli_model,
        ),
    )
}


def validate_params(task: TaskName, raw: dict[str, Any]) -> dict[str, Any]:
    """Validate ``raw`` against the task's parameters; return them complete (defaults filled in)."""
    for name, value in raw.items():
        bad = find_unstorable({name: value}, "params")
        if bad is not None:
            where = bad[0].removeprefix("params.")
            raise MalformedValue(f"parameter {where}: {bad[1]}", field=where)
    try:
        params = TASKS[task].params.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"]) or "params"
        msg = first["msg"].removeprefix("Value error, ")
        if first["type"] == "extra_forbidden":
            known = ", ".join(sorted(TASKS[task].params.model_fields))
            msg = f"unknown parameter for {task.value} (known: {known})"
        raise InvalidParameter(f"parameter {loc}: {msg}", field=loc) from None
    return params.model_dump(mode="json")


def read_params(task: TaskName, stored: dict[str, Any]) -> TaskParams:
    """A job's stored parameters, typed: what engines receive (read once, when a chunk is claimed)."""
    return TASKS[task].params.model_validate(stored)


def batch_key(task: TaskName, model: str, params: dict[str, Any]) -> str:
    """What decides whether two jobs' items may share a forward pass: the same task, model name and complete
    parameters. Stored on the job (`Job.batch_key`), so that a worker finds other jobs' queued chunks it can run
    in one batch with an indexed equality, whatever the database's JSON support."""
    canonical = json.dumps([task.value, model, params], sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def parse_task(value: str) -> TaskName:
    try:
        return TaskName(value.replace("-", "_"))
    except ValueError:
        known = ", ".join(t.value for t in TaskName)
        raise UnknownTask(f"unknown task {value!r} (known: {known})") from None
