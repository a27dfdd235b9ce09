"""Embedding vectors, byte for byte: decoding what the worker stores, and the byte formats of the NPY export.

Stored (`inferq.schema.Item`): ``result`` is ``{"dim": d, "dtype": "float32" | "float16"}``, with
``overflow=windows`` also ``"windows": [{"start": s, "end": e}, …]``; ``vector`` holds the vectors as
little-endian ``dtype`` values, one vector after another: one vector, or one per window in window order.

Exported (`inferq.results`, what `Client.results` rows and JSONL/CSV exports carry): the stored result with each
vector put in: ``{"dim", "dtype", "embedding": [...]}``, or ``{"dim", "dtype", "windows": [{"start", "end",
"embedding": [...]}, …]}``. The numbers are Python floats equal to the stored values: float32 exactly, float16
widened (exactly: every float16 is a float32, every float32 a float). JSON writes them as ``repr(float(x))``
(Python's shortest text for the double, e.g. ``0.10000000149011612`` for float32 ``0.1``): longer than the
shortest float32 text, but any JSON reader gets the same double, and float32 of it is the stored value.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

#: Stored dtypes, little-endian.
DTYPES: dict[str, np.dtype[Any]] = {"float32": np.dtype("<f4"), "float16": np.dtype("<f2")}
FLOAT32 = DTYPES["float32"]


def dtype_of(name: str) -> np.dtype[Any]:
    try:
        return DTYPES[name]
    except KeyError:
        raise ValueError(f"unknown vector dtype {name!r} (known: {', '.join(DTYPES)})") from None


def vector_count(stored: Mapping[str, Any]) -> int:
    """How many vectors an item's stored result describes: one per window, else one."""
    windows = stored.get("windows")
    return 1 if windows is None else len(windows)


def decode(stored: Mapping[str, Any], blob: bytes) -> npt.NDArray[np.float32]:
    """An item's vectors as an ``(n, dim)`` float32 matrix (n: 1, or the number of windows). Raises ValueError when
    the bytes do not hold what the stored result describes."""
    dim = int(stored["dim"])
    dtype = dtype_of(stored["dtype"])
    n = vector_count(stored)
    if len(blob) != n * dim * dtype.itemsize:
        raise ValueError(
            f"stored vector has {len(blob)} bytes; {n} × {dim} {stored['dtype']} values take {n * dim * dtype.itemsize}"
        )
    vectors = np.frombuffer(blob, dtype).reshape(n, dim)
    return vectors if dtype == FLOAT32 else vectors.astype(FLOAT32)


def exported(stored: Any, blob: bytes | None) -> Any:
    """The exported result of an item whose stored result is ``stored`` and vector bytes ``blob``: the vectors put
    in as lists of floats. Without bytes (no result, or a result written with its vectors inline) ``stored`` is
    returned as it is."""
    if blob is None or not isinstance(stored, Mapping):
        return stored
    vectors = decode(stored, blob).tolist()  # Python floats, each the float32 value exactly
    windows = stored.get("windows")
    if windows is None:
        return {**stored, "embedding": vectors[0]}
    return {
        **{k: v for k, v in stored.items() if k != "windows"},
        "windows": [{**w, "embedding": v} for w, v in zip(windows, vectors, strict=True)],
    }


def as_float32(blob: bytes, dtype: np.dtype[Any]) -> bytes:
    """Stored bytes as little-endian float32 bytes: float32 as they are (no copy), float16 widened."""
    if dtype == FLOAT32:
        return blob
    return np.frombuffer(blob, dtype).astype(FLOAT32).tobytes()


# -- NPY -------------------------------------------------------------------------------------------------------------

#: The NPY header's size, magic and padding included: room for any ``(rows, dim)``, so that the header written
#: before the rows can be rewritten in place with the final row count.
NPY_HEADER_BYTES = 128


def npy_header(rows: int, dim: int) -> bytes:
    """An NPY format 1.0 header for a C-order ``(rows, dim)`` little-endian float32 matrix, `NPY_HEADER_BYTES`
    long (a multiple of 64, as the format asks, so the data is aligned)."""
    text = f"{{'descr': '<f4', 'fortran_order': False, 'shape': ({rows:d}, {dim:d}), }}"
    body = text.ljust(NPY_HEADER_BYTES - 10 - 1) + "\n"
    if len(body) != NPY_HEADER_BYTES - 10:
        raise ValueError(f"shape ({rows}, {dim}) does not fit an NPY header of {NPY_HEADER_BYTES} bytes")
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(body)) + body.encode("latin-1")


