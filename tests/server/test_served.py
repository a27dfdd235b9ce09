"""The whole path over HTTP on real parts: a real ``inferq serve`` process (uvicorn on a loopback port), a real
``inferq worker``, Redis and PostgreSQL, driven with httpx and a raw socket.

A job submitted over HTTP (a JSONL body, a multipart CSV) ends with the transformers pipeline's results item by
item, streamed back exactly as ``inferq results`` writes them; concurrent submits with one Idempotency-Key make one
job; a client that goes away mid-upload leaves no job, no item and no temporary file."""

from __future__ import annotations

import csv
import io
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy.orm import Session, sessionmaker

from server.process import running_server
from tests.reference import assert_same_labels, classification_reference
from tests.server.conftest import MODEL, MakeKey, bearer, jsonl
from tests.server.test_api import items_of, jobs_of
from tests.support.tiny_models import corpus
from worker.process import running_worker

pytestmark = pytest.mark.services


@pytest.fixture(scope="module")
def upload_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The server's temporary directory (TMPDIR), where uploads stream to."""
    return tmp_path_factory.mktemp("server-tmp")


@pytest.fixture(scope="module")
def served(api_env: dict[str, str], upload_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real ``inferq serve`` and a real worker on the module's database, Redis and queue: the server's URL."""
    logs = tmp_path_factory.mktemp("served")
    with (
        running_worker(api_env, logs / "worker.log", "--models", MODEL, "--concurrency", "1"),
        running_server({**api_env, "TMPDIR": str(upload_dir)}, logs / "server.log") as (url, _),
    ):
        yield url


def wait_finished(http: httpx.Client, job_id: str, timeout: float = 240) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        job = http.get(f"/v1/jobs/{job_id}").json()
        if job["state"] in ("succeeded", "failed", "cancelled"):
            return job
        assert time.monotonic() < deadline, f"job {job_id} still {job['state']} after {timeout}s"
        time.sleep(0.3)


def cli_results(env: dict[str, str], job_id: str, fmt: str) -> bytes:
    """``inferq results JOB --format FMT``'s stdout, as bytes."""
    done = subprocess.run(
        [sys.executable, "-m", "inferq.cli", "results", job_id, "--format", fmt],
        env={**os.environ, **env},
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()
    return done.stdout


def test_a_job_submitted_over_http_matches_the_pipeline_and_the_cli_export(
    served: str, api_env: dict[str, str], make_key: MakeKey, tiny_models: dict[str, Path]
) -> None:
    # Given a key, and real sentences: single texts, pairs, and texts far beyond the model's 64 tokens
    key, _ = make_key()
    sentences = corpus()
    rows: list[dict[str, Any]] = [{"text": s, "id": f"s{i}"} for i, s in enumerate(sentences[:30])]
    rows += [{"text": sentences[i], "text_pair": sentences[-i - 1], "id": f"p{i}"} for i in range(6)]
    rows += [{"text": " ".join(sentences[i : i + 12]), "id": f"l{i}"} for i in range(0, 36, 12)]
    table = io.StringIO(newline="")
    writer = csv.writer(table)
    writer.writerow(["id", "text"])
    writer.writerows([[f"csv{i}", s] for i, s in enumerate(sentences[100:112])])

    with httpx.Client(base_url=served, headers=bearer(key), timeout=60) as http:
        # When the file is submitted as a JSONL body, and a CSV file as a multipart form, and both are polled
        raw = http.post(
            "/v1/jobs",
            params={"task": "classification", "model": MODEL, "params": '{"top_k": 2}', "chunk_size": "16"},
            content=jsonl(rows),
            headers={"content-type": "application/x-ndjson"},
        )
        form = http.post(
            "/v1/jobs",
            files={"file": ("in.csv", table.getvalue().encode(), "text/csv")},
            data={"task": "classification", "model": MODEL},
        )
        assert raw.status_code == 201, raw.text
        assert form.status_code == 201, form.text
        job = wait_finished(http, raw.json()["id"])
        form_job = wait_finished(http, form.json()["id"])
        body = http.get(f"/v1/jobs/{job['id']}/results").content
        csv_body = http.get(f"/v1/jobs/{job['id']}/results", params={"format": "csv"}).content
        form_body = http.get(f"/v1/jobs/{form_job['id']}/results").content
        errors = http.get(f"/v1/jobs/{job['id']}/errors")

    # Then both succeeded, every item counted
    assert (job["state"], job["succeeded"], job["failed"], job["eta_seconds"]) == ("succeeded", len(rows), 0, None)
    assert job["items_per_second"] > 0
    assert (form_job["state"], form_job["succeeded"]) == ("succeeded", 12)
    # And every result equals the pipeline's for the same input, in input order
    lines = [json.loads(line) for line in body.decode().splitlines()]
    assert [ln["id"] for ln in lines] == [r["id"] for r in rows]
    for line, want in zip(lines, classification_reference(tiny_models[MODEL], rows, top_k=2), strict=True):
        assert line["status"] == "succeeded" and line["error"] is None
        assert_same_labels(line["result"], want, where=line["id"])
    form_rows = [{"text": s} for s in sentences[100:112]]
    form_lines = [json.loads(line) for line in form_body.decode().splitlines()]
    assert [ln["id"] for ln in form_lines] == [f"csv{i}" for i in range(12)]
    for line, want in zip(form_lines, classification_reference(tiny_models[MODEL], form_rows), strict=True):
        assert_same_labels(line["result"], want, where=line["id"])
    # And the JSONL and CSV streams are byte for byte what `inferq results` writes; the errors stream is empty
    assert body == cli_results(api_env, job["id"], "jsonl")
    assert csv_body == cli_results(api_env, job["id"], "csv")
    assert errors.status_code == 200 and errors.content == b""


def test_concurrent_submits_with_one_idempotency_key_make_one_job(
    served: str, make_key: MakeKey, sessions: sessionmaker[Session]
) -> None:
    # Given eight clients sending the same request with the same Idempotency-Key at once
    key, tenant = make_key()
    body = jsonl([{"text": f"sentence {i}"} for i in range(200)])

    def send(_: int) -> httpx.Response:
        return httpx.post(
            f"{served}/v1/jobs",
            params={"task": "classification", "model": MODEL},
            content=body,
            headers={**bearer(key), "content-type": "application/jsonl", "Idempotency-Key": "same"},
            timeout=60,
        )

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(send, range(8)))

    # Then one job was made: one 201, the others 200 replays of it
    assert sorted(a.status_code for a in answers) == [200] * 7 + [201], [a.text for a in answers]
    assert len({a.json()["id"] for a in answers}) == 1
    assert jobs_of(sessions, tenant) == 1 and items_of(sessions, tenant) == 200


def raw_request(url: str, key: str, body: bytes) -> tuple[socket.socket, bytes]:
    """A socket to the server and the head of a POST /v1/jobs of ``body`` (Content-Length given)."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=30)
    head = (
        f"POST /v1/jobs?task=classification&model={MODEL} HTTP/1.1\r\nHost: {host}\r\n"
        f"Authorization: Bearer {key}\r\nContent-Type: application/jsonl\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    return sock, head


def test_a_client_that_disconnects_mid_upload_leaves_no_job_and_no_file(
    served: str, make_key: MakeKey, sessions: sessionmaker[Session], upload_dir: Path
) -> None:
    # Given a key and a 300 kB file
    key, tenant = make_key()
    body = jsonl([{"text": f"sentence number {i} of a file cut off halfway"} for i in range(6_000)])
    assert len(body) > 300_000

    # When a client sends its head and half of it, waits until the server is writing it out, and closes the socket
    sock, head = raw_request(served, key, body)
    sock.sendall(head + body[: len(body) // 2])
    deadline = time.monotonic() + 30
    while not any(p.stat().st_size > 0 for p in upload_dir.glob("inferq-upload-*")):
        assert time.monotonic() < deadline, "the server never started writing the upload"
        time.sleep(0.05)
    sock.close()

    # Then the server drops the upload: its temporary file goes, and no job or item was stored (the file goes last:
    # after a failed read, and after the submit of a read that ended, so once it is gone the request is over)
    while list(upload_dir.glob("inferq-upload-*")):
        assert time.monotonic() < deadline, "the upload's temporary file stayed"
        time.sleep(0.05)
    assert jobs_of(sessions, tenant) == 0 and items_of(sessions, tenant) == 0

    # And the same request sent whole makes its job (the test above could have seen one)
    sock, head = raw_request(served, key, body)
    with sock:
        sock.sendall(head + body)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 201"), answer[:300]
    assert jobs_of(sessions, tenant) == 1 and items_of(sessions, tenant) == 6_000
    assert not list(upload_dir.glob("inferq-upload-*"))
    job_id = json.loads(answer.split(b"\r\n\r\n", 1)[1])["id"]
    cancelled = httpx.post(f"{served}/v1/jobs/{job_id}/cancel", headers=bearer(key), timeout=60)
    assert cancelled.json()["state"] in ("cancelled", "succeeded")
