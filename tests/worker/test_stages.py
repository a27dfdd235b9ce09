"""Where a chunk's time goes: a real ``inferq worker`` logs, per chunk, the seconds of each stage, and they add up
to the chunk's time."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.support.jobs import client_for, sentences, worker_env
from tests.support.worker_process import worker_log
from worker.process import running_worker
from worker.stages import STAGES, StageClock, parse_stages

CHUNKS = 4
CHUNK_SIZE = 24


@pytest.mark.services
def test_a_real_worker_logs_each_chunks_stages_and_they_add_up_to_its_time(
    tmp_path: Path, tiny_models: dict[str, Path], migrated_postgres: str, redis_url: str, queue_name: str
) -> None:
    # Given a real worker on Redis and PostgreSQL holding a tiny classifier
    registry = {"cls-distilbert": {"source": str(tiny_models["cls-distilbert"]), "task": "classification"}}
    env = worker_env(migrated_postgres, redis_url, queue_name, registry)
    log_path = tmp_path / "worker.log"
    with running_worker(env, log_path, "--models", "cls-distilbert"), client_for(env) as client:
        # When a job of four chunks runs
        job = client.submit(
            "classification", "cls-distilbert", sentences(CHUNKS * CHUNK_SIZE), chunk_size=CHUNK_SIZE
        ).job_id
        status = client.wait(job, timeout=120)
    assert status.succeeded == CHUNKS * CHUNK_SIZE

    # Then each chunk's log line names every stage, none negative, and the stages within the chunk (all but the
    # gap before it) add up to its wall time, the rest being a small "other"
    lines = [line for line in worker_log(log_path).splitlines() if f"job {job} chunk " in line and " done, " in line]
    assert len(lines) == CHUNKS, worker_log(log_path)[-3000:]
    for line in lines:
        stages = parse_stages(line)
        assert stages is not None, line
        assert set(STAGES) | {"other"} <= set(stages), line
        assert all(v >= 0 for v in stages.values()), line
        wall = float(re.search(r" in ([0-9.]+)s", line).group(1))  # type: ignore[union-attr]
        within = sum(v for k, v in stages.items() if k != "gap")
        # The log rounds the wall time to 10 ms, each stage to 10 µs
        assert within == pytest.approx(wall, abs=0.006), line
        assert stages["other"] <= 0.25 * wall + 0.005, line
        # And the chunk's work is in the stages that do it: a read, a forward, a write
        assert stages["claim"] > 0 and stages["read"] > 0 and stages["forward"] > 0 and stages["write"] > 0, line
    # The first chunk after the worker started has no gap; later ones measure the one after their predecessor
    assert any(parse_stages(line)["gap"] > 0 for line in lines[1:])  # type: ignore[index]


def test_the_clock_gives_each_lap_to_its_stage_and_skipped_time_to_other() -> None:
    clock = StageClock()
    clock.add("gap", 0.5)
    clock.lap("claim")
    clock.skip()
    clock.lap("read")
    clock.note("device", 0.002)
    stages = parse_stages(clock.summary(clock.wall()))
    assert stages is not None
    assert stages["gap"] == 0.5 and stages["device"] == 0.002
    assert list(stages)[: len(STAGES)] == list(STAGES)
    assert all(stages[k] >= 0 for k in stages)
