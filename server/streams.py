"""Streaming an export over HTTP: the exports of `producer.export` write to a text file; here one runs in a thread
of its own, writing into a small queue of byte chunks that the response reads as it sends them. Memory stays at a
few chunks whatever the job's size; a client that goes away stops the export at its next write."""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio.to_thread

log = logging.getLogger("inferq.server")

#: Bytes gathered before a chunk goes to the response: large enough that the queue's cost is noise per row.
CHUNK_BYTES = 64 * 1024
#: Chunks waiting in the queue at most: the export waits (and holds no more memory) while the client reads slowly.
QUEUED_CHUNKS = 8
#: How often a waiting export looks whether its client went away.
_POLL_SECONDS = 0.5


class _Cancelled(Exception):
    """The response stopped reading (its client went away)."""


class _End:
    pass


class _Failed:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


class QueueWriter:
    """A write-only text file whose text goes, UTF-8 encoded and in chunks, into a queue."""

    def __init__(self, chunks: queue.Queue[Any], cancelled: threading.Event) -> None:
        self._chunks = chunks
        self._cancelled = cancelled
        self._parts: list[str] = []
        self._size = 0

    def write(self, text: str) -> int:
        self._parts.append(text)
        self._size += len(text)
        if self._size >= CHUNK_BYTES:
            self.flush()
        return len(text)

    def flush(self) -> None:
        if self._parts:
            data = "".join(self._parts).encode("utf-8")
            self._parts.clear()
            self._size = 0
            self.put(data)

    def put(self, item: object) -> None:
        while True:
            if self._cancelled.is_set():
                raise _Cancelled
            try:
                self._chunks.put(item, timeout=_POLL_SECONDS)
                return
            except queue.Full:
                continue


def _next(chunks: queue.Queue[Any]) -> Any:
    try:
        return chunks.get(timeout=_POLL_SECONDS)
    except queue.Empty:
        return None


async def stream_text(produce: Callable[[QueueWriter], object]) -> AsyncIterator[bytes]:
    """The bytes ``produce`` writes, as they come: ``produce(out)`` runs in a thread of its own. An error in it
    ends the response early (the client sees a cut-off body); it is logged."""
    chunks: queue.Queue[Any] = queue.Queue(maxsize=QUEUED_CHUNKS)
    cancelled = threading.Event()
    out = QueueWriter(chunks, cancelled)

    def run() -> None:
        try:
            produce(out)
            out.flush()
            out.put(_End())
        except _Cancelled:
            pass
        except BaseException as exc:
            with contextlib.suppress(_Cancelled):
                out.put(_Failed(exc))

    thread = threading.Thread(target=run, name="inferq-export", daemon=True)
    thread.start()
    try:
        while True:
            item = await anyio.to_thread.run_sync(_next, chunks)
            if item is None:
                continue
            if isinstance(item, _End):
                return
            if isinstance(item, _Failed):
                log.error("export failed mid-stream: %s: %s", type(item.exc).__name__, item.exc)
                raise item.exc
            yield item
    finally:
        cancelled.set()
