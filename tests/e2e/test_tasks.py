"""Question answering, fill-mask and token classification end to end: a real worker against Redis and
PostgreSQL, every item compared with the reference (transformers 5.2's QA pipeline output, pinned; the current
fill-mask and token-classification pipelines)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from inferq.task_specs import MASK_PLACEHOLDER, TaskName
from producer.client import Client
from producer.results import Answer, Entity, MaskFill
from tests.reference import (
    SCORE_TOLERANCE,
    assert_same_entities,
    assert_same_ranking,
    fill_mask_reference,
    token_classification_reference,
)
from tests.support.tiny_models import build_model, corpus

pytestmark = pytest.mark.services

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


@pytest.fixture(scope="module")
def task_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    root = tmp_path_factory.mktemp("task-models")
    return {
        "qa-bert": {"source": str(FIXTURES / "models" / "qa-bert"), "task": "question_answering"},
        "qa-roberta": {"source": str(FIXTURES / "models" / "qa-roberta"), "task": "question_answering"},
        "mlm-roberta": {
            "source": str(build_model(root / "mlm", TaskName.FILL_MASK, "roberta", initializer_range=0.3)),
            "task": "fill_mask",
        },
        "ner-bert": {
            "source": str(
                build_model(root / "ner", TaskName.TOKEN_CLASSIFICATION, "bert", lowercase=False, initializer_range=0.5)
            ),
            "task": "token_classification",
        },
    }


@pytest.fixture(scope="module")
def worker_models(task_models: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return task_models


@pytest.fixture(scope="module")
def worker_extra_env() -> dict[str, str]:
    return {"INFERQ_MAX_BATCH_TOKENS": "1024"}


@pytest.fixture(scope="module")
def worker_args() -> tuple[str, ...]:
    return ("--models", "qa-bert,mlm-roberta")


def test_question_answering_matches_the_pinned_pipeline_output(client: Client, worker_env: dict[str, str]) -> None:
    # Given every pinned reference case (long contexts, unicode, emoji, runs of spaces, impossible answers …),
    # one job per model and parameter set
    cases = json.loads((FIXTURES / "qa_reference" / "reference.json").read_text(encoding="utf-8"))
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for case in cases:
        if not case["context"].strip():
            continue  # refused at submit (empty text); the engine-level test covers what the pipeline does with it
        groups[(case["model"], json.dumps(case["params"], sort_keys=True))].append(case)

    # When each group is submitted and the jobs run
    jobs = []
    for (model, params), group in groups.items():
        inputs = [{"question": c["question"], "context": c["context"]} for c in group]
        jobs.append((client.submit("question_answering", model, inputs, json.loads(params), chunk_size=8), group))

    # Then every answer, span and score equals the pipeline's
    for sub, group in jobs:
        status = client.wait(sub.job_id, timeout=600)
        assert (status.state.value, status.succeeded) == ("succeeded", len(group))
        for row, case in zip(client.results(sub.job_id), group, strict=True):
            where = f"{case['model']} {case['question']!r}"
            assert row.result is not None, where
            assert len(row.result) == len(case["expected"]), where
            for got, want in zip(row.result, case["expected"], strict=True):
                assert (got["answer"], got["start"], got["end"]) == (want["answer"], want["start"], want["end"]), where
                assert abs(got["score"] - want["score"]) <= SCORE_TOLERANCE, where
                assert case["context"][got["start"] : got["end"]] == got["answer"]
            best = row.result[0]
            assert (row.answer, row.start, row.end, row.score) == (
                best["answer"],
                best["start"],
                best["end"],
                best["score"],
            )
            typed = row.typed()
            assert typed is not None and isinstance(typed[0], Answer)
    # And the top answer's score is filterable in SQL
    sub, group = jobs[0]
    kept = [r.index for r in client.results(sub.job_id, min_score=0.01)]
    assert kept == [i for i, c in enumerate(group) if c["expected"][0]["score"] >= 0.01]


def test_fill_mask_with_one_and_several_masks_matches_the_pipeline(
    client: Client, task_models: dict[str, dict[str, Any]], worker_env: dict[str, str], tmp_path: Path
) -> None:
    # Given real sentences with one mask (the model's own token) or two (the placeholder), as a CLI file
    texts = []
    short = [s for s in corpus() if len(s.split()) <= 25]  # every mask inside the model's 64 tokens
    for i, sentence in enumerate(short[:200]):
        words = sentence.split()
        words[len(words) // 2] = "<mask>" if i % 2 else MASK_PLACEHOLDER
        if i % 4 == 3:
            words[1] = MASK_PLACEHOLDER
        texts.append(" ".join(words))
    source = tmp_path / "masks.jsonl"
    source.write_text("".join(json.dumps({"text": t, "id": i}) + "\n" for i, t in enumerate(texts)), encoding="utf-8")

    # When it is submitted through the CLI and waited for
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "inferq.cli",
            "submit",
            "--task",
            "fill_mask",
            "--model",
            "mlm-roberta",
            str(source),
            "--param",
            "top_k=3",
            "--wait",
            "--json",
        ],
        env={**os.environ, **worker_env},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    job_id = json.loads(done.stdout)["job_id"]

    # Then each mask's candidates equal the pipeline's
    path = Path(task_models["mlm-roberta"]["source"])
    for row, text in zip(client.results(job_id), texts, strict=True):
        want = fill_mask_reference(path, text.replace(MASK_PLACEHOLDER, "<mask>"), top_k=3)
        assert row.result is not None and len(row.result) == len(want) == text.count("mask>") + text.count(
            MASK_PLACEHOLDER
        )
        for m, (got_mask, want_mask) in enumerate(zip(row.result, want, strict=True)):
            assert_same_ranking(got_mask, want_mask, ("token", "token_str", "sequence"), f"{row.id} mask {m}")
        assert (row.label, row.score) == (row.result[0][0]["token_str"], row.result[0][0]["score"])
        typed = row.typed()
        assert typed is not None and isinstance(typed[0][0], MaskFill)


@pytest.mark.parametrize("strategy", ["none", "simple", "max"])
def test_token_classification_matches_the_pipeline(
    client: Client, task_models: dict[str, dict[str, Any]], strategy: str
) -> None:
    # Given real sentences and unicode text
    texts = [*corpus()[300:450], "Zoë moved to Besançon, 東京 and 서울 🤗 in   2024."]

    # When they run as one job with an aggregation strategy
    sub = client.submit("token_classification", "ner-bert", texts, {"aggregation_strategy": strategy}, chunk_size=50)
    status = client.wait(sub.job_id, timeout=600)
    assert status.state.value == "succeeded"

    # Then the entities equal the pipeline's, and their count and best label are in typed columns
    path = Path(task_models["ner-bert"]["source"])
    found = 0
    for row, text in zip(client.results(sub.job_id), texts, strict=True):
        want = token_classification_reference(path, text, aggregation_strategy=strategy)
        assert row.result is not None
        assert_same_entities(row.result, want, f"{row.index}")
        assert row.entity_count == len(want)
        found += len(want)
        typed = row.typed()
        assert typed is not None and all(isinstance(e, Entity) for e in typed)
    assert found > 0, "the test inputs must produce entities"
