"""What a run measured, and how it is measured: wall time, real and padded tokens, peak RSS of a process tree
(psutil when installed, else ``/proc``), and the comparison of two runs' scores."""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

#: Largest score difference that still counts as equal to the reference (as the parity tests use).
SCORE_TOLERANCE = 1e-5

#: Seconds between two RSS samples of a watched process tree (a sample reads a few small /proc files; rarer
#: samples leave the worker its CPU).
RSS_SAMPLE_SECONDS = 0.25


@dataclass
class Measurement:
    """One variant's run over the items of a task."""

    task: str
    variant: str
    precision: str
    items: int
    seconds: float
    #: Tokens the model saw without padding (windows for QA), and with it (batch size × longest, per batch).
    real_tokens: int
    padded_tokens: int
    #: Peak RSS of the worker process tree during the run (system runs only).
    peak_rss_mib: float | None = None
    #: CPU seconds spent meanwhile by the process doing the work (this one in-process; the worker tree).
    cpu_seconds: float | None = None
    notes: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def items_per_second(self) -> float:
        return self.items / self.seconds if self.seconds > 0 else math.inf

    @property
    def tokens_per_second(self) -> float:
        return self.real_tokens / self.seconds if self.seconds > 0 else math.inf

    @property
    def cores(self) -> float | None:
        """CPU seconds per wall second: how many cores the run had (on a shared machine, fewer than its
        threads means other load took the rest)."""
        return self.cpu_seconds / self.seconds if self.cpu_seconds is not None and self.seconds > 0 else None

    @property
    def padding_ratio(self) -> float:
        """Padded tokens per real token (1.0: no padding)."""
        return self.padded_tokens / self.real_tokens if self.real_tokens else 1.0

    def to_json(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "items_per_second": self.items_per_second,
            "tokens_per_second": self.tokens_per_second,
            "padding_ratio": self.padding_ratio,
            "cores": self.cores,
        }


def padded_in_order(lengths: Sequence[int] | np.ndarray, batch_size: int) -> int:
    """Padded tokens of consecutive batches of ``batch_size`` in input order, each padded to its longest (what a
    pipeline or a plain loop does)."""
    arr = np.asarray(lengths, dtype=np.int64)
    return sum(
        int(arr[i : i + batch_size].max()) * len(arr[i : i + batch_size]) for i in range(0, len(arr), batch_size)
    )


def padded_in_plan(lengths: Sequence[int] | np.ndarray, plan: Sequence[np.ndarray]) -> int:
    """Padded tokens of an engine's micro-batch plan."""
    arr = np.asarray(lengths, dtype=np.int64)
    return sum(int(arr[rows].max()) * len(rows) for rows in plan if len(rows))


# -- process memory ------------------------------------------------------------------------------------


def tree_rss_bytes(pid: int) -> int:
    """RSS of ``pid`` and all its descendants (0 once it is gone): from ``/proc`` on Linux (a few small reads,
    where psutil would scan every process for the tree), else with psutil."""
    if Path("/proc/self/task").is_dir():
        return sum(_proc_rss(p) for p in _proc_tree(pid))
    try:
        import psutil
    except ImportError:
        return 0
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0
    total = 0
    for p in procs:
        with suppress(psutil.Error):
            total += p.memory_info().rss
    return total


def _proc_tree(pid: int) -> list[int]:
    """``pid`` and its descendants: from ``/proc/PID/task/TID/children`` where the kernel has it (cheap), else
    from the parent ids of every ``/proc/*/stat``."""
    if Path(f"/proc/{pid}/task").is_dir() and not any(Path(f"/proc/{pid}/task").glob("*/children")):
        return _proc_tree_by_scan(pid)
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            tasks = list(Path(f"/proc/{p}/task").iterdir())
        except OSError:
            continue
        for task in tasks:
            try:
                todo.extend(int(c) for c in (task / "children").read_text().split())
            except OSError:
                continue
    return out


def _proc_tree_by_scan(pid: int) -> list[int]:
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name (field 2) may hold spaces; the fields after its closing parenthesis do not.
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        parents.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(parents.get(p, []))
    return out


