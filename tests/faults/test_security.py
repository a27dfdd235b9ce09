"""Issue 5, point 9: security.

* Messages are JSON only: a pickled message put on a worker's queue is refused and logged, never unpickled.
* Credentials come from settings and never appear in a worker's log nor in ``inferq status``/``jobs``/``submit``.
* Models load only from the registry or the allowed directories, with ``trust_remote_code`` never enabled, and
  safetensors preferred over pickled weights.
* SQL goes through bound parameters only: no statement is built from strings in the packages.
"""

from __future__ import annotations

import ast
import json
import pickle
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from kombu import Connection, Exchange, Queue
from sqlalchemy import func, select

from inferq.db import make_engine, make_sessionmaker
from inferq.errors import UnknownModel
from inferq.keys import create_key
from inferq.model_sources import resolve_model
from inferq.schema import Job
from inferq.settings import ModelSpec, Settings
from inferq.task_specs import RUN_CHUNK, TaskName
from producer.client import store_job
from producer.inputs import InputRecord
from server.app import create_app
from tests.support.brokers import PrivateRedis, private_redis, ready_messages
from tests.support.jobs import inferq_cli, sentences, worker_env
from tests.support.records import Record, wait_for
from tests.support.worker_process import worker_log
from worker.model_cache import ModelCache
from worker.process import running_worker
from worker.runner import Runner

pytestmark = pytest.mark.services

ROOT = Path(__file__).resolve().parents[2]
REDIS_PASSWORD = "redis-s3cret-Hq7"
DATABASE_PASSWORD = "pg-s3cret-Zx9"


