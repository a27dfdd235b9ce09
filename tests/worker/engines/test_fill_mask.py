"""FillMaskEngine against ``transformers.pipeline("fill-mask")`` on tiny local models of three families.

Every item is compared with the pipeline called on the same model directory with the same ``top_k``/``targets`` and
``tokenizer_kwargs={"truncation": True}`` (inferq always truncates to the model's maximum length). Tokens, token
strings and sequences must be equal; scores within `SCORE_TOLERANCE`. Candidates whose pipeline scores lie within
`TIE` of each other may come in either order (batching with padding moves scores by ~1e-6); nothing else is
forgiven.
"""

from __future__ import annotations

import functools
import json
import math
import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from inferq.errors import InputError, InvalidParameter
from inferq.task_specs import MASK_PLACEHOLDER, TaskName, read_params, validate_params
from tests.support.engines import TinyEngines, model_cache
from tests.support.tiny_models import Arch, corpus
from worker.engines.base import Outcome
from worker.engines.batching import plan_batches
from worker.engines.fill_mask import FillMaskEngine
from worker.model_cache import ModelCache

SCORE_TOLERANCE = 1e-5
TIE = 1e-6
ARCHS: tuple[Arch, ...] = ("bert", "roberta", "distilbert")
#: Tokens per micro-batch: small, so every run here spans several micro-batches.
MAX_BATCH_TOKENS = 512
MAX_LENGTH = 64

UNICODE_TEXTS = [
    "héllo wörld, the [[MASK]] is naïve café 🙂 and 🚀🚀 too",
    "   lots     of    [[MASK]]     spaces   ",
    "日本語のテキスト [[MASK]] and 中文 mixed in",
    "emoji 👩‍👩‍👧‍👦 family [[MASK]] ZWJ and flags 🇫🇷🇩🇪",
    "[[MASK]] at the very start of the text",
    "at the very end of the text [[MASK]]",
    "two adjacent [[MASK]][[MASK]] masks",
    "ﬁnance ligature Ⅻ ², x [[MASK]] µ Ω ß",
    "tabs\tand\nnewlines [[MASK]]\r\n here",
    "a [[MASK]] b [[MASK]] c [[MASK]] d",
    "[[MASK]]",
]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# -- fixtures ------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def fill_mask_dirs(tiny_engines: TinyEngines) -> dict[str, Path]:
    specs = {arch: {"arch": arch, "max_length": MAX_LENGTH, "initializer_range": 0.5} for arch in ARCHS}
    return tiny_engines.models(TaskName.FILL_MASK, specs)


@pytest.fixture(scope="session")
def fill_mask_cache(fill_mask_dirs: dict[str, Path]) -> ModelCache:
    return _model_cache(fill_mask_dirs, "fp32")


@functools.cache
def _pipeline(path: str) -> Any:
    from transformers import pipeline

    return pipeline("fill-mask", model=path, tokenizer=path, device="cpu")


class Model:
    """One arch under test: the engine (through the model cache) and the pipeline on the same directory."""

    def __init__(self, model_cache: ModelCache, dirs: dict[str, Path], arch: str) -> None:
        self.arch = arch
        engine = model_cache.engine(arch, TaskName.FILL_MASK)
        assert isinstance(engine, FillMaskEngine)
        self.engine = engine
        self.pipe = _pipeline(str(dirs[arch].resolve()))
        self.mask_token: str = self.engine.tokenizer.mask_token

    def run(self, texts: Sequence[str], **raw: Any) -> tuple[list[Outcome], dict[str, Any]]:
        params = validate_params(TaskName.FILL_MASK, raw)
        outcomes = self.engine.run([{"text": t} for t in texts], params)
        assert all(o is not None for o in outcomes)
        return [o for o in outcomes if o is not None], params

    def reference(self, text: str, params: dict[str, Any], top_k: int | None = None) -> list[list[dict[str, Any]]]:
        """The pipeline's answer, always as one list per mask. Raises as the pipeline does."""
        kwargs: dict[str, Any] = {"top_k": top_k or params["top_k"], "tokenizer_kwargs": {"truncation": True}}
        if params.get("targets") is not None:
            kwargs["targets"] = params["targets"]
        out = self.pipe(text.replace(MASK_PLACEHOLDER, self.mask_token), **kwargs)
        return [out] if out and isinstance(out[0], dict) else out

    def n_batches(self, texts: Sequence[str], params: dict[str, Any]) -> int:
        features = self.engine.preprocess([{"text": t} for t in texts], read_params(TaskName.FILL_MASK, params))
        return len(plan_batches(features.lengths, MAX_BATCH_TOKENS, self.engine.loaded.max_batch_size))


