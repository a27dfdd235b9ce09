"""The pool ``inferq worker`` runs by default on each device."""

from __future__ import annotations

import pytest

from worker.threads import DEVICE_POOL_THREADS, default_pool


@pytest.mark.parametrize(
    ("device", "pool", "concurrency", "expected"),
    [
        ("cpu", None, None, ("prefork", 1)),  # a CPU: one process taking every core
        ("cpu", None, 2, ("prefork", 2)),  # two processes, each with half the cores
        ("cuda:0", None, None, ("threads", DEVICE_POOL_THREADS)),  # a GPU: chunks in flight around one model
        ("cuda:0", None, 2, ("threads", 2)),
        ("cuda:0", "prefork", None, ("prefork", 1)),  # the options win
        ("cuda:0", "prefork", 2, ("prefork", 2)),
        ("cpu", "threads", None, ("threads", 1)),
        ("cpu", "solo", None, ("solo", 1)),
    ],
)
def test_the_pool_follows_the_device_unless_the_options_say(
    device: str, pool: str | None, concurrency: int | None, expected: tuple[str, int]
) -> None:
    assert default_pool(device, pool, concurrency) == expected


def test_a_worker_names_the_queues_whose_declared_device_is_not_its_own() -> None:
    from inferq.settings import Settings
    from worker.threads import undeclared_queues

    # Given queue "gpu" declared on an accelerator where jobs are submitted, and "inferq" not declared (a CPU)
    declared = {"queue_devices": {"gpu": "cuda"}}
    # Then a GPU worker on both names "inferq" (its jobs would get a CPU's chunks), a CPU worker names "gpu"
    assert undeclared_queues(Settings(device="cuda:0", **declared), ["gpu", "inferq"]) == ["inferq"]
    assert undeclared_queues(Settings(device="cpu", **declared), ["gpu", "inferq"]) == ["gpu"]
    assert undeclared_queues(Settings(device="cuda:1", **declared), ["gpu"]) == []
    assert undeclared_queues(Settings(device="cpu"), ["inferq"]) == []
