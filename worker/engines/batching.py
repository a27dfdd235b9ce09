"""The batching core shared by every task: length-sorted micro-batches under a token budget, padding, and
running a forward function over them with failures isolated to the items that cause them."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


@dataclass
class Features:
    """Token sequences for the model, one per *feature*; several features may belong to one item
    (a long QA context split into windows). ``item_of[f]`` is the item index of feature ``f``."""

    input_ids: list[list[int]]
    item_of: np.ndarray
    token_type_ids: list[list[int]] | None = None
    #: Task-specific per-feature data (offsets, masks …), kept for postprocess.
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.lengths = np.fromiter((len(s) for s in self.input_ids), dtype=np.int64, count=len(self.input_ids))

    def __len__(self) -> int:
        return len(self.input_ids)


def plan_batches(lengths: np.ndarray, max_tokens: int, max_size: int) -> list[np.ndarray]:
    """Split feature indices into micro-batches: longest first, each holding at most ``max_size`` sequences and
    at most ``max_tokens`` padded tokens (batch size × its longest sequence). A sequence longer than the budget
    gets a batch of its own."""
    order = np.argsort(-lengths, kind="stable")
    batches: list[np.ndarray] = []
    start = 0
    n = len(order)
    while start < n:
        longest = max(int(lengths[order[start]]), 1)
        size = max(1, min(max_size, max_tokens // longest))
        batches.append(order[start : start + size])
        start += size
    return batches


def pad(sequences: Sequence[Sequence[int]], rows: np.ndarray, pad_value: int) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad ``sequences[rows]`` into a ``[len(rows), longest]`` array; also return the attention mask."""
    lens = np.fromiter((len(sequences[r]) for r in rows), dtype=np.int64, count=len(rows))
    width = int(lens.max()) if len(lens) else 0
    out = np.full((len(rows), width), pad_value, dtype=np.int64)
    for i, r in enumerate(rows):
        out[i, : lens[i]] = sequences[r]
    mask = (np.arange(width)[None, :] < lens[:, None]).astype(np.int64)
    return out, mask


#: A batch's outputs: name → array whose first dimension is the batch.
BatchOutputs = dict[str, np.ndarray]


@dataclass
class RunOutputs:
    """What ran: per micro-batch, the feature indices and their outputs; and the features that failed."""

    batches: list[tuple[np.ndarray, BatchOutputs]]
    #: feature index → the exception its forward pass raised (after the batch was split down to it alone).
    failed: dict[int, BaseException]
    n_features: int

    def stacked(self, name: str) -> np.ndarray:
        """A fixed-shape output (say, classification logits) as one array in feature order.
        Rows of failed features are zero."""
        first = next((out[name] for _, out in self.batches), None)
        if first is None:
            return np.zeros((self.n_features, 0), dtype=np.float32)
        result = np.zeros((self.n_features, *first.shape[1:]), dtype=first.dtype)
        for rows, out in self.batches:
            result[rows] = out[name]
        return result

    def rows(self, name: str) -> list[np.ndarray | None]:
        """A ragged output (per-token logits …) as one array per feature, in feature order; ``None`` where failed."""
        result: list[np.ndarray | None] = [None] * self.n_features
        for rows, out in self.batches:
            arr = out[name]
            for i, r in enumerate(rows):
                result[r] = arr[i]
        return result


class BatchTooLarge(Exception):
    """The device ran out of memory on a batch; it is split and retried."""


def run_batches(
    plan: list[np.ndarray],
    forward: Callable[[np.ndarray], BatchOutputs],
    *,
    is_oom: Callable[[BaseException], bool] = lambda e: False,
    should_stop: Callable[[], bool] = lambda: False,
    n_features: int,
) -> RunOutputs:
    """Run ``forward`` over every micro-batch of ``plan``.

    A batch whose forward pass raises is split in halves and each half retried, down to single features: one
    bad input fails alone and its neighbours still get results. Out-of-memory errors split the same way.
    ``should_stop`` is checked between micro-batches (cancellation, warm shutdown)."""
    done: list[tuple[np.ndarray, BatchOutputs]] = []
    failed: dict[int, BaseException] = {}
    pending = list(reversed(plan))
    while pending:
        if should_stop():
            break
        rows = pending.pop()
        try:
            done.append((rows, forward(rows)))
        except Exception as exc:
            if len(rows) == 1:
                log.warning("feature %d failed alone: %r", int(rows[0]), exc)
                failed[int(rows[0])] = exc
                continue
            kind = "out of memory" if is_oom(exc) else "error"
            log.warning("batch of %d failed (%s: %r); splitting it", len(rows), kind, exc)
            half = len(rows) // 2
            pending.append(rows[half:])
            pending.append(rows[:half])
    return RunOutputs(batches=done, failed=failed, n_features=n_features)