class _CreatesAFile:
    """Unpickling this calls ``open(path, "w")``: proof, if the file exists, that a message was unpickled."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.path), "w"))


@pytest.fixture(scope="module")
def guarded(
    tmp_path_factory: pytest.TempPathFactory, migrated_postgres: str, fault_registry: dict[str, Any]
) -> Iterator[tuple[dict[str, str], Path, PrivateRedis]]:
    """A worker whose broker and database URLs carry passwords (a Redis that requires one; PostgreSQL ignores
    it under trust authentication, but it is in the URL all the same)."""
    workdir = tmp_path_factory.mktemp("guarded")
    with private_redis(workdir, password=REDIS_PASSWORD) as redis_server:
        database_url = migrated_postgres.replace(
            "postgresql://postgres@", f"postgresql://postgres:{DATABASE_PASSWORD}@"
        )
        env = worker_env(database_url, redis_server.url, f"inferq-test-{uuid.uuid4().hex[:10]}", fault_registry)
        log = workdir / "worker.log"
        with running_worker(env, log, "--models", "slow"):
            wait_for(lambda: "loaded slow" in worker_log(log), 60, "the model to load")
            yield env, log, redis_server


def test_a_pickled_message_is_refused_and_logged_never_unpickled(
    guarded: tuple[dict[str, str], Path, PrivateRedis], tmp_path: Path
) -> None:
    env, log, redis_server = guarded
    queue = env["INFERQ_DEFAULT_QUEUE"]
    marker = tmp_path / "unpickled"
    task_id = uuid.uuid4().hex

    # Given a run_chunk message, pickled, whose unpickling would create a file
    body = ((_CreatesAFile(marker), 0), {}, {"callbacks": None, "errbacks": None, "chain": None, "chord": None})
    assert b"\x04open" in pickle.dumps(body)  # (it really is a pickle that calls open)
    headers = {"lang": "py", "task": RUN_CHUNK, "id": task_id, "root_id": task_id, "parent_id": None}
    headers |= {"group": None, "retries": 0, "eta": None, "expires": None, "argsrepr": "", "kwargsrepr": ""}

    # When it is put on the worker's queue
    with Connection(redis_server.url) as conn:
        exchange = Exchange(queue, type="direct")
        conn.Producer(serializer="pickle").publish(
            body,
            exchange=exchange,
            routing_key=queue,
            declare=[Queue(queue, exchange, routing_key=queue)],
            headers=headers,
        )

    # Then the worker refuses it, says so in its log, and the file was never created
    refusal = "Received invalid task message: Refusing to deserialize untrusted content of type pickle"
    wait_for(lambda: refusal in worker_log(log), 30, "the refusal in the worker's log")
    assert "The message has been ignored and discarded." in worker_log(log)
    assert not marker.exists()
    # And the message is gone from the queue, not retried forever
    assert ready_messages(redis_server.url, queue) == 0


def test_credentials_never_appear_in_logs_or_status(
    guarded: tuple[dict[str, str], Path, PrivateRedis], tmp_path: Path
) -> None:
    env, log, _ = guarded
    # Given a job run by the worker whose URLs carry passwords
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in sentences(20)), encoding="utf-8")
    submitted = inferq_cli(env, "submit", "--task", "classification", "--model", "slow", str(source), "--wait")
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.split()[1]

    # When the user asks for its status, the job list, and reads the worker's log
    outputs = {
        "submit": submitted.stdout + submitted.stderr,
        "status": inferq_cli(env, "status", job_id).stdout,
        "status --json": inferq_cli(env, "status", job_id, "--json").stdout,
        "jobs": inferq_cli(env, "jobs").stdout,
        "worker log": worker_log(log),
    }

    # Then no password appears anywhere; the worker's banner shows the broker with its password masked
    assert job_id in outputs["status"] and "succeeded" in outputs["status"]
    for where, text in outputs.items():
        assert REDIS_PASSWORD not in text, where
        assert DATABASE_PASSWORD not in text, where
    assert f"redis://:**@127.0.0.1:{env['INFERQ_BROKER_URL'].rsplit(':', 1)[1]}" in outputs["worker log"]


def test_a_submit_error_does_not_reveal_the_password(
    guarded: tuple[dict[str, str], Path, PrivateRedis], tmp_path: Path
) -> None:
    env, _, redis_server = guarded
    # Given a broker URL with a wrong password
    wrong = "wrong-pa55word-Kd2"
    env = {**env, "INFERQ_BROKER_URL": redis_server.url.replace(REDIS_PASSWORD, wrong)}
    source = tmp_path / "in.jsonl"
    source.write_text('{"text": "fine"}\n', encoding="utf-8")

    # When a job is submitted
    done = inferq_cli(env, "submit", "--task", "classification", "--model", "slow", str(source))

    # Then it fails saying the broker is unavailable, without either password
    assert done.returncode == 3 and "error [broker_unavailable]" in done.stderr, done.stderr
    assert wrong not in done.stderr + done.stdout and REDIS_PASSWORD not in done.stderr + done.stdout


# -- models ---------------------------------------------------------------------------------------------------------


@pytest.fixture
def runner_for(migrated_postgres: str) -> Iterator[Any]:
    engines: list[Any] = []

    def make(settings: Settings) -> Runner:
        engine = make_engine(settings)
        engines.append(engine)
        return Runner(settings, make_sessionmaker(engine), ModelCache(settings), worker="test")

    yield make
    for engine in engines:
        engine.dispose()


def a_job_naming(runner: Runner, model: str) -> str:
    """A job stored directly, as a producer that skipped every check (or an old job) would leave it."""
    job_id = uuid.uuid4().hex
    with runner.sessions.begin() as session:
        records = [InputRecord(line=1, client_id=None, data={"text": "hello"})]
        store_job(
            session,
            job_id,
            TaskName.CLASSIFICATION,
            model,
            {"top_k": 1, "function_to_apply": "default"},
            records,
            10,
            "q",
        )
    return job_id


def test_a_model_directory_outside_the_allowed_ones_is_refused_at_submit_and_by_the_worker(
    tmp_path: Path, migrated_postgres: str, slow_model: Path, runner_for: Any, record: Record
) -> None:
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    env = {"INFERQ_DATABASE_URL": migrated_postgres, "INFERQ_MODEL_DIRS": json.dumps([str(allowed)])}
    source = tmp_path / "in.jsonl"
    source.write_text('{"text": "fine"}\n', encoding="utf-8")

    # When a job names a model directory outside INFERQ_MODEL_DIRS, it is refused at submit, as any unknown model
    done = inferq_cli(env, "submit", "--task", "classification", "--model", str(slow_model), str(source))
    assert done.returncode == 2
    assert "error [unknown_model]" in done.stderr and "nor a model directory allowed here" in done.stderr

    # And a worker given such a job anyway never loads the model: the items fail with the reason
    runner = runner_for(Settings(database_url=migrated_postgres, model_dirs=[allowed]))
    job_id = a_job_naming(runner, str(slow_model))
    runner.run_chunk(job_id, 0)
    assert runner.model_cache.loaded_names() == []
    (item,) = record.items(job_id)
    assert item.error_code == "unknown_model" and "nor a model directory allowed here" in (item.error_message or "")


def test_remote_code_never_runs_and_pickled_weights_are_never_read_beside_safetensors(
    tmp_path: Path, migrated_postgres: str, slow_model: Path, runner_for: Any, record: Record
) -> None:
    import shutil

    marker = tmp_path / "code-ran"
    # Given a model directory whose config asks for its own Python code, code that would create a file
    custom = tmp_path / "custom"
    custom.mkdir()
    (custom / "evil.py").write_text(f"open({str(marker)!r}, 'w').close()\n", encoding="utf-8")
    auto = {k: "evil.Evil" for k in ("AutoConfig", "AutoModelForSequenceClassification", "AutoTokenizer")}
    (custom / "config.json").write_text(json.dumps({"model_type": "evil", "auto_map": auto}), encoding="utf-8")

    # When a worker runs a job naming it
    runner = runner_for(Settings(database_url=migrated_postgres))
    job_id = a_job_naming(runner, str(custom))
    runner.run_chunk(job_id, 0)

    # Then the code never ran: the model did not load, and the item says why
    assert not marker.exists()
    (item,) = record.items(job_id)
    assert item.error_code == "model_load_error"

    # Given a real model directory with safetensors and, beside them, pickled weights that would create a file
    both = tmp_path / "both"
    shutil.copytree(slow_model, both)
    (both / "pytorch_model.bin").write_bytes(pickle.dumps(_CreatesAFile(marker)))

    # When a worker loads it, the safetensors are read and the pickle is never opened
    loaded = ModelCache(Settings(database_url=migrated_postgres)).load(str(both), TaskName.CLASSIFICATION)
    assert loaded.model is not None and not marker.exists()

    # And no code in the packages ever enables remote code
    for package in ("inferq", "producer", "worker"):
        for path in (ROOT / package).rglob("*.py"):
            assert "trust_remote_code=True" not in path.read_text(encoding="utf-8"), path
    assert '"trust_remote_code": False' in (ROOT / "worker" / "model_cache.py").read_text(encoding="utf-8")


# -- model paths and remote code at submit (issue 27, findings 3 and 5) ------------------------------------------

#: Model names a tenant may try: directories that exist (the server's root, its temporary directory, a user's home
#: through ``~``), ones that do not, names no file system takes (a NUL, a lone surrogate), and a very long one.
PROBED_NAMES = [
    "/root",
    "/nonexistent",
    "/",
    "/tmp",
    "~postgres",
    "~nosuchuser",
    "~",
    "..",
    "a\x00b",
    "\ud800",
    "m" * 5000,
]


def a_model_directory(path: Path, config: dict[str, Any] | None = None) -> Path:
    """A directory with a model's config.json (nothing loads it: the checks at submit read JSON only)."""
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps(config or {"model_type": "bert"}), encoding="utf-8")
    return path


