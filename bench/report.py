"""The printed table, the target lines and the JSON file: pure functions of the measurements."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import math
import os
import platform
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.measure import Measurement
from worker.model_cache import cpu_has_native_bf16

#: The table's columns: header, width, and how a measurement fills it.
_COLUMNS: tuple[tuple[str, int], ...] = (
    ("task", 24),
    ("variant", 24),
    ("prec", 5),
    ("items", 6),
    ("items/s", 8),
    ("tokens/s", 9),
    ("pad", 5),
    ("cores", 5),
    ("peak RSS", 9),
    ("vs base", 7),
)


@dataclass(frozen=True)
class Target:
    """One target of the issue, checked on ratios measured in the same run."""

    name: str
    #: The measured value (a ratio, a rate) and the bound it must reach; ``None``: not measured in this run.
    value: float | None
    bound: float
    #: ``>=``: value must reach the bound; ``<=``: must stay under it.
    op: str = ">="
    detail: str = ""

    @property
    def passed(self) -> bool | None:
        if self.value is None or math.isnan(self.value):
            return None
        return self.value >= self.bound if self.op == ">=" else self.value <= self.bound

    def line(self) -> str:
        verdict = {True: "PASS", False: "FAIL", None: "SKIP"}[self.passed]
        value = "not measured" if self.value is None else _fmt_num(self.value)
        if self.passed is False and value == _fmt_num(self.bound) and self.value is not None:
            value = f"{self.value:.4f}"  # just short of the bound: show by how much
        tail = f"  ({self.detail})" if self.detail else ""
        return f"{verdict}  {self.name}: {value} (target {self.op} {_fmt_num(self.bound)}){tail}"

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed}


def _fmt_num(x: float) -> str:
    if math.isinf(x):
        return "inf"
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    if abs(x) >= 100:
        return f"{x:.0f}"
    if abs(x) >= 10:
        return f"{x:.1f}"
    return f"{x:.2f}"


def baseline_of(measurements: Sequence[Measurement], task: str) -> Measurement | None:
    """The row every other row of the task is compared with: the pipeline (or raw loop) at batch size 32."""
    for m in measurements:
        if m.task == task and m.variant.endswith("bs=32"):
            return m
    return None


def find(measurements: Sequence[Measurement], task: str, prefix: str, precision: str) -> Measurement | None:
    for m in measurements:
        if m.task == task and m.variant.startswith(prefix) and m.precision == precision:
            return m
    return None


def ratio(a: Measurement | None, b: Measurement | None) -> float | None:
    """Throughput of ``a`` over that of ``b`` (``None`` when either is missing)."""
    if a is None or b is None:
        return None
    return a.items_per_second / b.items_per_second


def paired_ratio(a: Measurement | None, b: Measurement | None) -> float | None:
    """The median over rounds of ``a``'s items/s over ``b``'s in the same round (runs of one round share the
    machine's load); the plain ratio when either ran once."""
    if a is None or b is None:
        return None
    ra = a.extra.get("runs_items_per_second") or [a.items_per_second]
    rb = b.extra.get("runs_items_per_second") or [b.items_per_second]
    pairs = [x / y for x, y in zip(ra, rb, strict=False) if y > 0]
    if len(pairs) < 2 or len(ra) < 2 or len(rb) < 2:
        return ratio(a, b)
    return float(statistics.median(pairs))


def format_table(measurements: Sequence[Measurement]) -> str:
    """One row per measurement; ``vs base``: items/s over the task's ``bs=32`` baseline."""
    header = " ".join(name.ljust(w) if i < 3 else name.rjust(w) for i, (name, w) in enumerate(_COLUMNS))
    lines = [header, "-" * len(header)]
    for m in measurements:
        base = baseline_of(measurements, m.task)
        vs = ratio(m, base)
        cells = (
            m.task,
            m.variant,
            m.precision,
            str(m.items),
            f"{m.items_per_second:.1f}",
            f"{m.tokens_per_second:,.0f}",
            f"{m.padding_ratio:.2f}",
            "—" if m.cores is None else f"{m.cores:.1f}",
            "—" if m.peak_rss_mib is None else f"{m.peak_rss_mib:,.0f} MiB",
            "—" if vs is None else f"{vs:.2f}×",
        )
        row = " ".join(
            c.ljust(w) if i < 3 else c.rjust(w) for i, (c, (_, w)) in enumerate(zip(cells, _COLUMNS, strict=False))
        )
        lines.append(row + (f"  {m.notes}" if m.notes else ""))
    return "\n".join(lines)


def machine_info() -> dict[str, Any]:
    """What the numbers ran on: CPU model, cores, library versions, time."""
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info: dict[str, Any] = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    with contextlib.suppress(OSError):
        info["load_average"] = [round(x, 2) for x in os.getloadavg()]
    for lib in ("torch", "transformers", "tokenizers"):
        try:
            info[lib] = __import__(lib).__version__
        except ImportError:
            info[lib] = None

    info["native_bf16"] = cpu_has_native_bf16()
    try:
        import torch

        info["torch_threads"] = torch.get_num_threads()
        info["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except ImportError:
        pass
    return info


def machine_line(info: dict[str, Any]) -> str:
    gpu = f", GPU {info['gpu']}" if info.get("gpu") else ", no GPU"
    load = info.get("load_average")
    return (
        f"machine: {info['cpu']}, {info['cores']} cores{gpu}"
        + {True: ", native bf16", False: " (no native bf16: bf16 is emulated)"}.get(info.get("native_bf16"), "")
        + f"; torch {info.get('torch')} "
        f"({info.get('torch_threads')} threads), transformers {info.get('transformers')}, "
        f"tokenizers {info.get('tokenizers')}, Python {info['python']}; {info['date']}"
        + (f"; load average at start {load[0]}" if load else "")
    )


def write_json(path: Path, payload: dict[str, Any]) -> Path:
    """Write ``payload`` (with measurements and targets turned into plain JSON) atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(to_plain(payload), indent=2, allow_nan=False) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path


def to_plain(obj: Any) -> Any:
    """Objects with ``to_json`` as their JSON, paths as strings, non-finite floats as ``null``."""
    to_json = getattr(obj, "to_json", None)
    if callable(to_json):
        return to_plain(to_json())
    if isinstance(obj, dict):
        return {str(k): to_plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_plain(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if obj is None or isinstance(obj, str | int | float | bool):
        return obj
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