def _model(request: pytest.FixtureRequest, arch: str) -> Model:
    model_cache = request.getfixturevalue("fill_mask_cache")
    dirs = request.getfixturevalue("fill_mask_dirs")
    return Model(model_cache, dirs, arch)


# -- inputs --------------------------------------------------------------------------------------------


def masked_sentences(n: int, masks: int, seed: int, mask_token: str, *, within_words: int = 14) -> list[str]:
    """``n`` corpus sentences with ``masks`` of their first ``within_words`` words masked (so the masks survive
    truncation; the sentences themselves may be longer than the model's maximum length). Every third uses the
    model's own mask token, the rest the placeholder."""
    rng = random.Random(seed)
    # Not the tables and rules of the corpus ("+-----+"), whose dashes are a token each.
    pool = [
        s for s in corpus() if len(s.split(" ")) >= masks + 3 and all(len(w) <= 20 for w in s.split(" ")[:within_words])
    ]
    texts = []
    for j, sentence in enumerate(rng.sample(pool, n)):
        words = sentence.split(" ")
        mask = mask_token if j % 3 == 0 else MASK_PLACEHOLDER
        for p in rng.sample(range(min(len(words), within_words)), masks):
            words[p] = mask
        texts.append(" ".join(words))
    return texts


# -- comparison ----------------------------------------------------------------------------------------


def _key(c: dict[str, Any]) -> tuple[int, str, str]:
    return c["token"], c["token_str"], c["sequence"]


def assert_same_candidates(
    got: list[dict[str, Any]],
    want: list[dict[str, Any]],
    more: Callable[[], list[dict[str, Any]]],
    where: str,
) -> None:
    """Same candidates in the same order, scores within tolerance; a candidate may differ from the pipeline's at
    its rank only when the pipeline scores it within `TIE` of the candidate it has there (``more()`` is the
    pipeline's longer list, to find candidates just past the last rank)."""
    assert len(got) == len(want), f"{where}: {len(got)} candidates, pipeline has {len(want)}"
    for r, (g, w) in enumerate(zip(got, want, strict=True)):
        assert set(g) == {"score", "token", "token_str", "sequence"}, f"{where}[{r}]: keys {sorted(g)}"
        assert type(g["score"]) is float and type(g["token"]) is int and isinstance(g["token_str"], str)
        assert math.isclose(g["score"], w["score"], rel_tol=0, abs_tol=SCORE_TOLERANCE), f"{where}[{r}]: {g} != {w}"
    if [_key(g) for g in got] == [_key(w) for w in want]:
        return
    extended = {_key(c): c["score"] for c in more()}
    assert len({_key(g) for g in got}) == len(got), f"{where}: duplicate candidates {got}"
    for r, (g, w) in enumerate(zip(got, want, strict=True)):
        if _key(g) == _key(w):
            continue
        assert _key(g) in extended, f"{where}[{r}]: {g} is not among the pipeline's candidates (want {w})"
        ref_score = extended[_key(g)]
        assert math.isclose(ref_score, g["score"], rel_tol=0, abs_tol=SCORE_TOLERANCE), f"{where}[{r}]: {g}"
        assert abs(ref_score - w["score"]) <= TIE, f"{where}[{r}]: {g} instead of {w}, and they do not tie"


