"""The CLI and the Python client over HTTP, on real parts: a real ``inferq serve`` (uvicorn on a loopback port), a
real worker, Redis and PostgreSQL. The CLI over HTTP runs where the database and broker URLs point at closed ports
and no registry is set: it needs the server's URL and a key only, and prints what the CLI on the database prints,
with the same exit statuses. `RemoteClient` gives what `Client` gives for the same job."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from inferq.db import make_engine, make_sessionmaker
from inferq.errors import InvalidInput, JobNotFound, ServerUnavailable, Unauthorized
from inferq.keys import create_key
from producer.client import Client, JobStatus
from producer.remote import RemoteClient
from server.process import free_port, running_server
from tests.support.jobs import inferq_cli, sentences, settings_of

pytestmark = pytest.mark.services

MODEL = "cls-distilbert"


@pytest.fixture(scope="module")
def worker_models(tiny_models: dict[str, Path]) -> dict[str, dict[str, Any]]:
    return {MODEL: {"source": str(tiny_models[MODEL]), "task": "classification"}}


@pytest.fixture(scope="module")
def worker_extra_env() -> dict[str, str]:
    # One torch thread: the worker, the server and the CLI share two cores.
    return {"INFERQ_RECOVER_INTERVAL": "0", "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def server_url(worker_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    # Generous: two loaded cores may take long to import the server.
    with running_server(worker_env, tmp_path_factory.mktemp("server") / "server.log", ready_timeout=180) as (url, _):
        yield url


@pytest.fixture(scope="module")
def api_key(worker_env: dict[str, str]) -> str:
    """A key of a tenant of this module's own."""
    engine = make_engine(settings_of(worker_env))
    try:
        with make_sessionmaker(engine).begin() as session:
            key, _ = create_key(session, f"http-{uuid.uuid4().hex[:8]}")
    finally:
        engine.dispose()
    return key


@pytest.fixture(scope="module")
def http_env(server_url: str, api_key: str) -> dict[str, str]:
    """The producer machine's environment: the server and a key; the database and broker nowhere (closed ports),
    no model registry."""
    nowhere = free_port()
    return {
        "INFERQ_SERVER_URL": server_url,
        "INFERQ_API_KEY": api_key,
        "INFERQ_DATABASE_URL": f"postgresql://nobody:secret@127.0.0.1:{nowhere}/nothing",
        "INFERQ_BROKER_URL": f"redis://127.0.0.1:{nowhere}/0",
        "INFERQ_MODELS": "{}",
    }


@pytest.fixture
def remote(server_url: str, api_key: str) -> Iterator[RemoteClient]:
    with RemoteClient(server_url, api_key) as client:
        yield client


@pytest.fixture
def local(worker_env: dict[str, str]) -> Iterator[Client]:
    with Client(settings_of(worker_env)) as client:
        yield client


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@dataclass(frozen=True)
class Done:
    exit_code: int
    stdout: str
    stderr: str


#: Runs each command line of argv[1] (JSON) with click's runner in this one interpreter: a fresh interpreter for a
#: batch of commands, each of which builds its client anew, at a fraction of an interpreter's start per command.
_BATCH = """
import json, sys
from click.testing import CliRunner
from inferq.cli import main
done = [CliRunner().invoke(main, args) for args in json.loads(sys.argv[1])]
print(json.dumps([[d.exit_code, d.stdout, d.stderr] for d in done]))
"""