def refusal(settings: Settings, name: str, *, tenant: bool) -> str:
    """The message of `resolve_model`'s refusal of ``name``, the name itself left out (it is the caller's own)."""
    with pytest.raises(UnknownModel) as caught:
        resolve_model(settings, name, TaskName.CLASSIFICATION, tenant=tenant)
    assert caught.value.code == "unknown_model"
    shown = name if len(name) <= 200 else name[:199] + "…"
    message = caught.value.message
    assert repr(shown) in message
    return message.replace(repr(shown), "NAME")


def test_a_tenant_gets_one_answer_for_every_model_path_it_may_not_use(tmp_path: Path) -> None:
    # Given a server with a registry model, the default INFERQ_MODEL_DIRS (none), and a real model directory
    model = a_model_directory(tmp_path / "model")
    settings = Settings(database_url="sqlite://", models={"reg": ModelSpec(source=str(model))})

    # When a tenant names directories, existing or not, the real model's among them
    answers = {refusal(settings, name, tenant=True) for name in [*PROBED_NAMES, str(model), str(tmp_path)]}

    # Then every one gets the same code and message: nothing tells what exists
    assert len(answers) == 1, answers
    # And the registry name works
    assert resolve_model(settings, "reg", tenant=True).source == str(model)


def test_the_operator_may_name_directories_taken_as_written_without_home_expansion(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given the operator's own client (no model directories set: any directory), and a home with a model in it
    model = a_model_directory(tmp_path / "home" / "model")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path / "home")
    settings = Settings(database_url="sqlite://", models={})

    # When it names the directory, by its path or relative to the working directory, it is used
    assert resolve_model(settings, str(model)).source == str(model)
    assert resolve_model(settings, "model").source == str(model)
    # But ``~`` is never expanded (its own, another user's, or a user that does not exist: never a 500), and every
    # name that is no directory gets the same answer
    answers = {
        refusal(settings, name, tenant=False) for name in ["~/model", "~root", *PROBED_NAMES[1:2], "~nosuchuser"]
    }
    assert len(answers) == 1, answers


