"""A chunk's results serialised in one pass: the text the write stores (`inferq.store.chunks.result_json`), made
from the engine's arrays by one ``%`` format of the whole chunk instead of one JSON encoding of a dict an item.

What makes it exact: a Python float's ``repr`` is what ``json.dumps`` writes for a finite float, an int's ``%d`` is
its JSON, and a string's JSON is `result_json` of it (computed once a distinct string). A score that is not finite
(``NaN``, ``±inf``) is written differently by JSON (``NaN``, ``Infinity``) than by ``repr``: such a chunk is left
to the per-item serialisation (`finite`). A string's JSON has no raw line break (it is escaped), nor has any
number: the format's lines are the items.

The per-item path each engine keeps (its results as dicts, serialised by the write) is the reference the columnar
one is tested against (tests/worker/test_columnar_write.py), byte for byte."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from inferq.store.chunks import result_json


def finite(*arrays: np.ndarray) -> bool:
    """Every value of ``arrays`` is a finite number: their ``repr`` is their JSON."""
    return all(bool(np.isfinite(a).all()) for a in arrays)


def json_strings(values: Iterable[str]) -> dict[str, str]:
    """Each distinct string of ``values`` → its JSON (quoted, escaped as the write escapes it)."""
    return {v: result_json(v) for v in set(values)}


def format_items(
    entry: str, counts: Sequence[int], args: Sequence[Any], *, opening: str = "[", closing: str = "]"
) -> list[str]:
    """One text per item: ``opening``, ``counts[i]`` copies of the ``%`` format ``entry`` joined by ``", "``,
    ``closing``; ``args`` are every entry's arguments, item after item, in one flat sequence. Made by one ``%``
    format of the whole chunk (the items' formats are cached by count: one lookup an item)."""
    if not counts:
        return []
    formats: dict[int, str] = {}

    def one(count: int) -> str:
        fmt = formats.get(count)
        if fmt is None:
            fmt = formats[count] = opening + ", ".join([entry] * count) + closing
        return fmt

    whole = "\n".join([one(c) for c in counts])
    return (whole % tuple(args)).split("\n")