def assert_parity(model: Model, texts: Sequence[str], **raw: Any) -> tuple[list[Outcome], list[Any]]:
    """Run the engine on ``texts`` and compare every item with the pipeline; return outcomes and references
    (a list per mask, or the exception the pipeline raised)."""
    outcomes, params = model.run(texts, **raw)
    assert len(outcomes) == len(texts)
    references: list[Any] = []
    for i, (text, outcome) in enumerate(zip(texts, outcomes, strict=True)):
        where = f"{model.arch} item {i} {text[:60]!r}"
        try:
            want = model.reference(text, params)
        except Exception as exc:
            references.append(exc)
            assert isinstance(outcome.error, InputError), f"{where}: pipeline raised {exc!r}, got {outcome}"
            continue
        references.append(want)
        assert outcome.ok, f"{where}: {outcome.error!r}"
        got = outcome.result
        assert got is not None and len(got) == len(want), f"{where}: {len(got or [])} masks, pipeline {len(want)}"
        for m, (g, w) in enumerate(zip(got, want, strict=True)):
            assert_same_candidates(
                g,
                w,
                lambda text=text, m=m, k=len(w): model.reference(text, params, top_k=k + 10)[m],  # type: ignore[misc]
                f"{where} mask {m}",
            )
        assert outcome.label == got[0][0]["token_str"]
        assert outcome.score == got[0][0]["score"]
        json.dumps(got)
    return outcomes, references


# -- tests ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHS)
def test_one_mask_matches_pipeline(request: pytest.FixtureRequest, arch: str) -> None:
    # Given real sentences with one mask each (placeholder or the model's token), some longer than the model's
    # maximum length, in more than one micro-batch
    model = _model(request, arch)
    texts = masked_sentences(120, 1, seed=1, mask_token=model.mask_token)
    params = validate_params(TaskName.FILL_MASK, {})
    assert model.n_batches(texts, params) > 1
    assert any(len(model.engine.tokenizer(t)["input_ids"]) > MAX_LENGTH for t in texts)

    # When the engine fills them with the default top_k
    outcomes, _ = assert_parity(model, texts)

    # Then every item matched the pipeline (checked above): one list of 5 candidates per text …
    assert all(o.ok and len(o.result or []) == 1 and len((o.result or [[]])[0]) == 5 for o in outcomes)
    # … and the data is not trivial: many different best tokens, peaked and flat distributions
    best = {o.label for o in outcomes}
    assert len(best) >= 10, best
    top_scores = np.array([o.score for o in outcomes], dtype=float)
    assert top_scores.max() > 0.2 and top_scores.min() < 0.1


@pytest.mark.parametrize("arch", ARCHS)
def test_several_masks_top_k_10_match_pipeline(request: pytest.FixtureRequest, arch: str) -> None:
    # Given sentences with two or three masks each
    model = _model(request, arch)
    texts = masked_sentences(40, 2, seed=2, mask_token=model.mask_token)
    texts += masked_sentences(30, 3, seed=3, mask_token=model.mask_token)

    # When the engine fills them with top_k=10
    outcomes, _ = assert_parity(model, texts, top_k=10)

    # Then each gets one list of 10 candidates per mask, in the pipeline's multi-mask form (the other masks
    # kept in the sequences)
    assert [len(o.result or []) for o in outcomes] == [2] * 40 + [3] * 30
    assert all(len(row) == 10 for o in outcomes for row in o.result or [])
    assert all(model.mask_token in c["sequence"] for o in outcomes for row in o.result or [] for c in row)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("top_k", [3, 5])