def test_with_model_directories_set_a_tenant_may_use_those_and_nothing_outside(tmp_path: Path) -> None:
    # Given the operator's allowed directory with a model in it, a model outside it, and a link from inside to it
    allowed = tmp_path / "allowed"
    inside = a_model_directory(allowed / "mine")
    outside = a_model_directory(tmp_path / "elsewhere")
    (allowed / "link").symlink_to(outside, target_is_directory=True)
    settings = Settings(database_url="sqlite://", models={}, model_dirs=[allowed])

    # When a tenant names the model inside, it is used
    assert resolve_model(settings, str(inside), tenant=True).source == str(inside)
    # And the one outside, the link leading out, a missing one inside, and ``..`` out of it all get one answer
    names = [str(outside), str(allowed / "link"), str(allowed / "missing"), f"{allowed}/../elsewhere", *PROBED_NAMES]
    assert len({refusal(settings, name, tenant=True) for name in names}) == 1


@pytest.fixture(scope="module")
def tenant_api(
    migrated_postgres: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[TestClient, Path]]:
    """The HTTP API with the default INFERQ_MODEL_DIRS, a registry model, and a key: (client, the model's path)."""
    model = a_model_directory(tmp_path_factory.mktemp("served-models") / "reg", NO_CODE_CONFIG)
    settings = Settings(
        database_url=migrated_postgres,
        broker_url=redis_url,
        models={"reg": ModelSpec(source=str(model), task=TaskName.CLASSIFICATION)},
        default_queue=f"inferq-test-{uuid.uuid4().hex[:10]}",
    )
    engine = make_engine(settings)
    with make_sessionmaker(engine).begin() as session:
        key, _ = create_key(session, f"t-{uuid.uuid4().hex[:12]}")
    engine.dispose()
    with TestClient(create_app(settings), headers={"Authorization": f"Bearer {key}"}) as client:
        yield client, model


NO_CODE_CONFIG = {"model_type": "bert", "id2label": {"0": "NEGATIVE", "1": "POSITIVE"}}


def test_over_http_every_model_path_gets_the_answer_of_an_unknown_name(tenant_api: tuple[TestClient, Path]) -> None:
    client, model = tenant_api

    def submit(name: str) -> tuple[int, str, str]:
        answer = client.post(
            "/v1/jobs",
            params={"task": "classification", "model": name},
            content=b'{"text": "fine"}\n',
            headers={"content-type": "application/jsonl"},
        )
        error = answer.json()["error"]
        return answer.status_code, error["code"], error["message"].replace(repr(name), "NAME")

    # When a tenant names the registry model's own directory, paths that exist and paths that do not (no NUL: the
    # query's guard answers that one before any route)
    names = [str(model), "/root", "/nonexistent", "~postgres", "~nosuchuser", "no-such-model"]
    answers = {submit(name) for name in names}

    # Then all get one answer, that of a name that is not in the registry: 404 unknown_model
    assert len(answers) == 1, answers
    ((status, code, _),) = answers
    assert (status, code) == (404, "unknown_model")


