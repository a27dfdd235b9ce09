"""Fuzzing the HTTP API from its own OpenAPI document (Schemathesis) against a real ``inferq serve``.

Every operation of the document gets requests that fit it (positive) and requests that do not (negative: wrong
types, missing or extra parameters, odd strings), sent with a real key to a real server on PostgreSQL and Redis.
No answer may be a 5xx, and every answer must match the schema the document gives it. Bounded: a few examples per
operation and mode, the same ones each run (``derandomize``), so that the test takes well under a minute and a
failure can be replayed.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import Case
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.generation.modes import GenerationMode
from schemathesis.specs.openapi.checks import content_type_conformance, response_schema_conformance

from inferq.db import make_engine, make_sessionmaker
from inferq.keys import create_key
from inferq.settings import Settings
from server.process import running_server

pytestmark = pytest.mark.services

#: Examples per operation and generation mode: with 31 operations, two modes, about 700 requests in all.
EXAMPLES = 12

#: What every answer is checked for: no server error, and a body and media type as the document says.
CHECKS = [not_a_server_error, response_schema_conformance, content_type_conformance]

#: Values a hostile caller tries that generation from the document alone seldom draws: put, now and then, in place
#: of one of a case's string parameters (in the path, already percent-encoded as Schemathesis keeps them there).
HOSTILE_QUERY = ["\x00", "a\x00b", "~nosuchuser", "~root", "/root", "../../etc", "\u2028", "'--", "9" * 4000, "1e999"]
HOSTILE_PATH = ["%00", "a%00b", "%ED%A0%80", "%FF", "..", "~nosuchuser", "x" * 4000]


@pytest.fixture(scope="module")
def fuzzed_server(
    migrated_postgres: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, str]]:
    """A real ``inferq serve`` (no worker: submitted jobs stay queued), a registry model that is a config.json
    (nothing loads it) and a tenant's key: (the server's URL, the key)."""
    workdir = tmp_path_factory.mktemp("fuzz")
    model = workdir / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "bert", "id2label": {"0": "NO", "1": "YES"}}))
    env = {
        "INFERQ_DATABASE_URL": migrated_postgres,
        "INFERQ_BROKER_URL": redis_url,
        "INFERQ_MODELS": json.dumps({"reg": {"source": str(model), "task": "classification"}}),
        "INFERQ_DEFAULT_QUEUE": f"inferq-test-{uuid.uuid4().hex[:10]}",
        "INFERQ_RECOVER_INTERVAL": "0",
        "INFERQ_MAX_UPLOAD_BYTES": str(1 << 20),
        "INFERQ_FILES_DIR": str(workdir / "files"),
        # No worker: a synchronous call that gets as far as its job is refused (503) after this, not a minute.
        "INFERQ_SYNC_TIMEOUT": "2",
    }
    engine = make_engine(Settings(database_url=migrated_postgres))
    with make_sessionmaker(engine).begin() as session:
        key, _ = create_key(session, f"t-{uuid.uuid4().hex[:12]}")
    engine.dispose()
    with running_server({**env, "TMPDIR": str(workdir)}, workdir / "server.log") as (url, _):
        yield url, key


def test_no_request_the_document_allows_or_forbids_gets_a_5xx_or_an_answer_off_its_schema(
    fuzzed_server: tuple[str, str],
) -> None:
    url, key = fuzzed_server
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    failures: list[str] = []
    operations = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        operations += 1
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            # The key stays real, so that requests get past authentication to the routes themselves.
            strategy = operation.as_strategy(mode, headers={"authorization": f"Bearer {key}"})

            @settings(
                max_examples=EXAMPLES,
                derandomize=True,
                database=None,
                deadline=None,
                suppress_health_check=list(HealthCheck),
                report_multiple_bugs=False,
            )
            @given(case=strategy, hostile=st.none() | st.tuples(st.integers(0, 9), st.integers(0, 99)))
            def run(case: Case, hostile: tuple[int, int] | None) -> None:
                if hostile is not None:
                    put_hostile(case, *hostile)
                response = case.call(base_url=url, timeout=30)
                case.validate_response(response, checks=CHECKS)

            try:
                run()
            except Unsatisfiable:
                # Nothing in the operation can be made invalid (no parameter but the key, kept real): no negative case
                assert mode is GenerationMode.NEGATIVE, operation.label
            except (Exception, FailureGroup) as exc:  # every operation is fuzzed; the failures are listed together
                failures.append(f"{operation.label} ({mode.value}): {type(exc).__name__}: {exc}")
    assert operations >= 10, "the document lists the API's operations"
    assert failures == [], "\n\n".join(failures)


def put_hostile(case: Case, slot: int, value: int) -> None:
    """Put a hostile value in place of one of ``case``'s string parameters (the ``slot``-th, counting round)."""
    slots = [
        (where, name)
        for where, values in (("path", case.path_parameters), ("query", case.query))
        for name in values or {}
    ]
    if not slots:
        return
    where, name = slots[slot % len(slots)]
    if where == "path":
        assert case.path_parameters is not None
        case.path_parameters[name] = HOSTILE_PATH[value % len(HOSTILE_PATH)]
    else:
        assert case.query is not None
        case.query[name] = HOSTILE_QUERY[value % len(HOSTILE_QUERY)]


def test_the_fuzzer_catches_a_server_error(fuzzed_server: tuple[str, str], tmp_path: Path) -> None:
    # The check above can fail: an answer of 500 is reported by the same checks it runs
    url, key = fuzzed_server
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    operation = schema["/v1/models"]["GET"]
    case = operation.as_strategy(headers={"authorization": f"Bearer {key}"}).example()
    response = case.call(base_url=url)
    response.status_code = 500
    with pytest.raises(FailureGroup, match="Server error"):
        case.validate_response(response, checks=CHECKS)
