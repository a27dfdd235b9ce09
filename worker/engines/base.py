"""The engine interface and the result of one item."""

from __future__ import annotations

import json
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from typing import Any, ClassVar, Generic, TypeVar, cast

import numpy as np

from inferq import metrics
from inferq.errors import InferenceError, InferqError
from inferq.states import ItemState
from inferq.store.chunks import OUTCOME_COLUMNS, RESULT_COLUMNS
from inferq.task_specs import TaskName, TaskParams, read_params
from worker.engines.batching import (
    CPU_BATCH_COST_TOKENS,
    BatchOutputs,
    Features,
    RunOutputs,
    plan_batches,
    run_batches,
)
from worker.loaded import LoadedModel
from worker.stages import StageClock

# torch is imported inside the methods that use it: the worker's prefork parent imports this module (through the
# model cache and the runner) and must stay free of torch (tests/worker/test_app.py); the task engines' own
# modules load with a model and import it at the top.

#: Forward passes on a CPU, one at a time in a process: torch's intra-op threads already take every core this
#: process may use (`worker.threads.torch_threads`), and two forwards at once (``--pool threads`` on a CPU) would
#: oversubscribe them, their OpenMP threads spinning at barriers while a sibling is descheduled. Serialised, one
#: chunk's forward runs on every core while the other pool threads claim, read, tokenize, postprocess and write.
#: An accelerator needs no lock: its own queue runs one kernel stream after another, and a thread that launches
#: while another's micro-batches still run keeps the device fed between chunks.
_CPU_FORWARDS = threading.Lock()

#: Characters of an error's message stored on its item: enough for an exception's first lines, while a huge
#: message (an input echoed back) does not bloat every failed row.
ERROR_MESSAGE_CHARS = 2000


class Outcome:
    """One item's result (or error), with its top result in typed columns for SQL queries.

    An engine that serialises a whole chunk's results in one pass (`worker.engines.columnar`) gives each item its
    ``result_text`` alone: ``result`` is then read from that text only when asked for (a parity test, the SQLite
    write), never on PostgreSQL's write path, which stores the text as it is. Written out rather than a dataclass
    for that property; slotted, one being made for every item of every chunk."""

    __slots__ = (
        "_result",
        "answer",
        "end_char",
        "entity_count",
        "error",
        "label",
        "result_text",
        "score",
        "start_char",
        "vector",
    )

    def __init__(
        self,
        result: Any = None,
        error: InferqError | None = None,
        label: str | None = None,
        score: float | None = None,
        answer: str | None = None,
        start_char: int | None = None,
        end_char: int | None = None,
        entity_count: int | None = None,
        vector: bytes | None = None,
        result_text: str | None = None,
    ) -> None:
        #: The result as JSON (see `inferq.results`); for vector tasks, what describes the vectors.
        self._result = result
        self.error = error
        self.label = label
        self.score = score
        self.answer = answer
        self.start_char = start_char
        self.end_char = end_char
        self.entity_count = entity_count
        #: Vector tasks: the vectors' bytes (little-endian, the dtype the result names), row after row.
        self.vector = vector
        #: ``result`` as the write stores it (`inferq.store.chunks.result_json`), where the engine serialised every
        #: item's in one pass; ``None``: the write serialises ``result``.
        self.result_text = result_text

    @property
    def result(self) -> Any:
        """The result as JSON values: as given, else read from ``result_text`` (once)."""
        result = self._result
        if result is None and self.result_text is not None:
            result = self._result = json.loads(self.result_text)
        return result

    @result.setter
    def result(self, value: Any) -> None:
        self._result = value

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Outcome):
            return NotImplemented
        return self.error is other.error and self.columns() == other.columns()

    __hash__ = None  # type: ignore[assignment]  # mutable, as the dataclass it replaced

    def __repr__(self) -> str:
        if self.error is not None:
            return f"Outcome(error={self.error!r})"
        return f"Outcome(result={self.result!r}, label={self.label!r}, score={self.score!r})"

    @property
    def ok(self) -> bool:
        return self.error is None

    @classmethod
    def failure(cls, error: InferqError) -> Outcome:
        return cls(error=error)

    def columns(self) -> dict[str, Any]:
        """The item's columns this outcome sets: its state, result and top-result columns, or error."""
        columns = dict(zip(OUTCOME_COLUMNS, self.values(), strict=True))
        if self.error is None:
            columns["result"] = self.result
        return columns

    def values(self) -> tuple[Any, ...]:
        """`columns`' values, in `OUTCOME_COLUMNS` order; the result as given (``None`` where only its
        ``result_text`` was: the write stores that text)."""
        error = self.error
        if error is None:
            # Spelled out in `RESULT_COLUMNS` order (a generator of getattr cost more than the rest of a row's write).
            return (
                ItemState.SUCCEEDED,
                self._result,
                self.label,
                self.score,
                self.answer,
                self.start_char,
                self.end_char,
                self.entity_count,
                self.vector,
                None,
                None,
            )
        return (
            ItemState.FAILED,
            None,
            *(None for _ in RESULT_COLUMNS),
            error.code,
            error.message[:ERROR_MESSAGE_CHARS],
        )