def test_a_model_that_asks_for_its_own_code_is_refused_at_submit(
    tmp_path: Path, migrated_postgres: str, record: Record
) -> None:
    # Given model directories whose config or tokenizer config name classes of their own (auto_map)
    auto = {"AutoModelForSequenceClassification": "evil.Evil"}
    in_config = a_model_directory(tmp_path / "config", {**NO_CODE_CONFIG, "auto_map": auto})
    in_tokenizer = a_model_directory(tmp_path / "tokenizer", NO_CODE_CONFIG)
    (in_tokenizer / "tokenizer_config.json").write_text(json.dumps({"auto_map": {"AutoTokenizer": ["t.T", None]}}))
    env = {"INFERQ_DATABASE_URL": migrated_postgres}
    source = tmp_path / "in.jsonl"
    source.write_text('{"text": "fine"}\n', encoding="utf-8")
    with record.engine.connect() as conn:
        before = conn.scalar(select(func.count()).select_from(Job))

    for model, file in ((in_config, "config.json"), (in_tokenizer, "tokenizer_config.json")):
        # When a job names it
        done = inferq_cli(env, "submit", "--task", "classification", "--model", str(model), str(source))
        # Then the submit refuses it, naming the file, and stores nothing
        assert done.returncode == 2, done.stderr
        assert "error [remote_code_refused]" in done.stderr and file in done.stderr, done.stderr
    with record.engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(Job)) == before


#: Functions allowed to compose a SQL string, each because every piece it puts in comes from the code, never from
#: input: migration 0006 names the moved result columns once (its module's constant ``_COPIED``) in the statements
#: that copy them to the results table and back.
COMPOSED_FROM_CODE = {
    ("migrations/versions/0006_results_table.py", "upgrade"),
    ("migrations/versions/0006_results_table.py", "downgrade"),
}


def test_sql_is_never_built_from_strings() -> None:
    # Every statement the packages run is SQLAlchemy Core/ORM with bound parameters; a raw SQL string may only be a
    # literal (no f-string, no % or + or .format on it), outside the functions of COMPOSED_FROM_CODE.
    suspicious = []
    allowed_seen = set()
    for package in ("inferq", "producer", "worker", "server", "migrations"):
        for path in (ROOT / package).rglob("*.py"):
            where = str(path.relative_to(ROOT))
            calls = _SqlCalls()
            calls.visit(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)))
            for function, line in calls.built:
                if (where, function) in COMPOSED_FROM_CODE:
                    allowed_seen.add((where, function))
                else:
                    suspicious.append(f"{where}:{line}")
    assert suspicious == []
    assert allowed_seen == COMPOSED_FROM_CODE, "an allowed function no longer composes SQL: drop it from the list"


class _SqlCalls(ast.NodeVisitor):
    """Calls that run SQL from a composed string, each with the function it is in (innermost; ``None``: module)."""

    def __init__(self) -> None:
        self.function: str | None = None
        self.built: list[tuple[str | None, int]] = []

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        outer, self.function = self.function, node.name
        self.generic_visit(node)
        self.function = outer

    def visit_Call(self, node: ast.Call) -> None:
        name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
        if node.args and name in ("text", "execute", "exec_driver_sql", "executemany") and _built(node.args[0]):
            self.built.append((self.function, node.lineno))
        self.generic_visit(node)


def _built(arg: ast.expr) -> bool:
    if isinstance(arg, ast.JoinedStr):
        return True
    if isinstance(arg, ast.BinOp) and isinstance(arg.op, ast.Mod | ast.Add):
        return True
    return isinstance(arg, ast.Call) and isinstance(arg.func, ast.Attribute) and arg.func.attr == "format"