def test_targets_match_pipeline(request: pytest.FixtureRequest, arch: str, top_k: int) -> None:
    # Given targets that are vocabulary tokens, words the vocabulary lacks (the pipeline uses their first token),
    # a duplicate, and an empty string (ignored); four distinct candidates in all (fewer than top_k=5)
    model = _model(request, arch)
    vocab = model.engine.tokenizer.get_vocab()
    in_vocab = [t for t in ("the", "of", "is", "a") if t in vocab][:2]
    assert len(in_vocab) == 2
    missing = ["xylophonist", "Zzyzx"]
    assert all(m not in vocab for m in missing)
    targets = [*in_vocab, *missing, in_vocab[0], ""]
    texts = masked_sentences(25, 1, seed=4, mask_token=model.mask_token)
    texts += masked_sentences(15, 2, seed=5, mask_token=model.mask_token)

    # When the engine fills them with those targets
    outcomes, _ = assert_parity(model, texts, top_k=top_k, targets=targets)

    # Then the candidates are only the targets' ids, at most four of them per mask
    allowed = set(model.engine.target_ids(targets).tolist())
    assert 3 <= len(allowed) <= 4
    rows = [row for o in outcomes for row in o.result or []]
    assert rows and all({c["token"] for c in row} <= allowed for row in rows)
    assert all(len(row) == min(top_k, len(allowed)) for row in rows)


@pytest.mark.parametrize("arch", ARCHS)
def test_unicode_emoji_and_spaces_match_pipeline(request: pytest.FixtureRequest, arch: str) -> None:
    # Given texts with accents, CJK, emoji (with joiners), ligatures, runs of spaces, tabs and newlines, masks at
    # the edges, adjacent masks, and a text that is only a mask
    model = _model(request, arch)

    # When the engine fills them (default and top_k=10)
    outcomes, _ = assert_parity(model, UNICODE_TEXTS)
    assert_parity(model, UNICODE_TEXTS, top_k=10)

    # Then all of them had a result like the pipeline's (checked above)
    assert all(o.ok for o in outcomes)


@pytest.mark.parametrize("arch", ["bert", "roberta"])
def test_placeholder_is_the_models_mask_token(request: pytest.FixtureRequest, arch: str) -> None:
    # Given the same sentences written with the placeholder and with the model's mask token
    model = _model(request, arch)
    with_placeholder = masked_sentences(20, 2, seed=6, mask_token=MASK_PLACEHOLDER)
    with_token = [t.replace(MASK_PLACEHOLDER, model.mask_token) for t in with_placeholder]

    # When the engine fills both
    a, _ = model.run(with_placeholder)
    b, _ = model.run(with_token)

    # Then the results are the same
    assert [o.result for o in a] == [o.result for o in b]
    assert all(o.ok for o in a)


@pytest.mark.parametrize("arch", ["bert", "roberta"])
def test_over_long_texts_are_truncated_like_the_pipeline_with_truncation(
    request: pytest.FixtureRequest, arch: str
) -> None:
    # Given texts longer than the model's maximum length: a mask before the cut, masks on both sides of it, and a
    # mask only past it
    model = _model(request, arch)
    filler = " ".join(corpus()[10:20])
    texts = [
        f"The first [[MASK]] is early. {filler}",
        f"The first [[MASK]] is early. {filler} and one [[MASK]] late",
        f"{filler} only a late [[MASK]] here",
    ]
    assert all(len(model.engine.tokenizer(t)["input_ids"]) > 3 * MAX_LENGTH for t in texts)

    # When the engine fills them
    outcomes, refs = assert_parity(model, texts, top_k=7)

    # Then masks past the cut get no entry, and a text whose only mask is past it fails as an input error
    # (the pipeline with truncation=True raises "No mask_token … found")
    assert [len(o.result or []) for o in outcomes[:2]] == [1, 1]
    assert isinstance(refs[2], Exception)
    assert isinstance(outcomes[2].error, InputError)


@pytest.mark.parametrize("arch", ["bert", "roberta"])
def test_text_without_mask_fails_alone(request: pytest.FixtureRequest, arch: str) -> None:
    # Given a text without a mask between two with one
    model = _model(request, arch)
    texts = ["The [[MASK]] is here.", "No mask at all in this one.", "Another [[MASK]] one."]

    # When the engine runs
    outcomes, _ = assert_parity(model, texts)

    # Then only that text fails, with an input error that names the mask token
    assert [o.ok for o in outcomes] == [True, False, True]
    error = outcomes[1].error
    assert isinstance(error, InputError) and model.mask_token in error.message
    assert json.dumps(error.as_dict())


