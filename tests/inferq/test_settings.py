from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from inferq import constants
from inferq.errors import InvalidParameter
from inferq.settings import DEFAULT_MODELS, Settings


def test_defaults_are_the_embedded_setup(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("INFERQ_DATABASE_URL", "INFERQ_BROKER_URL", "INFERQ_MODELS"):
        monkeypatch.delenv(var, raising=False)
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.database_url == "sqlite:///inferq.db"
    assert settings.broker_url.startswith("sqla+sqlite:///")
    assert settings.models == DEFAULT_MODELS
    assert settings.models["sst2"].source == "distilbert/distilbert-base-uncased-finetuned-sst-2-english"
    assert settings.models["mrpc"].source == "bert-base-cased-finetuned-mrpc"


def test_environment_with_prefix_and_plain_postgres_urls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INFERQ_DATABASE_URL", "postgresql://u:p@db:5432/x")
    monkeypatch.setenv("INFERQ_BROKER_URL", "redis://redis:6379/0")
    monkeypatch.setenv(
        "INFERQ_MODELS", json.dumps({"a": "org/model-a", "b": {"source": "/models/b", "queue": "gpu-1"}})
    )
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.database_url == "postgresql+psycopg://u:p@db:5432/x"
    assert settings.broker_url == "redis://redis:6379/0"
    assert settings.models["a"].source == "org/model-a"
    assert settings.queue_for("b") == "gpu-1"
    assert settings.queue_for("a") == settings.default_queue


def test_a_registry_entry_with_an_unknown_option_is_refused() -> None:
    with pytest.raises(ValidationError):
        Settings(models={"a": {"source": "x", "trust_remote_code": True}})


def test_a_jobs_chunk_size_and_queue_come_from_the_settings_unless_its_own() -> None:
    settings = Settings(chunk_size=100, default_queue="q", models={"own": {"source": "x", "queue": "gpu"}, "a": "y"})
    assert settings.chunk_size_for(None) == 100 and settings.chunk_size_for(7) == 7
    for bad in (-1, constants.MAX_CHUNK_SIZE + 1):
        with pytest.raises(InvalidParameter, match="chunk size must be between 1 and"):
            settings.chunk_size_for(bad)
    with pytest.raises(ValidationError):
        Settings(chunk_size=constants.MAX_CHUNK_SIZE + 1)
    assert settings.queue_of(settings.models["own"]) == "gpu"
    assert settings.queue_of(settings.models["a"]) == "q"


def test_a_models_own_chunk_size_is_its_jobs_default() -> None:
    # Given a model served on a fast device, whose registry entry names larger chunks, beside one that does not
    settings = Settings(chunk_size=100, models={"gpu": {"source": "x", "chunk_size": 1024}, "cpu": "y"})

    # Then its jobs take its chunk size unless they name their own; the other model's take the settings'
    assert settings.chunk_size_for(None, settings.models["gpu"]) == 1024
    assert settings.chunk_size_for(0, settings.models["gpu"]) == 1024
    assert settings.chunk_size_for(7, settings.models["gpu"]) == 7
    assert settings.chunk_size_for(None, settings.models["cpu"]) == 100
    # And a registry entry's chunk size is held to the same range as any other
    for bad in (0, constants.MAX_CHUNK_SIZE + 1):
        with pytest.raises(ValidationError, match="chunk_size"):
            Settings(models={"gpu": {"source": "x", "chunk_size": bad}})


@pytest.mark.parametrize(
    ("value", "names"),
    [
        ("sst2,mrpc", ["sst2", "mrpc"]),
        (" sst2 , ,/models/b ", ["sst2", "/models/b"]),
        ('["a", "b"]', ["a", "b"]),
        ("", []),
    ],
)
def test_the_models_to_preload_are_comma_separated_or_a_json_list(
    monkeypatch: pytest.MonkeyPatch, value: str, names: list[str]
) -> None:
    monkeypatch.setenv("INFERQ_PRELOAD", value)
    assert Settings(_env_file=None).preload == names  # type: ignore[call-arg]


def test_the_default_chunk_size_follows_the_device_of_the_jobs_queue() -> None:
    # Given GPU workers on queue "gpu" (declared where jobs are submitted), a model routed there, one on the default
    # queue, and one on the GPU queue with a chunk size of its own
    settings = Settings(
        chunk_size=100,
        accelerator_chunk_size=2000,
        queue_devices={"gpu": "cuda:0"},
        models={
            "fast": {"source": "x", "queue": "gpu"},
            "slow": "y",
            "own": {"source": "z", "queue": "gpu", "chunk_size": 7},
        },
    )
    # Then the GPU queue's jobs take the accelerator's default, the CPU queue's the CPU's, unless the model or the
    # submission names one
    assert settings.chunk_size_for(None, settings.models["fast"]) == 2000
    assert settings.chunk_size_for(None, settings.models["slow"]) == 100
    assert settings.chunk_size_for(None) == 100
    assert settings.chunk_size_for(None, settings.models["own"]) == 7
    assert settings.chunk_size_for(50, settings.models["fast"]) == 50
    # And a default queue declared on an accelerator gives every unrouted job the larger chunks
    everything_on_gpu = Settings(queue_devices={"inferq": "cuda"}, default_queue="inferq")
    assert everything_on_gpu.chunk_size_for(None) == constants.DEFAULT_ACCELERATOR_CHUNK_SIZE == 1024
    assert Settings().chunk_size_for(None) == constants.DEFAULT_CHUNK_SIZE
    assert Settings(queue_devices={"inferq": "cpu"}).chunk_size_for(None) == constants.DEFAULT_CHUNK_SIZE
