"""Files of the OpenAI-compatible API expire: ``expires_after`` on upload (read with the official client),
``output_expires_after`` of a batch for its output and error files; an expired file is not found in OpenAI's error
shape, nor listed, and the purge deletes its row and its bytes, nothing else. On SQLite and on PostgreSQL."""

from __future__ import annotations

import datetime as dt
import io

import openai
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update

from inferq.retention import purge_expired_files
from inferq.schema import OpenAIFile, utcnow
from server.app import create_app
from tests.server.conftest import OpenAISetup, bearer, lines
from tests.support.records import wait_for

#: Seconds a test waits for a batch's validation before it gives up (a guard against hanging, not a measure).
WAIT_SECONDS = 120


def test_a_file_expires_after_its_seconds_and_the_purge_deletes_it(setup: OpenAISetup) -> None:
    with TestClient(create_app(setup.settings)) as http:
        client = openai.OpenAI(base_url=f"{http.base_url}/v1", api_key=setup.key, http_client=http, max_retries=0)
        # Given a file uploaded to expire in an hour, and one without expiry
        expiring = client.files.create(
            file=("a.jsonl", io.BytesIO(lines())),
            purpose="batch",
            expires_after={"anchor": "created_at", "seconds": 3600},
        )
        kept = client.files.create(file=("b.jsonl", io.BytesIO(lines())), purpose="batch")
        # Then the first says when it expires, the other that it does not
        assert expiring.expires_at == expiring.created_at + 3600 and kept.expires_at is None
        assert client.files.retrieve(expiring.id).expires_at == expiring.created_at + 3600
        # And an expiry out of OpenAI's bounds, or of another anchor, is refused
        for anchor, seconds in (
            ("created_at", 3599),
            ("created_at", 2_592_001),
            ("created_at", "an hour"),
            ("last_active_at", 3600),
        ):
            answer = http.post(
                "/v1/files",
                headers=bearer(setup.key),
                files={"file": ("c.jsonl", lines(), "application/jsonl")},
                data={"purpose": "batch", "expires_after[anchor]": anchor, "expires_after[seconds]": str(seconds)},
            )
            assert answer.status_code == 400 and answer.json()["error"]["param"] == "expires_after", answer.text
        # When its hour has passed
        with setup.sessions.begin() as session:
            session.execute(
                update(OpenAIFile)
                .where(OpenAIFile.id == expiring.id)
                .values(expires_at=utcnow() - dt.timedelta(seconds=1))
            )
        # Then it is not found, its bytes neither, in OpenAI's error shape; nor listed, nor taken by a batch
        for path in (f"/v1/files/{expiring.id}", f"/v1/files/{expiring.id}/content"):
            answer = http.get(path, headers=bearer(setup.key))
            assert answer.status_code == 404 and answer.json()["error"]["code"] == "file_not_found", answer.text
            assert answer.json()["error"]["type"] == "not_found_error"
        with pytest.raises(openai.NotFoundError):
            client.files.content(expiring.id)
        assert [f.id for f in client.files.list()] == [kept.id]
        made = http.post(
            "/v1/batches",
            headers=bearer(setup.key),
            json={"input_file_id": expiring.id, "endpoint": "/v1/classifications"},
        )
        assert made.status_code == 404
    # And a dry run of the purge names it, deleting nothing
    directory = setup.settings.files_dir
    assert purge_expired_files(setup.sessions, directory, dry_run=True) == [expiring.id]
    assert (directory / expiring.id).is_file()
    # And the purge deletes its row and its bytes, and nothing of the other file
    assert purge_expired_files(setup.sessions, directory, batch_rows=1) == [expiring.id]
    assert not (directory / expiring.id).exists() and (directory / kept.id).is_file()
    with setup.sessions() as session:
        assert session.get(OpenAIFile, expiring.id) is None and session.get(OpenAIFile, kept.id) is not None
    assert purge_expired_files(setup.sessions, directory) == []


def test_a_batchs_output_files_expire_as_its_request_asks(setup: OpenAISetup) -> None:
    with TestClient(create_app(setup.settings)) as http:
        client = openai.OpenAI(base_url=f"{http.base_url}/v1", api_key=setup.key, http_client=http, max_retries=0)
        source = client.files.create(file=("a.jsonl", io.BytesIO(b"{not json\n[1]\n")), purpose="batch")
        # A seconds count out of OpenAI's bounds is refused
        with pytest.raises(openai.BadRequestError, match=r"output_expires_after\.seconds"):
            client.batches.create(
                input_file_id=source.id,
                endpoint="/v1/classifications",
                completion_window="24h",
                output_expires_after={"anchor": "created_at", "seconds": 60},
            )
        # Given a batch (of bad lines only: it fails, with an error file) whose output files expire in two hours
        batch = client.batches.create(
            input_file_id=source.id,
            endpoint="/v1/classifications",
            completion_window="24h",
            output_expires_after={"anchor": "created_at", "seconds": 7200},
        )
        batch = wait_for(
            lambda: (got := client.batches.retrieve(batch.id)).status != "validating" and got,
            WAIT_SECONDS,
            "validation",
        )
        # Then its error file expires two hours after it was written
        assert batch.status == "failed" and batch.error_file_id is not None
        error_file = client.files.retrieve(batch.error_file_id)
        assert error_file.expires_at == error_file.created_at + 7200
        # And its input file, uploaded without expiry, does not expire
        assert client.files.retrieve(source.id).expires_at is None