# -- PostgreSQL's binary COPY ----------------------------------------------------------------------------------------

#: The binary COPY signature, flags and header extension length (zero).
COPY_SIGNATURE = b"PGCOPY\n\xff\r\n\x00"
_COPY_HEADER = struct.Struct(">11sii")
#: A row of (int4 index, bytea vector): field count, the index's length and value, the vector's length.
_ROW_HEAD = struct.Struct(">hiii")


class CopyVectors:
    """Reads the rows of ``COPY (SELECT index, vector …) TO STDOUT (FORMAT binary)`` from the stream's blocks,
    however the blocks split them, into (indices, float32 bytes) batches.

    ``row_bytes``: the length of every vector when each item has one (no windows): then a batch is cut from the
    stream with numpy, without a Python step per row. Otherwise (``None``: lengths vary) row by row."""

    def __init__(self, dtype: np.dtype[Any], row_bytes: int | None) -> None:
        self.dtype = dtype
        self.row_bytes = row_bytes
        self._rest = b""
        self._header = True
        self.done = False

    def feed(self, blocks: Sequence[bytes | memoryview]) -> tuple[npt.NDArray[np.int64], list[int], bytes]:
        """Parse the rows that ``blocks`` (the stream's next blocks) complete: their indices, each one's vector
        length in bytes as stored, and their vectors as float32 bytes, one after another."""
        buf = b"".join([self._rest, *blocks])
        pos = 0
        if self._header:
            if len(buf) < _COPY_HEADER.size:
                self._rest = buf
                return _NO_INDICES, [], b""
            signature, _flags, extension = _COPY_HEADER.unpack_from(buf)
            if signature != COPY_SIGNATURE:
                raise ValueError("not a binary COPY stream")
            pos = _COPY_HEADER.size + extension
            self._header = False
        if self.row_bytes is not None:
            indices, lengths, data, pos = self._fixed(buf, pos, self.row_bytes)
        else:
            indices, lengths, data, pos = self._variable(buf, pos)
        if len(buf) - pos >= 2 and buf[pos : pos + 2] == b"\xff\xff":
            self.done = True
            pos += 2
        self._rest = buf[pos:]
        return indices, lengths, as_float32(data, self.dtype)

    def finish(self) -> None:
        if not self.done or self._rest:
            raise ValueError("binary COPY stream ended early or with trailing bytes")

    @staticmethod
    def _fixed(buf: bytes, pos: int, row_bytes: int) -> tuple[npt.NDArray[np.int64], list[int], bytes, int]:
        stride = _ROW_HEAD.size + row_bytes
        k = (len(buf) - pos) // stride
        rows = np.frombuffer(buf, np.uint8, k * stride, pos).reshape(k, stride)
        heads = rows[:, : _ROW_HEAD.size]
        expected = np.frombuffer(_ROW_HEAD.pack(2, 4, 0, row_bytes), np.uint8)
        # Every row: 2 fields, a 4-byte index, a vector of row_bytes (the index's own bytes not compared).
        same = heads == expected
        same[:, 6:10] = True
        if not same.all():
            bad = int(np.argmin(same.all(axis=1)))
            _, _, index, length = _ROW_HEAD.unpack_from(buf, pos + bad * stride)
            raise ValueError(f"item {index}: vector of {length} bytes where every item's has {row_bytes}")
        indices = rows[:, 6:10].copy().view(">i4").ravel().astype(np.int64)
        data = rows[:, _ROW_HEAD.size :].tobytes()
        return indices, [row_bytes] * k, data, pos + k * stride

    @staticmethod
    def _variable(buf: bytes, pos: int) -> tuple[npt.NDArray[np.int64], list[int], bytes, int]:
        indices: list[int] = []
        lengths: list[int] = []
        parts: list[memoryview] = []
        view = memoryview(buf)
        end = len(buf)
        unpack = _ROW_HEAD.unpack_from
        while end - pos >= _ROW_HEAD.size:
            count, _, index, length = unpack(buf, pos)
            if count != 2:
                break  # the trailer (-1)
            start = pos + _ROW_HEAD.size
            if length < 0:
                raise ValueError(f"item {index}: NULL vector in a COPY of stored vectors")
            if end - start < length:
                break
            indices.append(index)
            lengths.append(length)
            parts.append(view[start : start + length])
            pos = start + length
        return np.asarray(indices, np.int64), lengths, b"".join(parts), pos


_NO_INDICES: npt.NDArray[np.int64] = np.zeros(0, np.int64)
