"""Two chunks side by side on one runner, as two pool threads (``--pool threads``) run them around one loaded model:
the next chunk's claim, input read and tokenization happen while the current chunk's forward runs, and on a CPU the
two forwards take turns (one at a time, each on every core)."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from inferq.task_specs import TaskName
from tests.support.tiny_models import corpus
from tests.worker.jobs import a_job, job_row
from worker.runner import ChunkReport, Runner

pytestmark = pytest.mark.services

MODEL = "cls-distilbert"


def test_the_next_chunks_claim_read_and_tokenization_overlap_the_current_forward(runner: Runner) -> None:
    # Given a job of two chunks, and the runner's engine for its model, whose first forward pass holds on until the
    # other chunk has been tokenized (a hook around the real methods: the model still computes every result)
    job_id = a_job(runner, MODEL, list(corpus()[:40]), chunk_size=20)
    engine: Any = runner.model_cache.engine(MODEL, TaskName.CLASSIFICATION)
    preprocess, forward = engine.preprocess, engine.forward
    in_first_forward, second_tokenized = threading.Event(), threading.Event()
    preprocessed: list[int] = []
    waited: list[bool] = []

    def hooked_preprocess(inputs: Any, params: Any) -> Any:
        features = preprocess(inputs, params)
        preprocessed.append(len(inputs))
        if len(preprocessed) == 2:
            second_tokenized.set()
        return features

    def hooked_forward(batch: Any, params: Any) -> Any:
        if not in_first_forward.is_set():
            in_first_forward.set()
            waited.append(second_tokenized.wait(timeout=120))  # a wait, not a bound
        return forward(batch, params)

    engine.preprocess, engine.forward = hooked_preprocess, hooked_forward
    reports: dict[int, ChunkReport] = {}

    def run(seq: int) -> None:
        reports[seq] = runner.run_chunk(job_id, seq)

    try:
        # When one pool thread runs the first chunk, and another takes the second once that one is in its forward
        first = threading.Thread(target=run, args=(0,))
        first.start()
        assert in_first_forward.wait(timeout=120)
        second = threading.Thread(target=run, args=(1,))
        second.start()
        first.join(timeout=300)
        second.join(timeout=300)
    finally:
        del engine.preprocess, engine.forward

    # Then the second chunk was claimed, read and tokenized while the first one's forward ran
    assert waited == [True], "the second chunk could not be tokenized while the first one's forward ran"
    a, b = reports[0].spans, reports[1].spans
    assert a["forward"][0] < b["claim"][0] <= b["read"][1] <= b["tokenize"][1] < a["forward"][1]
    # and the forwards took turns on the CPU: the second began once the first had ended
    assert a["forward"][1] <= b["forward"][0]
    # and both chunks stored every item
    assert [(r.outcome.value, r.succeeded, r.failed) for r in (reports[0], reports[1])] == [("done", 20, 0)] * 2
    job = job_row(runner, job_id)
    assert (job.state, job.succeeded, job.failed) == ("succeeded", 40, 0)
