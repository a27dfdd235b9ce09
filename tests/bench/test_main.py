"""The target lines `python -m bench` derives from a run's measurements."""

from __future__ import annotations

import argparse

from bench.__main__ import Run, targets
from bench.measure import Measurement
from inferq.tasks import TaskName


def measured(variant: str, precision: str, per_round: list[float]) -> Measurement:
    """A row whose rounds ran at ``per_round`` items/s (its best run is the row)."""
    m = Measurement("classification", variant, precision, 100, 100 / max(per_round), 1000, 1100)
    m.extra["runs_items_per_second"] = per_round
    return m


def test_the_system_is_held_to_the_engine_at_every_precision_it_ran() -> None:
    run = Run()
    run.measurements = [
        measured("pipeline bs=32", "fp32", [10.0, 10.0, 10.0]),
        measured("engine (in-process)", "fp32", [50.0, 50.0, 50.0]),
        measured("system (1 worker)", "fp32", [47.0, 46.0, 48.0]),
        measured("engine (in-process)", "bf16", [100.0, 100.0, 100.0]),
        measured("system (1 worker)", "bf16", [80.0, 95.0, 95.0]),
        measured("engine (in-process)", "int8", [150.0, 160.0, 170.0]),
        measured("system (1 worker)", "int8", [120.0, 128.0, 136.0]),
    ]
    args = argparse.Namespace(task_list=[TaskName.CLASSIFICATION], precision_list=["bf16", "int8"])
    lines = {t.name: t for t in targets(run, args)}
    fp32 = lines["classification: system / engine (fp32)"]
    bf16 = lines["classification: system / engine (bf16)"]
    int8 = lines["classification: system / engine (int8)"]
    assert fp32.value == 47.0 / 50.0 and fp32.passed
    assert bf16.value == 0.95 and bf16.passed  # the median round, not the first
    assert int8.value == 0.8 and not int8.passed


def test_a_precision_the_system_did_not_run_has_no_system_target() -> None:
    run = Run()
    run.measurements = [
        measured("pipeline bs=32", "fp32", [10.0]),
        measured("engine (in-process)", "fp32", [50.0]),
        measured("system (1 worker)", "fp32", [47.0]),
        measured("engine (in-process)", "int8", [150.0]),
    ]
    args = argparse.Namespace(task_list=[TaskName.CLASSIFICATION], precision_list=["int8"])
    names = [t.name for t in targets(run, args)]
    assert "classification: system / engine (fp32)" in names
    assert not any(n.startswith("classification: system / engine (int8)") for n in names)
    assert "classification: engine int8 / pipeline bs=32" in names
