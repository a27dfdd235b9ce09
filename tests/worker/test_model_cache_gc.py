"""A worker's model cache takes the process's long-lived objects out of the garbage collector's generations once a
model loads (`worker.model_cache.freeze_long_lived`), and a cache built without ``freeze`` leaves them."""

from __future__ import annotations

import gc
import json
from collections.abc import Iterator

import pytest

from inferq.settings import Settings
from inferq.task_specs import TaskName
from worker.model_cache import ModelCache


@pytest.fixture
def unfrozen() -> Iterator[None]:
    gc.unfreeze()
    yield
    gc.unfreeze()  # the test process's objects go back to the collector


@pytest.mark.usefixtures("unfrozen")
@pytest.mark.parametrize("freeze", [True, False])
def test_a_worker_cache_freezes_what_lives_once_its_model_loads(registry_json: str, freeze: bool) -> None:
    # Given a cache of a worker (freeze) or of another caller
    cache = ModelCache(Settings(models=json.loads(registry_json)), freeze=freeze)
    assert gc.get_freeze_count() == 0

    # When a model loads and runs
    engine = cache.engine("cls-roberta", TaskName.CLASSIFICATION)
    frozen = gc.get_freeze_count()
    (outcome,) = engine.run([{"text": "a fine day"}], {})

    # Then the worker's cache froze every object then alive (the engine's model among them: no generation holds it),
    # the other nothing
    in_generations = any(o is engine.model for o in gc.get_objects())
    if freeze:
        assert frozen > 10_000 and not in_generations
    else:
        assert frozen == 0 and in_generations
    # And results are the same either way
    assert outcome is not None and outcome.ok and outcome.label is not None
