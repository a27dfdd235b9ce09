"""The columnar write equals the per-item one: each engine that serialises a chunk's results in one pass
(`worker.engines.columnar`) gives the very rows, byte for byte, that its per-item results (dicts, serialised by the
write one at a time) give, on PostgreSQL (binary COPY of the text) and on SQLite (SQLAlchemy's JSON of it), with
failed items (an input that fails validation) mixed in.

Text that JSON and ``repr`` write alike only by care is in the inputs: non-ASCII, quotes, backslashes, a line
separator, ``%`` signs (the one-pass format's own marker) in labels and documents."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from inferq.errors import InputError
from inferq.store.chunks import Claim, claim_chunk, write_results
from inferq.task_specs import MASK_PLACEHOLDER, TaskName, validate_params
from producer.client import store_job
from producer.inputs import InputRecord
from tests.support.engines import TinyEngines
from tests.support.engines import model_cache as cache_of
from tests.support.tiny_models import corpus
from worker.engines.base import Engine, Outcome

pytestmark = [pytest.mark.services, pytest.mark.usefixtures("one_torch_thread")]

#: Texts a JSON round trip or a ``%`` format could change.
ODD = ['quote " and \\ backslash', "héllo wörld ✓ 日本語", "line\u2028separator", "100% sure %s %r %d", ""]
LABELS = ["sports", 'say "hi"', "naïve %s", "back\\slash", "music"]


#: A context of several windows.
LONG = " ".join(corpus()[40:52])


def texts(n: int) -> list[str]:
    return [*ODD, *corpus()[: n - len(ODD)]][:n]


#: case → (task, builder arguments, inputs, parameters, indices of items whose input fails validation).
CASES: dict[str, tuple[TaskName, dict[str, Any], list[dict[str, Any]], dict[str, Any], list[int]]] = {
    "classification": (
        TaskName.CLASSIFICATION,
        {"arch": "distilbert", "labels": ["NEG", 'quo"te', "%s ünï"]},
        [{"text": t} for t in texts(20)],
        {"top_k": 2, "function_to_apply": "default"},
        [3],
    ),
    "embedding": (TaskName.EMBEDDING, {"arch": "bert"}, [{"text": t} for t in texts(20)], {}, [0, 7]),
    "embedding-float16-windows": (
        TaskName.EMBEDDING,
        {"arch": "bert"},
        [{"text": t} for t in [*texts(6), " ".join(corpus()[:30])]],
        {"overflow": "windows", "window_tokens": 12, "stride": 3, "dtype": "float16"},
        [2],
    ),
    "rerank": (
        TaskName.RERANK,
        {"arch": "bert"},
        [
            {"query": q, "documents": texts(1 + i % 5)}  # lines of 1 to 5 documents
            for i, q in enumerate(texts(12))
        ]
        + [{"text": "a single pair", "text_pair": ODD[0]}],
        {"top_k": 3},
        [4],
    ),
    "rerank-documents": (
        TaskName.RERANK,
        {"arch": "roberta"},
        [{"query": q, "documents": [*ODD, q, q]} for q in texts(8)],  # equal documents: equal scores
        {"return_documents": True},
        [1],
    ),
    "zero-shot": (
        TaskName.ZERO_SHOT_CLASSIFICATION,
        {"arch": "bert"},
        [{"text": t} for t in texts(10)]
        + [{"text": "own labels", "candidate_labels": LABELS[:2]}, {"text": "one", "candidate_labels": ["x"]}]
        + [{"text": "none of its own", "candidate_labels": []}],
        {"candidate_labels": LABELS},
        [5],
    ),
    "zero-shot-multi-label": (
        TaskName.ZERO_SHOT_CLASSIFICATION,
        {"arch": "roberta", "labels": ("ENTAILMENT", "NEUTRAL", "CONTRADICTION")},
        [{"text": t} for t in texts(9)] + [{"text": "three", "candidate_labels": "a, b %d, c"}],
        {"candidate_labels": LABELS, "multi_label": True},
        [0],
    ),
    # Windows of 32 tokens: the long contexts are answered from several, some in other micro-batches.
    "question-answering": (
        TaskName.QUESTION_ANSWERING,
        {"arch": "bert", "max_length": 128},
        [{"question": q, "context": f"{c} {LONG}"} for q, c in zip(texts(12), reversed(texts(12)), strict=True)]
        + [{"question": "what?", "context": c} for c in ODD[:4]],
        {"top_k": 3, "max_seq_len": 32, "doc_stride": 8},
        [2],
    ),
    "question-answering-impossible": (
        TaskName.QUESTION_ANSWERING,
        {"arch": "roberta", "max_length": 128},
        [{"question": q, "context": f"{c} {c}"} for q, c in zip(texts(10), reversed(texts(10)), strict=True)],
        {"handle_impossible_answer": True, "top_k": 2, "align_to_words": False},
        [6],
    ),
    "fill-mask": (
        TaskName.FILL_MASK,
        {"arch": "bert"},
        [{"text": f"{t} {MASK_PLACEHOLDER}."} for t in texts(12)]
        + [{"text": f"{MASK_PLACEHOLDER} {t} {MASK_PLACEHOLDER} %s"} for t in ODD]  # several masks
        + [{"text": "no mask at all"}],  # fails
        {"top_k": 3},
        [1],
    ),
    "fill-mask-roberta-targets": (
        TaskName.FILL_MASK,
        {"arch": "roberta"},
        [{"text": f"{t} {MASK_PLACEHOLDER}"} for t in texts(10)],
        {"targets": ["the", "a", "é"]},
        [0],
    ),
    "token-classification-none": (
        TaskName.TOKEN_CLASSIFICATION,
        {"arch": "bert", "labels": ["O", 'B-q"%s', 'I-q"%s', "B-ünï", "I-ünï"]},
        [{"text": t} for t in texts(16)],
        {"aggregation_strategy": "none"},
        [2],
    ),
    "token-classification-simple": (
        TaskName.TOKEN_CLASSIFICATION,
        {"arch": "bert", "labels": ["O", 'B-q"%s', 'I-q"%s', "B-ünï", "I-ünï"]},
        [{"text": t} for t in texts(16)],
        {"aggregation_strategy": "simple", "ignore_labels": []},
        [2],
    ),
    "token-classification-average": (
        TaskName.TOKEN_CLASSIFICATION,
        {"arch": "roberta", "labels": ["O", "B-PER", "I-PER", "B-%d", "I-%d"]},
        [{"text": t} for t in texts(16)],
        {"aggregation_strategy": "average"},
        [9],
    ),
}


@pytest.fixture
def sessions(either_database: sessionmaker[Session]) -> sessionmaker[Session]:
    return either_database


def outcomes_of(engine: Engine[Any], inputs: list[dict[str, Any]], params: Any, bad: list[int]) -> list[Outcome]:
    """The engine's outcomes, with the items ``bad`` failed as the runner fails an input that does not validate."""
    ran = engine.run(inputs, params)
    out: list[Outcome] = []
    for i, o in enumerate(ran):
        assert o is not None
        out.append(Outcome.failure(InputError(f"item {i}: 'text' is not a string")) if i in bad else o)
    return out