def tree_cpu_seconds(pid: int) -> float:
    """User and system CPU seconds of ``pid`` and its descendants (so far, for those alive now)."""
    return sum(_cpu_ticks(p) for p in _proc_tree(pid)) / os.sysconf("SC_CLK_TCK")


def _cpu_ticks(pid: int) -> int:
    """User and system CPU ticks of one process, all its threads (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0
    return int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)


#: The servers whose CPU `cpu_snapshot` reads: the command name of their processes, and the part it counts in (every
#: PostgreSQL backend and helper is a ``postgres`` process).
SERVERS = {"postgres": "postgres", "redis-server": "redis"}


def cpu_snapshot(worker_pid: int) -> dict[str, float] | None:
    """CPU seconds so far of the worker (``worker_pid`` and its descendants), of the local PostgreSQL and Redis
    servers (every process of their names), and of the whole machine (``machine``: its busy time, every core, from
    ``/proc/stat``). Two snapshots bracket a job: their difference is what the job cost each part, where the
    servers run on this machine. One scan of ``/proc``; None where there is no ``/proc``."""
    if not Path("/proc/stat").is_file():
        return None
    ticks = os.sysconf("SC_CLK_TCK")
    out = {"worker": tree_cpu_seconds(worker_pid)}
    by_name = dict.fromkeys(SERVERS.values(), 0)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            comm = (entry / "comm").read_text().strip()
        except OSError:
            continue
        if comm in SERVERS:
            by_name[SERVERS[comm]] += _cpu_ticks(int(entry.name))
    out.update({k: v / ticks for k, v in by_name.items()})
    # cpu  user nice system idle iowait irq softirq steal …: busy is all but idle and iowait.
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    out["machine"] = (sum(fields) - fields[3] - fields[4]) / ticks
    return out


def cpu_between(before: dict[str, float] | None, after: dict[str, float] | None) -> dict[str, float]:
    """What each part of two `cpu_snapshot`s spent between them (seconds), and ``other``: the machine's busy time
    that none of the named parts accounts for (the benchmark's own client, the OS). Empty without snapshots."""
    if before is None or after is None:
        return {}
    spent = {k: max(0.0, after[k] - before[k]) for k in after}
    spent["other"] = max(0.0, spent["machine"] - sum(v for k, v in spent.items() if k != "machine"))
    return spent


def _proc_rss(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class RssSampler:
    """Samples a process tree's RSS in a thread; ``peak`` is the largest sample (bytes)."""

    def __init__(self, pid: int, every: float = RSS_SAMPLE_SECONDS) -> None:
        self.pid = pid
        self.every = every
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, tree_rss_bytes(self.pid))
            self._stop.wait(self.every)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, tree_rss_bytes(self.pid))


def mib(n_bytes: float) -> float:
    return n_bytes / 2**20


# -- comparing scores ----------------------------------------------------------------------------------

#: One item's ranked result: ``(key, score)`` best first; the key is a label, a token id, an answer span.
Ranked = list[tuple[Any, float]]


@dataclass(frozen=True)
class Deviation:
    """How far ``got`` lies from ``want``, over the items both have."""

    items: int
    #: Items whose top key differs (a tie within `SCORE_TOLERANCE` in ``want`` does not count), or whose score of
    #: some key differs by more than `SCORE_TOLERANCE`.
    mismatches: int
    #: Items whose top key differs (ties within tolerance excepted).
    top_changes: int
    #: Absolute score differences over every key both results have, and only the top ones.
    max_abs: float
    mean_abs: float
    top_max_abs: float
    top_mean_abs: float

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def compare(got: Sequence[Ranked | None], want: Sequence[Ranked | None], tol: float = SCORE_TOLERANCE) -> Deviation:
    """Compare two runs' ranked results item by item (``None``: no result; a missing result counts as a mismatch
    and a top change)."""
    if len(got) != len(want):
        raise ValueError(f"{len(got)} results against {len(want)}")
    diffs: list[float] = []
    top_diffs: list[float] = []
    mismatches = top_changes = 0
    for g, w in zip(got, want, strict=True):
        if not g or not w:
            mismatches += 1
            top_changes += 1
            continue
        want_scores = dict(w)
        got_scores = dict(g)
        item_diffs = [abs(got_scores[k] - s) for k, s in w if k in got_scores]
        diffs.extend(item_diffs)
        top_key, top_score = w[0]
        if top_key in got_scores:
            top_diffs.append(abs(got_scores[top_key] - top_score))
        changed = g[0][0] != top_key and not (g[0][0] in want_scores and abs(want_scores[g[0][0]] - top_score) <= tol)
        top_changes += changed
        mismatches += changed or any(d > tol for d in item_diffs) or len(item_diffs) < len(w)
    return Deviation(
        items=len(want),
        mismatches=mismatches,
        top_changes=top_changes,
        max_abs=max(diffs, default=0.0),
        mean_abs=float(np.mean(diffs)) if diffs else 0.0,
        top_max_abs=max(top_diffs, default=0.0),
        top_mean_abs=float(np.mean(top_diffs)) if top_diffs else 0.0,
    )


