"""Log formats: JSON lines with the bound and passed fields, and no secret in either format, whichever way it
reaches the output (the message, its arguments, an exception, a structured field)."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from inferq import logs

SECRETS = {
    "postgresql+psycopg://inferq:pg-pass-1@db:5432/inferq": "pg-pass-1",
    "redis://:redis-pass-2@cache:6379/0": "redis-pass-2",
    "amqp://guest:amqp-pass-3@rabbit:5672//": "amqp-pass-3",
    "rediss://user:p@ss-w0rd-4@cache:6380/1": "ss-w0rd-4",
    "host=db user=inferq password=dsn-pass-5 dbname=inferq": "dsn-pass-5",
    "Authorization: Bearer iq_8f3k2a_Zq9xY7wVt5s": "Zq9xY7wVt5s",
    "secret whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw/1+Q==": "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
}


@pytest.fixture
def output() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    """A logger whose one handler writes JSON lines into a buffer."""
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    logger = logging.getLogger("tests.logs")
    logger.handlers = [handler]
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    logs.use_format(logger, "json")
    yield logger, buffer
    logger.handlers = []


@pytest.mark.parametrize("text", sorted(SECRETS))
def test_redact_removes_every_kind_of_secret(text: str) -> None:
    # Given a text holding a password, an API key or a webhook secret
    # When it is redacted
    cleaned = logs.redact(text)

    # Then the secret is gone and a marker stands in its place
    assert SECRETS[text] not in cleaned
    assert logs.REDACTED in cleaned


def test_redact_leaves_the_rest_alone() -> None:
    # Given texts with URLs without passwords and words that only look like the prefixes
    texts = [
        "Connected to redis://127.0.0.1:6379/0",
        "postgresql://postgres@127.0.0.1:5432/test",
        "job 0123abcd chunk 3: done, unique_items 4",
        "see https://example.com/a:b",
    ]

    # Then nothing changes
    assert [logs.redact(t) for t in texts] == texts


def test_a_json_line_holds_the_bound_and_passed_fields(output: tuple[logging.Logger, io.StringIO]) -> None:
    logger, buffer = output

    # When a line is logged inside a chunk's context, with the chunk's fields passed along
    with logs.context(job_id="j1", chunk=3):
        logger.info("job %s chunk %d: done", "j1", 3, extra={"model": "sst2", "outcome": "done", "seconds": 0.25})
    logger.info("outside")

    # Then it is one JSON object a line, with the fields; the context ends with its block
    first, second = (json.loads(line) for line in buffer.getvalue().splitlines())
    assert first["message"] == "job j1 chunk 3: done"
    assert (first["job_id"], first["chunk"], first["model"], first["outcome"], first["seconds"]) == (
        "j1",
        3,
        "sst2",
        "done",
        0.25,
    )
    assert first["level"] == "INFO" and first["logger"] == "tests.logs" and first["time"].endswith("+00:00")
    assert "job_id" not in second


def test_no_secret_reaches_a_json_line_whatever_carries_it(output: tuple[logging.Logger, io.StringIO]) -> None:
    logger, buffer = output

    # When secrets come in a message, its arguments, an exception (message and traceback), a field and a context
    for text in SECRETS:
        logger.warning("connecting to " + text)
        logger.warning("connecting to %s", text)
        logger.info("field", extra={"url": text, "nested": {"urls": [text]}})
        with logs.context(broker=text):
            logger.info("in context")
        try:
            raise ConnectionError(f"could not connect: {text}")
        except ConnectionError:
            logger.exception("failed")

    # Then every line is JSON, and none holds any secret
    out = buffer.getvalue()
    lines = out.splitlines()
    assert len(lines) == 5 * len(SECRETS)
    for line in lines:
        json.loads(line)
    for secret in SECRETS.values():
        assert secret not in out, secret
    assert out.count("Traceback") == len(SECRETS)


def test_text_lines_are_redacted_too() -> None:
    # Given a text handler with its own layout, as Celery sets one up
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logger = logging.getLogger("tests.logs.text")
    logger.handlers = [handler]
    logger.propagate = False

    # When the text format is put on it (twice: a second setup must not wrap the layout again) and secrets are logged
    logs.use_format(logger, "text")
    logs.use_format(logger, "text")
    for text in SECRETS:
        try:
            raise RuntimeError(text)
        except RuntimeError:
            logger.exception("failed on %s", text)

    # Then the layout is kept and no secret is written
    out = buffer.getvalue()
    assert out.startswith("ERROR failed on ")
    for secret in SECRETS.values():
        assert secret not in out, secret
    logger.handlers = []
