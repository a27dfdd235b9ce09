"""The pools comparison's arithmetic: the best round of each concurrency, and the target as their ratio."""

from __future__ import annotations

from typing import Any

from bench.pools import NO_SLOWER, pools_line, pools_target


def result(one: list[float], two: list[float]) -> dict[str, Any]:
    return {
        "items": 600,
        "chunk_size": 50,
        "model": "bench-cls",
        "cores": 2,
        "items_per_second": {"1": one, "2": two},
    }


def test_the_target_compares_the_best_rounds() -> None:
    # A slow round of two processes (the machine was busy then) does not decide: the best rounds do
    target = pools_target(result([50.0, 52.0], [30.0, 55.0]))
    assert target.value == 55.0 / 52.0 and target.bound == NO_SLOWER and target.passed
    assert not pools_target(result([50.0, 52.0], [30.0, 40.0])).passed


def test_the_line_shows_every_round() -> None:
    text = pools_line(result([50.0, 52.0], [30.0, 55.0]))
    assert "--concurrency 1: 50.0, 52.0" in text and "--concurrency 2: 30.0, 55.0" in text and "2 cores" in text
