"""The demo's inputs: the seed document's examples, and the semantic search's passages and questions (the English
texts of a seed document's Python examples, one sentence each)."""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

SEQUENCE_0 = "The company HuggingFace is based in New York City"
SEQUENCE_1 = "Apples are especially bad for your health"
SEQUENCE_2 = "HuggingFace's headquarters are situated in Manhattan"

#: The seed document's question-answering examples: its SQuAD paragraph and its 🤗 Transformers paragraph.
SQUAD_CONTEXT = """
Extractive Question Answering is the task of extracting an answer from a text given a question. An example of a
question answering dataset is the SQuAD dataset, which is entirely based on that task. If you would like to fine-tune
a model on a SQuAD task, you may leverage the examples/pytorch/question-answering/run_squad.py script.
"""
TRANSFORMERS_CONTEXT = """
🤗 Transformers (formerly known as pytorch-transformers and pytorch-pretrained-bert) provides general-purpose
architectures (BERT, GPT-2, RoBERTa, XLM, DistilBert, XLNet…) for Natural Language Understanding (NLU) and Natural
Language Generation (NLG) with over 32+ pretrained models in 100+ languages and deep interoperability between
TensorFlow 2.0 and PyTorch.
"""
QA_EXAMPLES = [
    ("What is extractive question answering?", SQUAD_CONTEXT),
    ("What is a good example of a question answering dataset?", SQUAD_CONTEXT),
    ("How many pretrained models are available in 🤗 Transformers?", TRANSFORMERS_CONTEXT),
    ("What does 🤗 Transformers provide?", TRANSFORMERS_CONTEXT),
    ("🤗 Transformers provides interoperability between which frameworks?", TRANSFORMERS_CONTEXT),
]
#: The task summary's fill-mask sentence, with the model-independent placeholder.
FILL_MASK_EXAMPLE = "HuggingFace is creating a [[MASK]] that the community uses to solve NLP tasks."
NER_EXAMPLE = (
    "Hugging Face Inc. is a company based in New York City. Its headquarters are in DUMBO, therefore very "
    "close to the Manhattan Bridge which is visible from the window."
)

#: The English texts the semantic search runs over when no seed document is at hand, and always besides the
#: seed's own: the inputs of the seed document's examples (its Korean prose is not searched: all-MiniLM-L6-v2 is
#: an English model), and the entity example's sentence from the English task summary.
SEARCH_TEXTS = ("I hate you", "I love you", SEQUENCE_0, SEQUENCE_1, SEQUENCE_2, SQUAD_CONTEXT, TRANSFORMERS_CONTEXT)
SEARCH_EXTRA_TEXTS = (NER_EXAMPLE,)
#: Questions whose answers a reader can find among those texts.
SEARCH_QUESTIONS = (
    "Where is Hugging Face located?",
    "Which fruit is bad for you?",
    "Which dataset can I train a question answering model on?",
    "Which deep learning frameworks does the library work with?",
    "Which bridge can be seen from the office?",
)

#: Zero-shot classification: the seed's sentences, labels chosen at submit time.
ZERO_SHOT_TEXTS = ("I hate you", "I love you", SEQUENCE_0, SEQUENCE_1)
ZERO_SHOT_LABELS = ["feelings", "business", "health"]
#: Reranking: one query and a handful of the seed's sentences.
RERANK_QUERY = "Where are HuggingFace's offices?"
RERANK_DOCUMENTS = [SEQUENCE_1, SEQUENCE_0, "I love you", SEQUENCE_2, "Apples grow on trees"]


# -- the semantic search's passages ----------------------------------------------------------------------------


_CODE_BLOCK = re.compile(r"```python[^\n]*\n(.*?)```", re.DOTALL)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z🤗])")


def seed_texts(document: str) -> list[str]:
    """The English texts in a seed document's Python examples: the string literals given to the models (inputs,
    contexts), not the questions, model and task names, printed format strings or quoted outputs."""
    texts: list[str] = []
    for block in _CODE_BLOCK.findall(document):
        try:
            tree = ast.parse(block)
        except SyntaxError:
            continue
        # Outputs are quoted as bare string statements; f-strings are what the examples print.
        skipped = {id(s.value) for s in ast.walk(tree) if isinstance(s, ast.Expr)}
        skipped |= {id(v) for f in ast.walk(tree) if isinstance(f, ast.JoinedStr) for v in f.values}
        strings = [(n, n.value) for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)]
        for node, value in sorted(strings, key=lambda s: (s[0].lineno, s[0].col_offset)):
            if id(node) not in skipped:
                text = " ".join(value.split())
                if _is_passage(text) and text not in texts:
                    texts.append(text)
    return texts


def _is_passage(text: str) -> bool:
    letters = [c for c in text if c.isalpha()]
    return (
        len(text.split()) >= 3
        and not text.endswith("?")
        and "{" not in text
        and sum(c.isascii() for c in letters) >= 0.9 * len(letters)
    )


def sentences(text: str) -> list[str]:
    return [s for s in _SENTENCE_END.split(" ".join(text.split())) if s]


def search_passages(seed_dir: Path) -> tuple[list[str], str]:
    """The passages searched (one sentence each, in order, without repeats) and a note saying where they are
    from: the English texts of the seed documents in ``seed_dir`` where there are any, and always the demo's own."""
    documents = sorted(seed_dir.glob("*.md")) if seed_dir.is_dir() else []
    from_seed = [s for doc in documents for t in seed_texts(doc.read_text(encoding="utf-8")) for s in sentences(t)]
    builtin = [s for t in (*SEARCH_TEXTS, *SEARCH_EXTRA_TEXTS) for s in sentences(t)]
    passages = list(dict.fromkeys([*from_seed, *builtin]))
    n_seed = len(set(from_seed))
    if not documents:
        note = (
            f"{len(passages)} English sentences built into the demo (the seed document's example inputs and the "
            f"entity example's sentence): no seed documents in {seed_dir}"
        )
    else:
        names = ", ".join(d.name for d in documents)
        note = (
            f"{len(passages)} English sentences: {n_seed} from the Python examples of {names} in {seed_dir}, "
            f"{len(passages) - n_seed} more built into the demo. Only the examples' English texts are searched: "
            f"the document's prose is Korean, and all-MiniLM-L6-v2 is an English model"
        )
    return passages, note


def nearest(questions: Any, passages: Any, k: int = 3) -> list[list[tuple[int, float]]]:
    """For each question vector, the ``k`` passages of highest cosine similarity: (passage index, cosine)."""
    import numpy as np

    q = np.asarray(questions, dtype=np.float64)
    p = np.asarray(passages, dtype=np.float64)
    sims = (q / np.linalg.norm(q, axis=1, keepdims=True)) @ (p / np.linalg.norm(p, axis=1, keepdims=True)).T
    order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return [[(int(j), float(sims[i, j])) for j in row] for i, row in enumerate(order)]
