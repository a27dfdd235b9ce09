"""A worker that cannot consume exits with a failure status, so that whatever supervises it (systemd, a container's
restart policy) sees it fail and starts it again, instead of taking it for a clean stop."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.support.brokers import delete_queue, require_amqp
from tests.support.jobs import worker_env
from worker.process import WORKER_PROGRAM, running_worker

pytestmark = [pytest.mark.services, pytest.mark.slow]


def test_a_worker_whose_node_name_is_taken_on_rabbitmq_exits_with_a_failure(
    tmp_path: Path, migrated_postgres: str, queue_name: str, fault_registry: dict[str, Any]
) -> None:
    url = require_amqp()
    env = worker_env(migrated_postgres, url, queue_name, fault_registry)
    try:
        # Given a worker running on RabbitMQ
        first_log = tmp_path / "first.log"
        with running_worker(env, first_log, "--models", "slow", "--concurrency", "1"):
            found = re.search(r"(w0-\w+@\S+) ready\.", first_log.read_text(errors="replace"))
            assert found, "the first worker's node name"
            # When a second worker starts under the same node name (its remote-control queue is exclusive to it)
            second_log = tmp_path / "second.log"
            with open(second_log, "wb") as out:
                second = subprocess.run(
                    [*WORKER_PROGRAM, "--models", "slow", "--concurrency", "1", "-n", found.group(1)],
                    env={**os.environ, **env, "PYTHONUNBUFFERED": "1"},
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    timeout=120,
                )
        # Then it stopped on RabbitMQ's refusal and said so with its exit status
        log = second_log.read_text(errors="replace")
        assert "RESOURCE_LOCKED" in log, log[-3_000:]
        assert second.returncode != 0, log[-3_000:]
    finally:
        delete_queue(url, queue_name)
