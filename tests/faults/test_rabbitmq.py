"""Issue 5, point 10: RabbitMQ as the broker, end to end: CLI submit → RabbitMQ → a real worker → PostgreSQL →
CLI results, every result equal to the transformers pipeline's. (The kill, SIGTERM and duplicate-delivery tests
run on RabbitMQ too: their ``broker_url`` fixture is parametrized over Redis and RabbitMQ.)"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.reference import assert_same_labels, classification_reference
from tests.support.brokers import delete_queue, ready_messages, require_amqp
from tests.support.jobs import inferq_cli, sentences, worker_env
from worker.process import running_worker

pytestmark = pytest.mark.services


@pytest.fixture
def amqp_url(queue_name: str) -> Iterator[str]:
    url = require_amqp()
    yield url
    delete_queue(url, queue_name)


def test_a_cli_job_on_rabbitmq_matches_the_pipeline(
    tmp_path: Path,
    migrated_postgres: str,
    amqp_url: str,
    queue_name: str,
    fault_registry: dict[str, Any],
    slow_model: Path,
) -> None:
    # Given a worker on RabbitMQ and a file of single texts and pairs
    env = worker_env(migrated_postgres, amqp_url, queue_name, fault_registry)
    rows: list[dict[str, Any]] = sentences(80)
    rows += [
        {"text": a["text"], "text_pair": b["text"]} for a, b in zip(sentences(20, 500), sentences(20, 900), strict=True)
    ]
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")

    with running_worker(env, tmp_path / "worker.log", "--models", "slow"):
        # When it is submitted through the CLI and waited for
        done = inferq_cli(
            env, "submit", "-t", "classification", "-m", "slow", str(source), "-p", "top_k=2", "--chunk-size", "32",
            "--wait", "--json",
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        summary = json.loads(done.stdout)

    # Then the job succeeded, its queue is drained, and every result equals the pipeline's
    assert (summary["status"]["state"], summary["status"]["succeeded"]) == ("succeeded", len(rows))
    assert ready_messages(amqp_url, queue_name) == 0
    exported = inferq_cli(env, "results", summary["job_id"], "--format", "jsonl")
    lines = [json.loads(line) for line in exported.stdout.splitlines()]
    reference = classification_reference(slow_model, rows, top_k=2)
    assert len(lines) == len(rows)
    for line, want in zip(lines, reference, strict=True):
        assert line["status"] == "succeeded"
        assert_same_labels(line["result"], want, where=str(line["index"]))
