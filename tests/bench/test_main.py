"""The target lines `python -m bench` derives from a run's measurements."""

from __future__ import annotations

import argparse

import pytest

from bench.__main__ import Run, targets
from bench.measure import Measurement
from inferq.task_specs import TaskName


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


def test_tasks_are_named_one_by_one_or_by_group() -> None:
    from bench.__main__ import CLASSIC_TASKS, ENCODER_TASKS, parse_args, task_list

    assert parse_args([]).task_list == [*CLASSIC_TASKS, *ENCODER_TASKS]
    assert task_list("classic") == list(CLASSIC_TASKS)
    assert task_list("classification,question_answering,fill_mask") == list(CLASSIC_TASKS)
    assert task_list("zero-shot-classification, rerank,rerank") == [
        TaskName.ZERO_SHOT_CLASSIFICATION,
        TaskName.RERANK,
    ]
    assert task_list("embedding,encoders") == [TaskName.EMBEDDING, TaskName.ZERO_SHOT_CLASSIFICATION, TaskName.RERANK]
    with pytest.raises(SystemExit, match="unknown task 'nope'"):
        task_list("embedding,nope")
    with pytest.raises(SystemExit):
        task_list(" , ")


def row(task: str, variant: str, precision: str, per_round: list[float]) -> Measurement:
    m = Measurement(task, variant, precision, 100, 100 / max(per_round), 1000, 1100)
    m.extra["runs_items_per_second"] = per_round
    return m


def test_an_encoder_task_holds_the_system_to_its_reference_at_every_precision() -> None:
    import numpy as np

    from bench.measure import compare_vectors

    run = Run(machine={"native_bf16": False})
    run.measurements = [
        row("embedding", "ST encode bs=32", "fp32", [100.0, 100.0]),
        row("embedding", "engine (in-process)", "fp32", [130.0, 120.0]),
        row("embedding", "system (1 worker)", "fp32", [110.0, 105.0]),
        row("embedding", "engine (in-process)", "bf16", [300.0, 300.0]),
        row("embedding", "system (1 worker)", "bf16", [260.0, 240.0]),
        row("embedding", "engine (in-process)", "int8", [200.0, 200.0]),
        row("embedding", "system (1 worker)", "int8", [190.0, 180.0]),
    ]
    a = np.array([[1.0, 0.0]], dtype=np.float32)
    run.parity["embedding"] = compare_vectors([a], [a])
    run.deviation["embedding"] = {"bf16": compare_vectors([np.array([[0.6, 0.8]])], [a])}
    args = argparse.Namespace(task_list=[TaskName.EMBEDDING], precision_list=["bf16", "int8"])
    lines = {t.name: t for t in targets(run, args)}
    fp32 = lines["embedding: system / ST encode bs=32 (fp32)"]
    assert fp32.value == pytest.approx(1.075) and fp32.bound == 1.0 and fp32.passed
    bf16 = lines["embedding: system bf16 / ST encode bs=32"]
    assert bf16.value == pytest.approx(2.5) and bf16.passed
    assert "cosine to fp32 min 0.60000, mean 0.60000" in bf16.detail and "no native bf16" in bf16.detail
    int8 = lines["embedding: system int8 / ST encode bs=32"]
    assert int8.value == pytest.approx(1.85) and not int8.passed
    assert lines["embedding: system / engine (bf16)"].value == pytest.approx(0.8333, abs=1e-4)
    parity = lines["embedding: engine fp32 results unlike ST encode bs=32's (a component differs by > 1e-5)"]
    assert parity.value == 0 and parity.passed
    # No engine-over-pipeline target for a task held to its reference through the system.
    assert not any("engine / " in name for name in lines)


def test_the_npy_export_has_its_target() -> None:
    run = Run()
    run.npy_export = {
        "function": "producer.vectors.export_npy",
        "vectors": 100_000,
        "dim": 384,
        "vectors_per_second": 250_000.0,
        "mib_per_second": 366.0,
        "equal": True,
    }
    args = argparse.Namespace(task_list=[], precision_list=[])
    (npy,) = targets(run, args)
    assert npy.name == "export 100,000 stored 384-d vectors as NPY (vectors/s)"
    assert npy.bound == 200_000 and npy.passed
