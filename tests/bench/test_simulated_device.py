"""The benchmark's simulated accelerator: installed only through the worker's engine hook, its forward pass takes the
device's time (sleeping, the CPU free), and the outcomes have the model's shape."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from bench.simulated_device import (
    SIM_CALL_SECONDS,
    SIM_TOKENS_PER_ITEM,
    SimulatedDevice,
    SimulatedEngine,
    simulated_engine_class,
    simulated_engine_factory,
)
from inferq.errors import ModelLoadError
from inferq.settings import Settings
from inferq.task_specs import TaskName, read_params
from worker.engines.classification import ClassificationEngine
from worker.engines.token_classification import TokenClassificationEngine
from worker.model_cache import ModelCache, default_engine_factory, set_engine_factory
from worker.stages import StageClock

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TEXTS = [{"text": t} for t in ["I love you", "I hate you", "a somewhat longer sentence about nothing much at all"]]


def cache(registry_json: str, items_per_second: float | None = None) -> ModelCache:
    """A model cache on the simulated device of ``items_per_second`` (None: the worker's own engines)."""
    factory = None if items_per_second is None else simulated_engine_factory(items_per_second)
    return ModelCache(Settings(models=json.loads(registry_json)), engine_factory=factory)


def test_without_the_hook_the_worker_runs_the_real_model(registry_json: str) -> None:
    engine = cache(registry_json).engine("cls-distilbert", TaskName.CLASSIFICATION)
    assert type(engine) is ClassificationEngine


def test_the_installed_hook_builds_every_later_caches_engines_until_it_is_taken_away(registry_json: str) -> None:
    # Given the simulated factory installed as the worker's engine hook (what `bench.simulated_worker` does)
    set_engine_factory(simulated_engine_factory(0))
    try:
        # Then a cache made afterwards without a factory of its own runs the simulated device
        engine = cache(registry_json).engine("cls-distilbert", TaskName.CLASSIFICATION)
        assert isinstance(engine, SimulatedEngine) and isinstance(engine, ClassificationEngine)
    finally:
        set_engine_factory(None)
    # And once the hook is taken away, the default again
    assert cache(registry_json).engine_factory is default_engine_factory


def test_the_simulated_device_takes_the_devices_time_with_the_cpu_free_and_outcomes_of_the_right_shape(
    registry_json: str, tmp_path: Path
) -> None:
    # Given a classifier on a simulated device of 200 items/s
    engine = cache(registry_json, 200).engine("cls-distilbert", TaskName.CLASSIFICATION)
    assert isinstance(engine, SimulatedEngine) and isinstance(engine, ClassificationEngine)

    # When it runs three texts
    clock = StageClock()
    cpu, wall = time.process_time(), time.perf_counter()
    outcomes = engine.run(TEXTS, {"top_k": None, "function_to_apply": "default"}, clock=clock)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall

    # Then the device computed for its cost model's time (one call: a fixed cost plus each padded token), slept it
    # (the process hardly used the CPU meanwhile), and the forward stage holds it
    features = engine.preprocess(TEXTS, engine_params(engine))
    padded = sum(len(b) * int(features.lengths[b].max()) for b in engine.plan(features))
    want = len(engine.plan(features)) * SIM_CALL_SECONDS + padded / (200 * SIM_TOKENS_PER_ITEM)
    assert clock.inner["device"] == pytest.approx(want)
    assert clock.seconds["forward"] >= want and wall >= want
    assert cpu < wall
    # And every text has an outcome with every label of the model, as the real engine gives
    assert all(o is not None and o.ok for o in outcomes)
    labels = {r["label"] for o in outcomes if o is not None for r in o.result}
    assert labels == set(engine.config.id2label.values())


def test_the_null_device_takes_no_time(registry_json: str) -> None:
    engine = cache(registry_json, 0).engine("cls-distilbert", TaskName.CLASSIFICATION)
    clock = StageClock()
    engine.run(TEXTS, {"top_k": 1, "function_to_apply": "default"}, clock=clock)
    assert clock.inner.get("device", 0.0) == 0.0


def test_threads_of_one_process_take_the_device_in_turn(tmp_path: Path) -> None:
    import threading

    device = SimulatedDevice(1_000, tmp_path / "device.lock")
    start = time.perf_counter()

    def forward() -> None:
        done, _ = device.launch(1, 40)
        device.wait(done)

    threads = [threading.Thread(target=forward) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # Three calls of 1 ms + 40 tokens at 1,000 items of 40 tokens a second (1 ms): 2 ms each, one after another
    assert time.perf_counter() - start >= 3 * 0.002


def test_a_launch_returns_at_once_and_queues_behind_the_devices_work_across_processes(tmp_path: Path) -> None:
    # Given one device seen by two processes' objects (the same queue file), of 100 items a second: a call of one
    # 40-token sequence computes 1 ms + 10 ms
    a, b = SimulatedDevice(100, tmp_path / "device.lock"), SimulatedDevice(100, tmp_path / "device.lock")

    # When three micro-batches are launched, from both
    start = time.monotonic()
    first, seconds = a.launch(1, 40)
    second, _ = b.launch(1, 40)
    third, _ = a.launch(1, 40)
    launched = time.monotonic()

    # Then no launch waited for its pass (the last one ends in the future), each one is queued behind the one
    # before, and waiting for the last one takes the three passes' time
    assert seconds == pytest.approx(0.011)
    assert third > launched
    assert second == pytest.approx(first + seconds) and third == pytest.approx(second + seconds)
    a.wait(third)
    assert time.monotonic() - start >= 3 * seconds


def test_a_task_the_simulation_cannot_shape_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="simulated device"):
        simulated_engine_class(TokenClassificationEngine)


def engine_params(engine: object) -> object:
    return read_params(TaskName.CLASSIFICATION, {"top_k": None, "function_to_apply": "default"})
