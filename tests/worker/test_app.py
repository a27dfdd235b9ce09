"""The worker's Celery app: built from settings on first access, with the prefork parent kept free of torch, and
``inferq worker``'s options reaching the pool processes that run the models."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from inferq.settings import Settings
from tests.support.records import wait_for
from tests.support.worker_process import worker_log
from worker.process import running_worker
from worker.threads import TOKENIZER_ENVIRON, tokenizer_threads, torch_threads, use_tokenizer_threads

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


def test_the_worker_app_loads_no_torch_in_the_parent_process() -> None:
    # Given a fresh interpreter that builds the worker's app the way `celery -A worker.app` does
    code = (
        "import sys\n"
        "import worker.app\n"
        "app = worker.app.app\n"
        "assert 'inferq.run_chunk' in app.tasks\n"
        "conf = app.conf\n"
        "print(conf.task_serializer, sorted(conf.accept_content), conf.task_acks_late, conf.worker_prefetch_multiplier,"
        " conf.task_ignore_result, conf.task_reject_on_worker_lost)\n"
        "print('torch' in sys.modules, 'transformers' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.splitlines()
    # Then it is configured for JSON only, late acks and prefetch 1, and torch has not been imported
    assert out[0] == "json ['json'] True 1 True True"
    assert out[1] == "False False"


def test_the_options_of_inferq_worker_reach_its_pool_processes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a registry of one tiny model, and an environment that names no models to preload and no precision
    for var in ("INFERQ_PRELOAD", "INFERQ_PRECISION", "INFERQ_TORCH_THREADS", "OMP_NUM_THREADS", *TOKENIZER_ENVIRON):
        monkeypatch.delenv(var, raising=False)
    env = {
        "INFERQ_MODELS": json.dumps(
            {"qa": {"source": str(FIXTURES / "models" / "qa-bert"), "task": "question_answering"}}
        ),
        "INFERQ_DATABASE_URL": f"sqlite:///{tmp_path / 'inferq.db'}",
        "INFERQ_BROKER_URL": f"sqla+sqlite:///{tmp_path / 'inferq-broker.db'}",
        "INFERQ_RECOVER_INTERVAL": "0",
    }
    log = tmp_path / "worker.log"

    # When `inferq worker --models qa --precision bf16` starts two pool processes
    # (stopped by a SIGTERM to the main process alone: one to the whole group ends a pool process before Celery's
    # shutdown begins, and Celery starts a replacement that loads the model again before it can stop)
    args = ("--models", "qa", "--precision", "bf16", "--concurrency", "2")
    with running_worker(env, log, *args, cwd=tmp_path, stop_group=False):
        wait_for(lambda: worker_log(log).count("loaded qa ") >= 2 or None, 120, "both pool processes to preload")

    # Then each pool process, and only they, loaded the model at that precision
    loads = [line for line in worker_log(log).splitlines() if "loaded qa " in line]
    assert len(loads) == 2
    assert all("ForkPoolWorker" in line and " at bf16 (backend " in line for line in loads)
    # and each took its share of the cores as torch threads, so that the two never oversubscribe them
    threads = [line for line in worker_log(log).splitlines() if "torch threads: " in line]
    share = max(1, len(os.sched_getaffinity(0)) // 2)
    assert len(threads) == 2
    assert all("ForkPoolWorker" in line and line.endswith(f"torch threads: {share}") for line in threads)
    # and as the tokenizer's threads
    tokenizer = [line for line in worker_log(log).splitlines() if "tokenizer threads: " in line]
    assert len(tokenizer) == 2
    assert all("ForkPoolWorker" in line and line.endswith(f"tokenizer threads: {share}") for line in tokenizer)


def share(expected: int | str | None) -> int | None:
    """A case's expected threads: ``"cores"`` and ``"cores // 2"`` of this machine's cores, else as given."""
    cores = len(os.sched_getaffinity(0))
    return {"cores": cores, "cores // 2": max(1, cores // 2)}[expected] if isinstance(expected, str) else expected


@pytest.mark.parametrize(
    ("setting", "omp", "processes", "expected"),
    [
        (3, "1", 2, 3),  # the setting wins
        (None, "4", 2, None),  # the user's OMP_NUM_THREADS: torch's own choice
        (None, None, 1, "cores"),
        (None, None, 2, "cores // 2"),
        (None, None, 1_000, 1),  # never below one
    ],
)
def test_each_pool_process_takes_its_share_of_the_cores_as_torch_threads(
    setting: int | None, omp: str | None, processes: int, expected: int | str | None
) -> None:
    environ = {} if omp is None else {"OMP_NUM_THREADS": omp}
    assert torch_threads(Settings(torch_threads=setting), processes, environ) == share(expected)


@pytest.mark.parametrize(
    ("environ", "processes", "expected"),
    [
        ({"TOKENIZERS_PARALLELISM": "true"}, 2, None),  # the user's switch: the tokenizer's own choice
        ({"RAYON_NUM_THREADS": "3"}, 2, None),  # the user's pool size too
        ({}, 1, "cores"),
        ({}, 2, "cores // 2"),
        ({}, 1_000, 1),  # never below one
    ],
)
def test_each_pool_process_takes_its_share_of_the_cores_as_tokenizer_threads(
    environ: dict[str, str], processes: int, expected: str | int | None
) -> None:
    assert tokenizer_threads(processes, environ) == share(expected)


def test_one_tokenizer_thread_turns_its_pool_off_and_more_size_it() -> None:
    one: dict[str, str] = {}
    use_tokenizer_threads(1, one)
    assert one == {"TOKENIZERS_PARALLELISM": "false"}
    two: dict[str, str] = {}
    use_tokenizer_threads(2, two)
    assert two == {"RAYON_NUM_THREADS": "2"}
    none: dict[str, str] = {}
    use_tokenizer_threads(None, none)
    assert none == {}
