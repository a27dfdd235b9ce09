"""The million-item run's code path on a few thousand items: submit, run on the null device, Parquet out, stored
vectors out as NPY, every step timed and every process's peak memory read; and the peak-memory arithmetic."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from bench.million import bench_million, highest, million_lines, vm_hwm
from bench.models import BenchModel
from bench.system import Services
from inferq.task_specs import TaskName


def test_the_peak_of_each_part_is_its_largest_process_and_their_sum() -> None:
    peaks = {1: ("worker", 100 * 2**20), 2: ("worker", 300 * 2**20), 3: ("redis", 8 * 2**20)}
    assert highest(peaks) == {
        "worker": {"processes": 2, "max_mib": 300.0, "sum_mib": 400.0},
        "redis": {"processes": 1, "max_mib": 8.0, "sum_mib": 8.0},
    }
    assert vm_hwm() > 0 and vm_hwm(2**31) == 0  # this process; none


@contextmanager
def given(services: Services) -> Iterator[Services]:
    yield services


@pytest.mark.slow
def test_a_few_thousand_items_go_through_every_step(
    own_postgres: str, redis_url: str, queue_name: str, tiny_models: dict[str, Path]
) -> None:
    # Given 3,000 items of a tiny classifier, a private database and queue
    services = Services(own_postgres, redis_url, queue_name, f"{queue_name}-cold")
    model = BenchModel("tiny", TaskName.CLASSIFICATION, tiny_models["cls-distilbert"])
    # When they go through the million-item run's steps in chunks of 1,000
    result = bench_million(model, 3000, chunk=1000, services=lambda: given(services))
    # Then every step took time, and both exports wrote every row
    steps = result["steps"]
    assert list(steps) == ["submit", "run", "export_parquet", "store_vectors", "export_npy"]
    assert all(step["seconds"] > 0 for step in steps.values())
    assert steps["submit"]["items"] == 3000
    assert steps["export_parquet"]["rows"] == 3000 and steps["export_npy"]["rows_read_back"] == 3000
    # And the peak memory of the producer's processes, the worker, PostgreSQL and Redis was read
    assert all(steps[s]["peak_mib"] > 0 for s in ("submit", "export_parquet", "store_vectors", "export_npy"))
    assert {"worker", "postgres", "redis"} <= set(result["peak_memory"])
    assert result["peak_memory"]["worker"]["max_mib"] > 0
    assert "export_npy" in "\n".join(million_lines(result))
