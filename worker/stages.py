"""Where a chunk's time goes: one clock per chunk that the runner and the engine read at each stage's end.

Timing is per stage per chunk (a ``time.perf_counter()`` at each boundary), never per item, so the hot path
stays free of per-item Python. The stages, in the order a chunk passes them:

* ``gap``: from the end of this process's previous chunk to the start of this one: the result's broker ack, the
  next message's round trip, Celery's own work around a task (and, between jobs, idle time: a benchmark counts
  only gaps between chunks of one job);
* ``claim``: the claim transaction (lock and lease the chunk, start its job, its commit) without the input read;
* ``read``: reading the chunk's queued items (and its batch-mates'); on PostgreSQL a chunk's items come with its
  claim's statement (`inferq.store.chunks.claim_chunk`), and this is their decoding;
* ``tokenize``: the engine's preprocess and micro-batch plan;
* ``forward``: the micro-batches through the model (padding, copies to the device and back included; on a CPU
  the wait for another pool thread's forward is not in it, see `worker.engines.base`);
* ``postprocess``: outputs into results;
* ``write``: the write transaction's statements (row locks, the bulk update, counters);
* ``commit``: that transaction's commit: the results are durable after it;
* ``other``: whatever lies between the named stages (lease keeper, engine lookup): the chunk's wall time less
  their sum.

``device`` is not a stage: it is the time a simulated device spent computing (the benchmark's, `bench.simulated_device`), which
lies inside ``forward``.
"""

from __future__ import annotations

import time

#: The named stages, in order (``other`` is what is left of the chunk's wall time).
STAGES = ("gap", "claim", "read", "tokenize", "forward", "postprocess", "write", "commit")


class StageClock:
    """Seconds per stage of one chunk. `lap` gives the time since the previous mark to a stage; `skip` drops it
    (it lands in ``other``)."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self._mark = self.started
        self.seconds: dict[str, float] = dict.fromkeys(STAGES, 0.0)
        #: Per stage the chunk passed: when it first began and last ended (`time.perf_counter`), so that stages of
        #: chunks running side by side (pool threads) can be laid out on one time line.
        self.spans: dict[str, tuple[float, float]] = {}
        #: Time measured inside a stage (``device``), not part of the sum.
        self.inner: dict[str, float] = {}

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.seconds[stage] += now - self._mark
        began = self.spans.get(stage)
        self.spans[stage] = (self._mark if began is None else began[0], now)
        self._mark = now

    def skip(self) -> None:
        self._mark = time.perf_counter()

    def add(self, stage: str, seconds: float) -> None:
        self.seconds[stage] += seconds

    def note(self, name: str, seconds: float) -> None:
        self.inner[name] = self.inner.get(name, 0.0) + seconds

    def wall(self) -> float:
        """Seconds from the clock's start (the chunk's start) to now."""
        return time.perf_counter() - self.started

    def summary(self, wall: float) -> str:
        """``stages_ms gap=… claim=… … other=…`` (and ``device=…`` where measured): the chunk's log line ends with
        it, and the benchmark reads it back (`parse_stages`)."""
        named = sum(v for k, v in self.seconds.items() if k != "gap")
        parts = [f"{k}={1000 * v:.2f}" for k, v in self.seconds.items()]
        parts.append(f"other={1000 * max(0.0, wall - named):.2f}")
        parts += [f"{k}={1000 * v:.2f}" for k, v in self.inner.items()]
        return "stages_ms " + " ".join(parts)


def parse_stages(line: str) -> dict[str, float] | None:
    """The stages of a chunk's log line, in seconds; None for a line without them."""
    _, found, rest = line.partition("stages_ms ")
    if not found:
        return None
    out: dict[str, float] = {}
    for part in rest.split():
        name, eq, value = part.partition("=")
        if not eq:
            break
        try:
            out[name] = float(value) / 1000
        except ValueError:
            break
    return out
