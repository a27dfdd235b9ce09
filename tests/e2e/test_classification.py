"""The whole path for classification on real components: CLI submit → Redis → a real ``inferq worker`` process →
PostgreSQL → CLI results, compared item by item with the transformers pipeline."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from inferq.settings import Settings
from producer.client import Client
from tests.reference import assert_same_labels, classification_reference
from tests.support.jobs import inferq_cli
from tests.support.tiny_models import corpus
from worker.process import running_worker

pytestmark = pytest.mark.services


def realistic_inputs(n_single: int, n_pairs: int) -> list[dict[str, Any]]:
    """Real sentences (single texts), paraphrase-style pairs, and texts far beyond the models' 64 tokens."""
    sentences = corpus()
    single = [{"text": s, "id": f"s{i}"} for i, s in enumerate(sentences[:n_single])]
    pairs = [{"text": sentences[i], "text_pair": sentences[-i - 1], "id": f"p{i}"} for i in range(n_pairs)]
    long = [{"text": " ".join(sentences[i : i + 12]), "id": f"l{i}"} for i in range(0, 240, 12)]
    seeds = [
        {"text": "I hate you", "id": "seed-hate"},
        {"text": "I love you", "id": "seed-love"},
        {
            "text": "The company HuggingFace is based in New York City",
            "text_pair": "HuggingFace's headquarters are situated in Manhattan",
            "id": "seed-mrpc",
        },
    ]
    return seeds + single + pairs + long


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def test_cli_job_on_redis_and_postgres_matches_the_pipeline(
    tmp_path: Path,
    tiny_models: dict[str, Path],
    registry_json: str,
    migrated_postgres: str,
    redis_url: str,
    queue_name: str,
) -> None:
    # Given a real worker against Redis and PostgreSQL, and a file of a few thousand real sentences and pairs
    env = {
        "INFERQ_DATABASE_URL": migrated_postgres,
        "INFERQ_BROKER_URL": redis_url,
        "INFERQ_MODELS": registry_json,
        "INFERQ_DEFAULT_QUEUE": queue_name,
        "INFERQ_MAX_BATCH_TOKENS": "2048",
    }
    rows = realistic_inputs(n_single=2500, n_pairs=500)
    source = write_jsonl(tmp_path / "inputs.jsonl", rows)

    with running_worker(env, tmp_path / "worker.log", "--models", "cls-bert-pair"):
        # When the user submits through the CLI and waits
        done = inferq_cli(
            env,
            "submit",
            "--task",
            "classification",
            "--model",
            "cls-bert-pair",
            str(source),
            "--param",
            "top_k=2",
            "--chunk-size",
            "400",
            "--wait",
            "--json",
            timeout=600,
        )
        assert done.returncode == 0, done.stderr
        summary = json.loads(done.stdout)
        job_id = summary["job_id"]
        # Then the job has succeeded with every item counted, and the progress bar went to stderr
        assert summary["status"]["state"] == "succeeded"
        assert summary["status"]["succeeded"] == len(rows)
        assert summary["status"]["failed"] == 0
        assert f"{len(rows)}/{len(rows)}" in done.stderr

    # And every exported line equals what the pipeline computes for the same input
    exported = inferq_cli(env, "results", job_id, "--format", "jsonl", timeout=600)
    assert exported.returncode == 0, exported.stderr
    lines = [json.loads(line) for line in exported.stdout.splitlines()]
    assert [line["index"] for line in lines] == list(range(len(rows)))
    assert [line["id"] for line in lines] == [r["id"] for r in rows]
    reference = classification_reference(tiny_models["cls-bert-pair"], rows, top_k=2)
    for line, want in zip(lines, reference, strict=True):
        assert line["status"] == "succeeded" and line["error"] is None
        assert_same_labels(line["result"], want, where=line["id"])

    # And the top label is queryable in SQL
    client = Client(Settings(database_url=migrated_postgres, broker_url=redis_url))
    label = lines[0]["result"][0]["label"]
    filtered = list(client.results(job_id, label=label, min_score=0.5))
    expected = [ln["index"] for ln in lines if ln["result"][0]["label"] == label and ln["result"][0]["score"] >= 0.5]
    assert [r.index for r in filtered] == expected
    client.close()


def test_python_client_on_the_embedded_default_matches_the_pipeline(
    tmp_path: Path, tiny_models: dict[str, Path], registry_json: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given the embedded default (SQLite results, SQLite broker) in a working directory, and a real worker there
    env = {"INFERQ_MODELS": registry_json}
    for var in ("INFERQ_DATABASE_URL", "INFERQ_BROKER_URL"):
        monkeypatch.delenv(var, raising=False)
    migrate = subprocess.run(
        [sys.executable, "-m", "inferq.cli", "db", "upgrade"],
        cwd=tmp_path,
        env={**os.environ, **env},
        check=False,
        capture_output=True,
    )
    assert migrate.returncode == 0, migrate.stderr.decode()
    settings = Settings(
        database_url=f"sqlite:///{tmp_path / 'inferq.db'}",
        broker_url=f"sqla+sqlite:///{tmp_path / 'inferq-broker.db'}",
        models=json.loads(registry_json),
    )
    assert Settings().database_url == "sqlite:///inferq.db"  # the default the worker below uses, in tmp_path
    rows = realistic_inputs(n_single=150, n_pairs=0)
    inputs = [{k: v for k, v in r.items() if k != "text_pair"} for r in rows]

    with running_worker(env, tmp_path / "worker.log", cwd=tmp_path), Client(settings) as client:
        # When a job of single texts is submitted from Python with all labels requested
        sub = client.submit("classification", "cls-roberta", inputs, params={"top_k": None}, chunk_size=64)
        status = client.wait(sub.job_id, timeout=300)

        # Then it succeeded, and every result equals the pipeline's with top_k=None
        assert status.state.value == "succeeded" and status.succeeded == len(inputs)
        results = list(client.results(sub.job_id))
    reference = classification_reference(tiny_models["cls-roberta"], inputs, top_k=None)
    assert len(results) == len(inputs)
    for row, want in zip(results, reference, strict=True):
        assert row.status == "succeeded"
        assert row.result is not None
        assert_same_labels(row.result, want, where=str(row.id))
        assert row.label == row.result[0]["label"] and row.score == row.result[0]["score"]