def inferq_batch(env: dict[str, str], *commands: tuple[str, ...]) -> list[Done]:
    """Each of ``commands`` (``inferq`` arguments) in one fresh interpreter with ``env``; their exit statuses and
    outputs."""
    ran = subprocess.run(
        [sys.executable, "-c", _BATCH, json.dumps(commands)],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    return [Done(*d) for d in json.loads(ran.stdout)]


def both(http_env: dict[str, str], db_env: dict[str, str], *commands: tuple[str, ...]) -> list[tuple[Done, Done]]:
    """Each of ``commands`` over HTTP and on the database."""
    return list(zip(inferq_batch(http_env, *commands), inferq_batch(db_env, *commands), strict=True))


# -- the CLI -----------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_the_cli_over_http_prints_what_the_cli_on_the_database_prints(
    tmp_path: Path, http_env: dict[str, str], worker_env: dict[str, str], local: Client
) -> None:
    # Given a file of 12 lines submitted over HTTP with --wait, by a machine that reaches neither database nor broker
    source = write_jsonl(tmp_path / "in.jsonl", sentences(12, offset=300))
    sub = inferq_cli(http_env, "submit", "-t", "classification", "-m", MODEL, str(source), "-p", "top_k=2",
                     "--chunk-size", "5", "--wait", "--json", timeout=600)  # fmt: skip
    assert sub.returncode == 0, sub.stderr
    out = json.loads(sub.stdout)
    job_id = out["job_id"]
    # Then it waited with the progress bar on stderr, and the job ended with every item done
    assert f"submitted job {job_id}: 12 items in 3 chunks" in sub.stderr
    assert "12/12 100.0%" in sub.stderr and "succeeded" in sub.stderr.splitlines()[-1]
    assert (out["total"], out["skipped"]) == (12, 0)
    assert (out["status"]["state"], out["status"]["succeeded"]) == ("succeeded", 12)

    # When every reading command runs over HTTP and on the database for that job, and each export to a file
    label = next(local.results(job_id)).label
    assert label is not None
    commands = [
        ("status", job_id, "--json"),
        ("status", job_id),
        ("jobs", "-n", "1"),
        ("jobs", "-n", "1", "--json"),
        ("results", job_id),
        ("results", job_id, "--format", "csv"),
        ("results", job_id, "--label", label, "--min-score", "0.3"),
        ("results", job_id, "--format", "csv", "--failed"),
        ("cancel", job_id),  # a finished job: unchanged
        ("models",),
        ("models", "--json"),
    ]
    formats = ("jsonl", "csv", "parquet")
    files = {(side, fmt): tmp_path / f"{side}.{fmt}" for side in ("http", "db") for fmt in formats}
    exports = {side: [("results", job_id, "--format", f, "-o", str(files[side, f])) for f in formats]
               for side in ("http", "db")}  # fmt: skip
    over_http = inferq_batch(http_env, *commands, *exports["http"])
    on_db = inferq_batch(worker_env, *commands, *exports["db"])

    # Then each succeeds and prints the same, byte for byte
    for args, a, b in zip([*commands, *exports["http"]], over_http, on_db, strict=True):
        assert (a.exit_code, b.exit_code) == (0, 0), (args, a.stderr, b.stderr)
        assert a.stdout == b.stdout, args
        assert a.stdout.strip() or args[-1] == "--failed" or "-o" in args, args
    # And the status over HTTP is the one of the job submitted, as submit --wait printed it
    assert json.loads(over_http[0].stdout) == out["status"]
    # And an export to a file is the database path's file, byte for byte
    for fmt in formats:
        assert files["http", fmt].read_bytes() == files["db", fmt].read_bytes()
        assert files["http", fmt].stat().st_size > 0