# -- comparing vectors ---------------------------------------------------------------------------------


def vector_of(result: dict[str, Any] | None, raw: bytes | None) -> np.ndarray | None:
    """An embedding's stored bytes (little-endian, the ``dtype`` its result names) as float32, one row per vector
    (a single vector is one row); ``None`` without a result."""
    if result is None or raw is None:
        return None
    dtype = np.dtype(result.get("dtype", "float32")).newbyteorder("<")
    return np.frombuffer(raw, dtype=dtype).astype(np.float32).reshape(-1, int(result["dim"]))


@dataclass(frozen=True)
class VectorDeviation:
    """How far ``got``'s vectors lie from ``want``'s, over the items both have."""

    items: int
    #: Items without a vector on either side, with vectors of another shape, or with a component that differs by
    #: more than `SCORE_TOLERANCE`.
    mismatches: int
    #: Cosine similarity of each pair of vectors: the lowest and the mean (1.0: the same direction).
    min_cosine: float
    mean_cosine: float
    #: Absolute differences of the components.
    max_abs: float
    mean_abs: float

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def compare_vectors(
    got: Sequence[np.ndarray | None], want: Sequence[np.ndarray | None], tol: float = SCORE_TOLERANCE
) -> VectorDeviation:
    """Compare two runs' vectors item by item (``None``: no result, a mismatch)."""
    if len(got) != len(want):
        raise ValueError(f"{len(got)} results against {len(want)}")
    cosines: list[np.ndarray] = []
    max_abs = 0.0
    abs_sum = 0.0
    abs_n = 0
    mismatches = 0
    for g, w in zip(got, want, strict=True):
        if g is None or w is None or np.shape(g) != np.shape(w):
            mismatches += 1
            continue
        g64 = np.asarray(g, dtype=np.float64).reshape(-1, np.shape(g)[-1])
        w64 = np.asarray(w, dtype=np.float64).reshape(-1, np.shape(w)[-1])
        diff = np.abs(g64 - w64)
        norms = np.linalg.norm(g64, axis=1) * np.linalg.norm(w64, axis=1)
        cosines.append(np.where(norms > 0, (g64 * w64).sum(axis=1) / np.where(norms > 0, norms, 1.0), 0.0))
        item_max = float(diff.max(initial=0.0))
        max_abs = max(max_abs, item_max)
        abs_sum += float(diff.sum())
        abs_n += diff.size
        mismatches += item_max > tol
    cos = np.concatenate(cosines) if cosines else np.array([])
    return VectorDeviation(
        items=len(want),
        mismatches=mismatches,
        min_cosine=float(cos.min()) if cos.size else math.nan,
        mean_cosine=float(cos.mean()) if cos.size else math.nan,
        max_abs=max_abs,
        mean_abs=abs_sum / abs_n if abs_n else 0.0,
    )


def describe(dev: Deviation | VectorDeviation) -> str:
    """One line's worth of a comparison."""
    if isinstance(dev, VectorDeviation):
        return (
            f"{dev.mismatches} of {dev.items} differ (cosine min {dev.min_cosine:.6f}, mean {dev.mean_cosine:.6f}; "
            f"max |Δ| {dev.max_abs:.1e})"
        )
    return f"{dev.mismatches} of {dev.items} differ (max |Δscore| {dev.max_abs:.1e}, {dev.top_changes} top changed)"
