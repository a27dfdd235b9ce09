"""The CLI over real Redis and PostgreSQL: bad input is refused whole, naming line and field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import redis
from sqlalchemy import func, select

from inferq.db import make_engine
from inferq.schema import Item, Job
from inferq.settings import Settings
from tests.support.jobs import inferq_cli

pytestmark = pytest.mark.services


@pytest.fixture
def env(migrated_postgres: str, redis_url: str, registry_json: str, queue_name: str) -> dict[str, str]:
    return {
        "INFERQ_DATABASE_URL": migrated_postgres,
        "INFERQ_BROKER_URL": redis_url,
        "INFERQ_MODELS": registry_json,
        "INFERQ_DEFAULT_QUEUE": queue_name,
        # These tests read the messages a submit sends: every chunk's, at submit (no dispatcher runs here).
        "INFERQ_DISPATCH": "direct",
    }


def count_jobs(url: str) -> int:
    engine = make_engine(Settings(database_url=url))
    with engine.connect() as conn:
        n = conn.scalar(select(func.count()).select_from(Job))
    engine.dispose()
    return int(n or 0)


def test_a_file_with_bad_lines_is_refused_whole(
    tmp_path: Path, env: dict[str, str], migrated_postgres: str, redis_url: str, queue_name: str
) -> None:
    # Given a file with good lines and three bad ones
    source = tmp_path / "in.jsonl"
    source.write_text(
        '{"text": "fine"}\n{"text": 3}\n{not json\n{"text": "fine too"}\n{"txt": "typo"}\n',
        encoding="utf-8",
    )
    before = count_jobs(migrated_postgres)

    # When it is submitted
    done = inferq_cli(env, "submit", "--task", "classification", "--model", "cls-distilbert", str(source))

    # Then the command fails, naming each bad line and field, and nothing was stored or enqueued
    assert done.returncode == 2
    assert "line 2, field 'text'" in done.stderr
    assert "line 3" in done.stderr and "JSON" in done.stderr
    assert "line 5, field 'txt'" in done.stderr
    assert "nothing was submitted" in done.stderr
    assert count_jobs(migrated_postgres) == before
    assert redis.Redis.from_url(redis_url).llen(queue_name) == 0


def test_skip_invalid_submits_the_good_lines_and_reports_the_rest(
    tmp_path: Path, env: dict[str, str], migrated_postgres: str, redis_url: str, queue_name: str
) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text('{"text": "fine", "id": "a"}\n{"text": ""}\n{"text": "also fine", "id": 7}\n', encoding="utf-8")

    done = inferq_cli(
        env,
        "submit",
        "--task",
        "classification",
        "--model",
        "cls-distilbert",
        str(source),
        "--skip-invalid",
        "--chunk-size",
        "1",
        "--json",
    )

    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["total"] == 2 and out["skipped"] == 1
    assert "line 2, field 'text'" in done.stderr
    engine = make_engine(Settings(database_url=migrated_postgres))
    with engine.connect() as conn:
        ids = conn.execute(select(Item.client_id).where(Item.job_id == out["job_id"]).order_by(Item.index)).all()
    engine.dispose()
    assert [r[0] for r in ids] == ["a", "7"]
    # one message per chunk, carrying ids only
    messages = redis.Redis.from_url(redis_url).lrange(queue_name, 0, -1)
    assert len(messages) == 2
    for raw in messages:
        body = json.loads(raw)
        assert body["headers"]["task"] == "inferq.run_chunk"
        assert "fine" not in raw.decode()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "no-such-model"], "unknown model 'no-such-model'"),
        (["--model", "cls-distilbert", "--param", "top_k=0"], "parameter top_k"),
        (["--model", "cls-distilbert", "--param", "temperature=2"], "unknown parameter"),
    ],
)
def test_unknown_models_and_bad_parameters_are_refused(
    tmp_path: Path, env: dict[str, str], args: list[str], message: str
) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text('{"text": "fine"}\n', encoding="utf-8")
    done = inferq_cli(env, "submit", "--task", "classification", *args, str(source))
    assert done.returncode == 2
    assert message in done.stderr


def test_status_of_an_unknown_job(env: dict[str, str]) -> None:
    done = inferq_cli(env, "status", "0" * 32)
    assert done.returncode == 2 and "job_not_found" in done.stderr


def test_models_and_jobs_list_the_registry_and_recent_jobs(
    tmp_path: Path, env: dict[str, str], tiny_models: dict[str, Path]
) -> None:
    # Given a submitted job
    source = tmp_path / "in.csv"
    source.write_text("text,id\nhello,1\nworld,2\n", encoding="utf-8")
    submitted = inferq_cli(env, "submit", "--task", "classification", "--model", "cls-roberta", str(source))
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip()

    # When the registry and the recent jobs are listed
    models = inferq_cli(env, "models")
    jobs = inferq_cli(env, "jobs", "--limit", "50")
    as_json = json.loads(inferq_cli(env, "models", "--json").stdout)

    # Then each model and the job appear, one line each
    assert all(name in models.stdout for name in tiny_models)
    assert as_json["cls-roberta"]["source"] == str(tiny_models["cls-roberta"])
    line = next(ln for ln in jobs.stdout.splitlines() if ln.startswith(job_id))
    assert "queued" in line and "0/2" in line and "cls-roberta" in line

    # And the filters find it, or leave it out, as the API's do
    def listed(*filters: str) -> bool:
        found = inferq_cli(env, "jobs", "--limit", "50", *filters)
        assert found.returncode == 0, found.stderr
        return any(ln.startswith(job_id) for ln in found.stdout.splitlines())

    assert listed("--state", "queued", "--task", "classification", "--model", "cls-roberta")
    assert not listed("--model", "cls-distilbert")
    assert not listed("--state", "succeeded")
    assert not listed("--meta", "team=nobody")
    assert not listed("--after", job_id)  # the page after it starts with older jobs
    refused = inferq_cli(env, "jobs", "--state", "sleeping")
    assert refused.returncode == 2 and "--state" in refused.stderr

    # And cancelling it leaves it cancelled with its counts
    cancelled = inferq_cli(env, "cancel", job_id)
    assert cancelled.returncode == 0 and "cancelled" in cancelled.stdout
    status = json.loads(inferq_cli(env, "status", job_id, "--json").stdout)
    assert (status["state"], status["total"], status["succeeded"]) == ("cancelled", 2, 0)


def test_status_with_the_database_down_says_so_without_a_traceback_or_the_password() -> None:
    # Given a database URL that nothing answers, with a password in it
    env = {"INFERQ_DATABASE_URL": "postgresql://inferq:s3cret-pw@127.0.0.1:9/inferq"}
    # When the user asks for a job's status
    done = inferq_cli(env, "status", "0" * 32)
    # Then it fails with the transient exit status and a one-line reason
    assert done.returncode == 3
    assert done.stderr.startswith("error [database_unavailable]")
    assert "Traceback" not in done.stderr and "s3cret-pw" not in done.stderr