@pytest.mark.parametrize("targets", [["", " "], []], ids=["tokenize-to-nothing", "empty-list"])
def test_targets_that_are_no_tokens_fail_every_item(request: pytest.FixtureRequest, targets: list[str]) -> None:
    # Given targets that give no candidate (the pipeline raises "At least one target must be provided")
    model = _model(request, "bert")
    with pytest.raises(ValueError, match="At least one target"):
        model.reference("The [[MASK]] is here.", {"top_k": 5, "targets": targets})

    # When the engine runs two texts with them
    outcomes, _ = model.run(["The [[MASK]] is here.", "Another [[MASK]] one."], targets=targets)

    # Then every item fails with an invalid parameter
    assert len(outcomes) == 2
    assert all(isinstance(o.error, InvalidParameter) for o in outcomes)


# -- the head at the mask positions --------------------------------------------------------------------

#: Masked-LM classes built here beside the three families: two with the RoBERTa layout, and one without a known
#: encoder/head split (ELECTRA's generator), which must run the whole model.
OTHER_ARCHS: dict[str, str] = {
    "xlm-roberta": "XLMRobertaForMaskedLM",
    "camembert": "CamembertForMaskedLM",
    "electra": "ElectraForMaskedLM",
}


@pytest.fixture(scope="session")
def other_mlm_dirs(fill_mask_dirs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny random-weight models of `OTHER_ARCHS`, with the tokenizer of the family they share (RoBERTa's BPE for
    XLM-R and CamemBERT, BERT's WordPiece for ELECTRA)."""
    import torch
    import transformers

    root = tmp_path_factory.mktemp("other_mlm_models")
    roberta = transformers.AutoConfig.from_pretrained(fill_mask_dirs["roberta"]).to_dict()
    for key in ("model_type", "architectures", "transformers_version"):
        roberta.pop(key, None)
    bert_tokenizer = transformers.AutoTokenizer.from_pretrained(fill_mask_dirs["bert"])
    configs = {
        "xlm-roberta": (transformers.XLMRobertaConfig(**roberta), fill_mask_dirs["roberta"]),
        "camembert": (transformers.CamembertConfig(**roberta), fill_mask_dirs["roberta"]),
        "electra": (
            transformers.ElectraConfig(
                vocab_size=len(bert_tokenizer),
                embedding_size=32,
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=2,
                num_attention_heads=2,
                max_position_embeddings=512,
                initializer_range=0.5,
            ),
            fill_mask_dirs["bert"],
        ),
    }
    dirs = {}
    for arch, (config, tokenizer_dir) in configs.items():
        torch.manual_seed(0)
        model = transformers.AutoModelForMaskedLM.from_config(config)
        assert type(model).__name__ == OTHER_ARCHS[arch]
        model.save_pretrained(root / arch)
        transformers.AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(root / arch)
        dirs[arch] = root / arch
    return dirs


def _model_cache(dirs: dict[str, Path], precision: str) -> ModelCache:
    return model_cache(dirs, precision=precision, max_batch_tokens=MAX_BATCH_TOKENS)


@pytest.fixture(scope="session")
def other_mlm_cache(other_mlm_dirs: dict[str, Path]) -> ModelCache:
    return _model_cache(other_mlm_dirs, "fp32")


def projection_inputs(engine: FillMaskEngine, run: Callable[[], Any]) -> tuple[Any, list[tuple[int, ...]]]:
    """``run()``'s result, and the shape of every input the model's vocabulary projection saw meanwhile."""
    shapes: list[tuple[int, ...]] = []
    projection = engine.model.get_output_embeddings()
    handle = projection.register_forward_hook(lambda _m, args, _out: shapes.append(tuple(args[0].shape)))
    try:
        return run(), shapes
    finally:
        handle.remove()


def mixed_texts(mask_token: str) -> list[str]:
    """One, two and three masks per text, in more than one micro-batch."""
    texts = masked_sentences(30, 1, seed=7, mask_token=mask_token)
    texts += masked_sentences(20, 2, seed=8, mask_token=mask_token)
    return texts + masked_sentences(10, 3, seed=9, mask_token=mask_token)


@pytest.mark.parametrize("arch", [*ARCHS, "xlm-roberta", "camembert"])
def test_head_runs_on_the_masks_only(request: pytest.FixtureRequest, arch: str) -> None:
    # Given a model of a family whose encoder/head split the engine knows, and texts with 1-3 masks each
    if arch in ARCHS:
        model = _model(request, arch)
    else:
        model_cache, dirs = request.getfixturevalue("other_mlm_cache"), request.getfixturevalue("other_mlm_dirs")
        model = Model(model_cache, dirs, arch)
    texts = mixed_texts(model.mask_token)
    features = model.engine.preprocess([{"text": t} for t in texts], read_params(TaskName.FILL_MASK, {}))
    n_masks = sum(len(p) for p in features.extra["mask_positions"])

    # When the engine fills them, watching the vocabulary projection
    (outcomes, _), shapes = projection_inputs(model.engine, lambda: assert_parity(model, texts))

    # Then the engine chose the split, the projection saw only the masks' hidden states ([M, H] per
    # micro-batch, M masks in all), and every item matched the pipeline (checked above)
    assert model.engine.head_at_masks
    hidden = model.engine.config.hidden_size
    assert len(shapes) == len(model.engine.plan(features)) > 1
    assert all(len(s) == 2 and s[1] == hidden for s in shapes), shapes
    assert sum(s[0] for s in shapes) == n_masks
    assert all(o.ok for o in outcomes)


def test_unknown_architecture_runs_the_whole_model(request: pytest.FixtureRequest) -> None:
    # Given a masked-LM architecture without a known encoder/head split (ELECTRA's generator)
    model_cache, dirs = request.getfixturevalue("other_mlm_cache"), request.getfixturevalue("other_mlm_dirs")
    model = Model(model_cache, dirs, "electra")
    texts = mixed_texts(model.mask_token)

    # When the engine fills texts with it
    (outcomes, _), shapes = projection_inputs(model.engine, lambda: assert_parity(model, texts, top_k=7))

    # Then it fell back to the whole model (the projection saw every token, [B, T, H]) and still matched the
    # pipeline (checked above)
    assert not model.engine.head_at_masks
    assert shapes and all(len(s) == 3 for s in shapes), shapes
    assert all(o.ok and len((o.result or [[]])[0]) == 7 for o in outcomes)


@pytest.mark.parametrize("arch", ARCHS)
def test_int8_head_runs_the_quantized_modules_on_the_masks(fill_mask_dirs: dict[str, Path], arch: str) -> None:
    # Given the model loaded at int8 (dynamic quantization replaces every nn.Linear, the head's too)
    import torch

    engine = _model_cache({arch: fill_mask_dirs[arch]}, "int8").engine(arch, TaskName.FILL_MASK)
    assert isinstance(engine, FillMaskEngine)
    assert isinstance(engine.model.get_output_embeddings(), torch.ao.nn.quantized.dynamic.Linear)
    texts = mixed_texts(engine.tokenizer.mask_token)

    # When the engine fills texts
    params = validate_params(TaskName.FILL_MASK, {})
    outcomes, shapes = projection_inputs(engine, lambda: engine.run([{"text": t} for t in texts], params))

    # Then the quantized projection ran, on the mask rows only, and every item got 5 candidates per mask, best
    # first. (Not compared with fp32: on these tiny random models int8 moves the best filler of a quarter to a
    # half of the items, whether the head runs on the masks or on every token.)
    assert engine.head_at_masks
    assert shapes and all(len(s) == 2 for s in shapes), shapes
    assert all(o is not None and o.ok for o in outcomes)
    rows = [[c["score"] for c in row] for o in outcomes if o is not None for row in o.result or []]
    assert len(rows) == 30 + 2 * 20 + 3 * 10
    assert all(len(r) == 5 and r == sorted(r, reverse=True) and 0 < r[0] <= 1 for r in rows)