def stored_rows(sessions: sessionmaker[Session], outcomes: list[Outcome]) -> list[tuple[Any, ...]]:
    """Write ``outcomes`` as one chunk's results (a job of as many items) and read back every stored column, the
    result as its stored text."""
    job_id = uuid.uuid4().hex
    records = [InputRecord(line=i + 1, client_id=str(i), data={"text": "x"}) for i in range(len(outcomes))]
    with sessions.begin() as session:
        store_job(session, job_id, TaskName.CLASSIFICATION, "m", {"top_k": 1}, records, len(outcomes), "q")
    with sessions.begin() as session:
        claim = claim_chunk(session, job_id, 0, worker="w", lease_seconds=60)
        assert isinstance(claim, Claim)
    with sessions.begin() as session:
        write_results(session, [claim], [list(outcomes)])
    with sessions() as session:
        rows = session.execute(
            text(
                'SELECT "index", state, CAST(result AS TEXT), label, score, answer, start_char, end_char,'
                " entity_count, vector, error_code, error_message FROM results WHERE job_id = :j"
                ' ORDER BY "index"'
            ),
            {"j": job_id},
        ).all()
    return [tuple(bytes(v) if isinstance(v, memoryview) else v for v in row) for row in rows]


@pytest.mark.parametrize("case", list(CASES))
def test_the_columnar_write_stores_the_rows_of_the_per_item_one(
    case: str, tiny_engines: TinyEngines, sessions: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given an engine of the task, its inputs (some failing validation) and parameters
    task, arguments, inputs, stored_params, bad = CASES[case]
    model = tiny_engines.model(task, case, **arguments)
    engine = cache_of({"m": model}, max_batch_tokens=256, max_batch_size=8).engine("m", task)
    params = validate_params(task, stored_params)

    # When it runs columnar (its results serialised in one pass), and again per item
    columnar = outcomes_of(engine, inputs, params, bad)
    monkeypatch.setattr(type(engine), "columnar", False)
    per_item = outcomes_of(engine, inputs, params, bad)

    # Then the columnar outcomes carry their text (and no dicts), the per-item ones their dicts
    assert all(o.result_text is not None and o.values()[1] is None for o in columnar if o.ok)
    assert all(o.result_text is None and o.result is not None for o in per_item if o.ok)
    assert sum(not o.ok for o in columnar) >= len(bad) >= 1

    # And both write the same rows, byte for byte, and the same values read back
    rows = stored_rows(sessions, columnar)
    assert rows == stored_rows(sessions, per_item)
    assert len(rows) == len(inputs)
    assert [o.result for o in columnar] == [o.result for o in per_item]
