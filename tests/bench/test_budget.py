"""The CPU budget's accounting: which process is whose, what a process spent between two samples (born, gone, pid
reused), µs an item and the overhead, the targets' verdicts from the measured values; and one small real run of the
four measurements on real PostgreSQL, Redis and worker processes."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from bench.budget import (
    NULL_POOLS,
    OVERHEAD_TARGET_US,
    PARTS,
    BudgetRun,
    CpuTracker,
    bench_budget,
    budget_table,
    budget_targets,
    overhead_us,
    part_of,
    per_item_us,
    spent,
)
from bench.inprocess import params_for
from bench.inputs import classification_inputs
from bench.models import BenchModel
from bench.system import Services
from inferq.task_specs import TaskName
from tests.support.tiny_models import corpus

DB = "inferq_bench_0123456789"


def test_a_backend_counts_for_its_database_only() -> None:
    # Given PostgreSQL 15's process titles (the cluster's name first) and older ones (without it)
    mine = f"postgres: 15/main: postgres {DB} 127.0.0.1(43210) idle in transaction"
    other = "postgres: 15/main: postgres test 127.0.0.1(43211) INSERT"
    # Then a backend of the benchmark's database is "postgres", another database's is other load
    assert part_of("postgres", mine, DB) == "postgres"
    assert part_of("postgres", f"postgres: postgres {DB} [local] idle", DB) == "postgres"
    assert part_of("postgres", other, DB) is None
    # And the server's own processes are its background, whatever database they serve
    assert part_of("postgres", "postgres: 15/main: walwriter", DB) == "postgres-background"
    assert part_of("postgres", "postgres: 15/main: background writer", DB) == "postgres-background"
    assert part_of("postgres", "/usr/lib/postgresql/15/bin/postgres -D /var/lib/postgresql/15/main", DB) == (
        "postgres-background"
    )
    # And the benchmark's Redis is Redis, another Redis server other load; anything else is nobody's
    assert part_of("redis-server", "redis-server 127.0.0.1:6379", DB) == "redis"
    assert part_of("redis-server", "redis-server 127.0.0.1:6379  ", DB, redis_port=6379) == "redis"
    assert part_of("redis-server", "redis-server 127.0.0.1:53527", DB, redis_port=6379) is None
    assert part_of("python", "python -m bench", DB) is None


def test_what_each_part_spent_between_two_samples() -> None:
    first = {10: ("worker", 100), 11: ("postgres", 50), 12: ("redis", 7), 13: ("postgres", 900)}
    last = {
        10: ("worker", 160),  # +60
        11: ("postgres", 55),  # +5
        12: ("redis", 7),  # nothing
        13: ("postgres", 20),  # the pid was reused by a new backend: all 20 count
        14: ("worker", 9),  # a pool child born meanwhile: all 9
        15: ("postgres-background", 3),
    }
    assert spent(first, last) == {
        "worker": 69,
        "postgres": 25,
        "postgres-background": 3,
        "redis": 0,
        "producer": 0,
    }


def run(name: str, items: int, seconds: float, cpu: dict[str, float]) -> BudgetRun:
    return BudgetRun(name, items, seconds, cpu)


def test_the_overhead_is_the_systems_cpu_an_item_less_the_loops() -> None:
    system = per_item_us({"worker": 0.5, "postgres": 0.1, "redis": 0.02}, 1000)
    loop = per_item_us({"loop": 0.45}, 1000)
    assert system["total"] == pytest.approx(620.0) and loop["total"] == pytest.approx(450.0)
    assert overhead_us(system, loop) == pytest.approx(170.0)


def budget(system_tiny_cpu: float, loop_cpu: float, tiny_seconds: float, loop_seconds: float) -> dict[str, object]:
    n = 10_000
    return {
        "chunk_size": 1024,
        "_runs": {
            "system_null": run("null", n, 1.0, {"worker": 0.5, "postgres": 0.2}),
            "engine_null": run("engine", n, 1.1, {"loop": 0.4}),
            "system_tiny": run("tiny", n, tiny_seconds, {"worker": system_tiny_cpu}),
            "loop_tiny": run("loop", n, loop_seconds, {"loop": loop_cpu}),
        },
    }


def test_the_targets_pass_or_fail_on_the_measured_values() -> None:
    # Given a system 30 µs an item over its loop, faster than it; the null device 30 µs over the engine
    good = budget_targets(budget(6.3, 6.0, 2.0, 2.1))
    assert [t.passed for t in good] == [True, True, True, True]
    assert good[0].value == pytest.approx(30.0) and good[0].line().startswith("PASS")
    # When the system spends 50 µs an item more than its loop and is slower than it
    bad = budget_targets(budget(6.5, 6.0, 2.2, 2.1))
    # Then the overhead fails against the 40 µs target, as does the ratio; the null device's figures pass still
    overhead, null_overhead, ratio, null_ratio = bad
    assert overhead.op == "<=" and overhead.bound == OVERHEAD_TARGET_US
    assert overhead.value == pytest.approx(50.0) and overhead.passed is False
    assert overhead.line().startswith("FAIL")
    assert ratio.value == pytest.approx(2.1 / 2.2) and ratio.passed is False
    assert null_overhead.value == pytest.approx(30.0) and null_overhead.passed is True
    assert null_ratio.value == pytest.approx(1.1) and null_ratio.passed is True
    # And with the engine in-process on the tiny model measured, the overhead against it is a target of its own
    with_engine = budget(6.5, 6.0, 2.2, 2.1)
    with_engine["_runs"]["engine_tiny"] = run("engine", 10_000, 2.0, {"loop": 6.2})  # type: ignore[index]
    strict = budget_targets(with_engine)[1]
    assert "engine in-process" in strict.name and strict.value == pytest.approx(30.0) and strict.passed is True
    # And with the null device run on one process per core, its ratio is the target, one process's named beside it
    pooled = budget(6.3, 6.0, 2.0, 2.1)
    pooled["_runs"]["system_null_cores"] = run("null, 2 processes", 10_000, 2.0, {"worker": 0.6})  # type: ignore[index]
    on_cores = budget_targets(pooled)[-1]
    assert "(null, 2 processes)" in on_cores.name and on_cores.value == pytest.approx(0.55)
    assert on_cores.passed is False and "null: 1.10" in on_cores.detail


@contextmanager
def given(services: Services) -> Iterator[Services]:
    yield services


@pytest.mark.slow
def test_a_small_budget_run_measures_every_part(
    own_postgres: str, redis_url: str, queue_name: str, tiny_models: dict[str, Path]
) -> None:
    # Given 512 classification items and the real system on a private database and queue
    services = Services(own_postgres, redis_url, queue_name, f"{queue_name}-cold")
    items = classification_inputs(corpus(), 512, 0)
    # When the four measurements run at chunks of 256
    model = BenchModel("tiny", TaskName.CLASSIFICATION, tiny_models["cls-distilbert"])
    result = bench_budget(
        model, items, params_for(TaskName.CLASSIFICATION), chunk=256, services=lambda: given(services)
    )
    # Then each run (four systems: the null device on three pools and the tiny model; two engines in-process; the
    # hand-written loop) did every item, and the systems' CPU was found in the worker and in PostgreSQL
    runs = result["_runs"]
    assert len(runs) == 7 and {r.items for r in runs.values()} == {512}
    systems = (*NULL_POOLS, "system_tiny")
    for name in systems:
        assert runs[name].cpu["worker"] > 0, (name, runs[name].cpu)
        assert runs[name].extra["chunks"] == 2
        assert runs[name].stages["write"] > 0 and runs[name].stages["tokenize"] > 0
    # and each reports every part (PostgreSQL's is read in the kernel's ticks of 10 ms: a run's two chunks spend
    # about one tick there and read 0 or 0.01 s, so that the tracker finds the database's backends is shown by the
    # test below)
    assert all(set(PARTS) <= runs[name].cpu.keys() for name in systems)
    assert runs["loop_tiny"].stages["forward"] > 0 and runs["loop_tiny"].cpu["loop"] > 0
    # And the table and the four targets come out of them, each PASS or FAIL (none unmeasured)
    assert "hand-written loop" in budget_table(result)
    targets = budget_targets(result)
    assert [t.passed in (True, False) for t in targets] == [True] * 5
    # (the null device's ratio on one process per core, the other pools named beside it)
    cores = runs["system_null_cores"]
    assert f"({cores.name})" in targets[-1].name and "1 process, 3 threads: " in targets[-1].detail


def test_the_tracker_counts_a_backends_cpu_in_postgres_and_its_own_process_in_worker(own_postgres: str) -> None:
    import os
    import time

    import sqlalchemy as sa

    # Given a tracker on this process (as the worker) and the test's own database
    engine = sa.create_engine(own_postgres)
    try:
        with engine.connect() as connection:
            connection.execute(sa.text("SELECT 1"))
            tracker = CpuTracker(os.getpid(), sa.make_url(own_postgres).database or "", every=0.05).start()
            # When a backend of that database spends CPU on a query, and this process spends some of its own
            connection.execute(sa.text("SELECT count(*) FROM generate_series(1, 3000000)"))
            until = time.process_time() + 0.1
            while time.process_time() < until:
                pass
            seconds = tracker.stop()
    finally:
        engine.dispose()
    # Then the query's CPU is counted as PostgreSQL's and the loop's as the worker's
    assert seconds["postgres"] >= 0.05 and seconds["worker"] >= 0.05, seconds


def test_the_budget_is_part_of_every_full_run_and_the_million_run_only_when_asked() -> None:
    from bench.__main__ import parse_args

    full = parse_args([])
    assert full.budget and not full.million and full.task_list
    alone = parse_args(["--tasks", "budget"])
    assert alone.budget and not alone.sim and alone.task_list == []
    million = parse_args(["--tasks", "million", "--million-items", "5000"])
    assert million.million and not million.budget and million.million_items == 5000 and million.task_list == []