P = TypeVar("P", bound=TaskParams)


class Engine(ABC, Generic[P]):
    """``run(inputs, params)``: preprocess every input, forward the features in micro-batches, postprocess.

    Subclasses implement `preprocess`, `forward` and `postprocess`, which receive the job's typed parameters
    (`inferq.task_specs.TaskParams`, validated once when the chunk was claimed). ``forward`` is the hot path: tensor
    work only, on tensors already on the device, under ``torch.inference_mode`` (set up here, not there)."""

    task: ClassVar[TaskName]
    #: The transformers auto class the model cache loads the model with (``AutoModelForSequenceClassification`` …).
    auto_model: ClassVar[str]
    #: The auto class must find its head in the checkpoint: a checkpoint without one (a bare encoder for a
    #: classification task) is refused at load instead of running a randomly initialised head.
    needs_head: ClassVar[bool] = True
    #: The engine reads only the head's output on the first token (a sequence-classification head): the model's
    #: last layer may then run for that token alone (`worker.backends.first_token`).
    reads_first_token: ClassVar[bool] = False

    @property
    def forwards_one_at_a_time(self) -> bool:
        """Whether this engine's forwards take `_CPU_FORWARDS` (on a CPU), so that pool threads never run two at
        once."""
        return bool(self.device.type == "cpu")

    def __init__(self, loaded: LoadedModel) -> None:
        self.loaded = loaded
        self.model = loaded.model
        self.tokenizer = loaded.tokenizer
        self.config = loaded.model.config
        self.device = loaded.device
        pad_id = self.tokenizer.pad_token_id
        self.pad_id = int(pad_id) if pad_id is not None else 0
        self._accepts_token_types = "token_type_ids" in getattr(self.tokenizer, "model_input_names", ())
        # Pool threads (``--pool threads``) share the engine: a fast tokenizer's Rust object must not be called
        # from two threads at once (a call that changes its truncation would fail with "Already borrowed").
        self._preprocess_lock = threading.Lock()

    # -- the three steps -------------------------------------------------------------------------------

    @abstractmethod
    def preprocess(self, inputs: Sequence[dict[str, Any]], params: P) -> Features:
        """Tokenize every input (unpadded) into features."""

    def forward(self, batch: dict[str, Any], params: P) -> dict[str, Any]:
        """Run the model on one padded batch (tensors on the device); return its outputs as tensors still on the
        device (`to_host` brings them back, after the next micro-batch has been launched). By default the head's
        ``logits``, as float32 (what classification, token classification, rerank and zero-shot read)."""
        return {"logits": self.model(**batch).logits.float()}

    def to_host(self, outputs: dict[str, Any]) -> BatchOutputs:
        """`forward`'s outputs as numpy arrays on the CPU: on an accelerator this waits for the micro-batch."""
        return {k: v.cpu().numpy() if hasattr(v, "cpu") else v for k, v in outputs.items()}

    @abstractmethod
    def postprocess(
        self,
        inputs: Sequence[dict[str, Any]],
        features: Features,
        outputs: RunOutputs,
        params: P,
    ) -> list[Outcome]:
        """Turn the outputs into one `Outcome` per input, in input order."""

    # -- the driver ------------------------------------------------------------------------------------

    def run(
        self,
        inputs: Sequence[dict[str, Any]],
        params: P | dict[str, Any],
        *,
        should_stop: Callable[[], bool] = lambda: False,
        clock: StageClock | None = None,
    ) -> list[Outcome | None]:
        """One outcome per input, in order; ``None`` for an input whose features did not run because
        ``should_stop`` said so between micro-batches. ``params`` as typed parameters, or as stored (a dict,
        read here). ``clock`` takes the time of the tokenize, forward and postprocess stages."""
        import torch

        recorder = metrics.active()
        if isinstance(params, dict):
            params = cast(P, read_params(self.task, params))
        with self._preprocess_lock:
            features = self.preprocess(inputs, params)
        plan = self.plan(features)
        if clock is not None:
            clock.lap("tokenize")
        with _CPU_FORWARDS if self.forwards_one_at_a_time else nullcontext(), torch.inference_mode():
            if clock is not None:
                clock.skip()  # the wait for another thread's forward lands in ``other``

            def one_batch(rows: np.ndarray) -> dict[str, Any]:
                return self.forward(self.collate(features, rows), params)

            lanes = self.lanes
            if lanes > 1:
                pool = self.model.lane_pool

                def in_lane(rows: np.ndarray) -> dict[str, Any]:
                    with torch.inference_mode():  # thread-local: each lane's own
                        return one_batch(rows)

                def submit(rows: np.ndarray) -> Any:
                    return pool.submit(in_lane, rows)

                def outcome(launched: Any) -> BatchOutputs:
                    return self.to_host(launched.result())

                start: Callable[[np.ndarray], Any] = submit
                finish: Callable[[Any], BatchOutputs] = outcome
            else:
                start, finish = one_batch, self.to_host
            launch, collect = (
                (start, finish)
                if recorder is None
                else recorder.timed_forward(self.task, self.loaded.name, start, finish)
            )
            outputs = run_batches(
                plan,
                launch,
                collect=collect,
                is_oom=_is_oom,
                should_stop=should_stop,
                n_features=len(features),
                depth=lanes,
            )
            if clock is not None:
                clock.lap("forward")  # before the lock goes: the next thread's forward starts after this one ends
        # Postprocess reads what ran. Where there were features and none ran (every one failed, or a stop before the
        # first micro-batch) there is nothing to read, and each item's failure or absence is set below; where there
        # were none at all (parameters no input can run with), postprocess says why for each item.
        none_ran = len(features) > 0 and not outputs.batches
        results: list[Outcome | None] = (
            [None] * len(inputs) if none_ran else list(self.postprocess(inputs, features, outputs, params))
        )
        if recorder is not None:
            recorder.micro_batches_ran(self.task, self.loaded.name, features.lengths, outputs.batches)
        # An item any of whose features failed gets the error, whatever postprocess made of the rest.
        for f, exc in outputs.failed.items():
            item = int(features.item_of[f])
            results[item] = Outcome.failure(InferenceError(f"{type(exc).__name__}: {exc}"))
        # An item any of whose features did not run (stopped between micro-batches) has no outcome yet.
        ran = np.zeros(len(features), dtype=bool)
        for rows, _ in outputs.batches:
            ran[rows] = True
        ran[list(outputs.failed)] = True
        for item in np.unique(features.item_of[~ran]).tolist():
            results[item] = None
        if clock is not None:
            clock.lap("postprocess")
        return results

    @property
    def lanes(self) -> int:
        """Micro-batches run at once: the model's ``lanes`` where it has them (`worker.backends.ct2`'s classifier
        on a CPU: one thread each, on its ``lane_pool``), else 1, one after another in the calling thread."""
        return max(1, int(getattr(self.model, "lanes", 1))) if self.device.type == "cpu" else 1

    def plan(self, features: Features) -> list[np.ndarray]:
        """The micro-batches: within the token budget; on a CPU also cut where padding would cost more than
        another forward pass (`CPU_BATCH_COST_TOKENS`), and into at least one per lane (`lanes`) where there are
        enough features, so that a chunk of a few short texts keeps every lane busy instead of one."""
        cost = CPU_BATCH_COST_TOKENS if self.device.type == "cpu" else None
        return plan_batches(
            features.lengths, self.loaded.max_batch_tokens, self.loaded.max_batch_size, cost, lanes=self.lanes
        )

    def collate(self, features: Features, rows: np.ndarray) -> dict[str, Any]:
        """Pad the features ``rows`` into a batch of tensors on the device."""
        import torch

        ids, mask = features.packed_ids.pad(rows, self.pad_id)
        batch: dict[str, Any] = {
            "input_ids": torch.from_numpy(ids),
            "attention_mask": torch.from_numpy(mask),
        }
        packed_types = features.packed_token_types if self._accepts_token_types else None
        if packed_types is not None:
            types, _ = packed_types.pad(rows, 0)
            batch["token_type_ids"] = torch.from_numpy(types)
        non_blocking = self.device.type == "cuda"
        return {k: v.pin_memory().to(self.device, non_blocking=True) if non_blocking else v for k, v in batch.items()}

    def tokenize(self, *texts: list[str] | None, **kwargs: Any) -> Any:
        """Tokenize without padding, truncated to the model's maximum length (as ``truncation=True`` does)."""
        kwargs.setdefault("truncation", True)
        kwargs.setdefault("max_length", self.loaded.max_length)
        return self.tokenizer(
            *texts,
            padding=False,
            return_attention_mask=False,
            return_token_type_ids=self._accepts_token_types,
            **kwargs,
        )


def _is_oom(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    shifted = np.exp(x - x.max(axis=axis, keepdims=True))
    return shifted / shifted.sum(axis=axis, keepdims=True)


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))