@pytest.mark.slow
def test_the_cli_over_http_fails_as_the_cli_on_the_database_fails(
    tmp_path: Path, http_env: dict[str, str], worker_env: dict[str, str]
) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"text": 3}\n{not json\n{"txt": "typo"}\n', encoding="utf-8")
    good = write_jsonl(tmp_path / "good.jsonl", sentences(2))
    unknown = uuid.uuid4().hex
    missing = tmp_path / "x"
    commands = [
        ("submit", "-t", "classification", "-m", MODEL, str(bad)),  # bad lines
        ("submit", "-t", "classification", "-m", "no-such-model", str(good)),
        ("status", unknown),
        ("results", unknown),
        ("results", unknown, "-o", str(missing)),
        ("cancel", unknown),
        ("submit", "-t", "classification", "-m", MODEL, str(bad), "--skip-invalid", "--json"),
    ]
    bad_file, bad_model, *unknown_job, skipping = both(http_env, worker_env, *commands)

    # A file with bad lines: refused whole, the same lines named, exit status 2
    for over_http, on_db in (bad_file, bad_model):
        assert (over_http.exit_code, on_db.exit_code) == (2, 2)
        assert over_http.stderr == on_db.stderr
    assert "line 2, field 'text'" in bad_file[0].stderr and "line 4, field 'txt'" in bad_file[0].stderr
    # An unknown model: the same refusal
    assert "unknown_model" in bad_model[0].stderr
    # An unknown job, for each command that names one: exit status 2 and the same message, no file made
    for over_http, on_db in unknown_job:
        assert (over_http.exit_code, on_db.exit_code) == (2, 2), (over_http.stderr, on_db.stderr)
        assert over_http.stderr == on_db.stderr == f"error [job_not_found]: no job {unknown!r}\n"
        assert over_http.stdout == on_db.stdout == ""
    assert not missing.exists()
    # With --skip-invalid: the good line goes, the same bad ones are reported (each run made its own job)
    jobs = [json.loads(done.stdout)["job_id"] for done in skipping]
    assert [done.exit_code for done in skipping] == [0, 0]
    assert skipping[0].stderr.replace(jobs[0], "JOB") == skipping[1].stderr.replace(jobs[1], "JOB")
    assert "skipped line 3: malformed JSON" in skipping[0].stderr and "1 items in 1 chunks" in skipping[0].stderr

    # A key the server does not know: exit status 2, one line, the key not echoed
    wrong = inferq_cli({**http_env, "INFERQ_API_KEY": "iq_0000000000000000_nope"}, "jobs")
    assert wrong.returncode == 2 and wrong.stderr.startswith("error [unauthorized]:"), wrong.stderr
    assert "nope" not in wrong.stderr and len(wrong.stderr.splitlines()) == 1
    # No key at all, with a server URL: told what to set
    unset = inferq_cli({**http_env, "INFERQ_API_KEY": ""}, "jobs")
    assert unset.returncode == 2 and "INFERQ_API_KEY" in unset.stderr

    # A server that is not there: exit status 3 (unavailable), one line, no traceback
    down = inferq_cli({**http_env, "INFERQ_SERVER_URL": f"http://127.0.0.1:{free_port()}"}, "status", unknown)
    assert down.returncode == 3 and down.stderr.startswith("error [server_unavailable]:"), down.stderr
    assert "Traceback" not in down.stderr


def test_submit_from_stdin_over_http(http_env: dict[str, str], local: Client) -> None:
    rows = sentences(3, offset=40)
    done = inferq_cli(http_env, "submit", "-t", "classification", "-m", MODEL, "-",
                      stdin="".join(json.dumps(r) + "\n" for r in rows).encode())  # fmt: skip
    assert done.returncode == 0, done.stderr
    job_id = done.stdout.strip()
    status = local.wait(job_id, timeout=300)
    assert (status.total, status.succeeded) == (3, 3)
    assert [r.id for r in local.results(job_id)] == [r["id"] for r in rows]


# -- the Python client -------------------------------------------------------------------------------------------------


def test_remote_client_gives_what_client_gives_for_the_same_job(
    tmp_path: Path, remote: RemoteClient, local: Client
) -> None:
    # Given a file with two bad lines among good ones
    rows: list[Any] = sentences(7, offset=500)
    rows[2] = {"text": 3, "id": "bad"}
    source = write_jsonl(tmp_path / "in.jsonl", rows)

    # When it is submitted over HTTP: refused whole, as Client refuses it
    with pytest.raises(InvalidInput) as over_http:
        remote.submit("classification", MODEL, source)
    with pytest.raises(InvalidInput) as on_db:
        local.submit("classification", MODEL, source)
    assert over_http.value.errors == on_db.value.errors and over_http.value.message == on_db.value.message

    # And with skip_invalid: the good lines go, the bad one is reported; waited for with progress
    sub = remote.submit("classification", MODEL, source, {"top_k": 3}, chunk_size=2, skip_invalid=True)
    assert (sub.total, sub.chunks, sub.skipped_total) == (6, 3, 1)
    assert [(e.line, e.field) for e in sub.skipped] == [(3, "text")]
    seen: list[JobStatus] = []
    final = remote.wait(sub.job_id, timeout=300, poll=0.1, on_progress=seen.append)

    # Then its status, its results (every filter) and its exports equal the database's
    assert final.finished and seen[-1] == final and seen[0].done <= final.done == 6
    assert [s.done for s in seen] == sorted(s.done for s in seen)
    assert final == local.status(sub.job_id)
    everything = list(local.results(sub.job_id))
    assert len(everything) == 6 and list(remote.results(sub.job_id)) == everything
    top = everything[0]
    assert top.label is not None and top.score is not None
    for filters in ({"label": top.label}, {"min_score": top.score}, {"failed": True}):
        assert list(remote.results(sub.job_id, **filters)) == list(local.results(sub.job_id, **filters)), filters
    assert remote.jobs(1) == local.jobs(1) == [final]
    assert remote.cancel(sub.job_id) == final


def test_remote_client_submits_python_rows_and_retries_nothing_twice(remote: RemoteClient, local: Client) -> None:
    # Given rows generated one at a time (strings are texts of a one-text task)
    def rows() -> Iterator[Any]:
        yield "a plain string"
        yield from sentences(4, offset=900)

    # When they are submitted with an Idempotency-Key, and the same request is sent again with that key
    key = uuid.uuid4().hex
    from producer.client import JobOptions

    first = remote.submit("classification", MODEL, rows(), options=JobOptions(idempotency_key=key, metadata={"a": "b"}))
    again = remote.submit("classification", MODEL, rows(), options=JobOptions(idempotency_key=key, metadata={"a": "b"}))

    # Then one job holds them, in order, and the second request found it
    assert (first.total, first.replayed, again.job_id, again.replayed) == (5, False, first.job_id, True)
    done = remote.wait(first.job_id, timeout=300)
    assert done.metadata == {"a": "b"} and done.succeeded == 5
    assert [r.id for r in remote.results(first.job_id)] == [None, "t900", "t901", "t902", "t903"]
    assert list(remote.results(first.job_id)) == list(local.results(first.job_id))


def test_remote_client_errors(server_url: str, remote: RemoteClient) -> None:
    with pytest.raises(JobNotFound):
        remote.status(uuid.uuid4().hex)
    with RemoteClient(server_url, "iq_0000000000000000_nope") as stranger, pytest.raises(Unauthorized):
        stranger.jobs()
    with RemoteClient(f"http://127.0.0.1:{free_port()}", "iq_x_y") as nowhere, pytest.raises(ServerUnavailable):
        nowhere.models()
