"""Sentence embeddings, equal to what sentence-transformers computes for the model
(``SentenceTransformer(model).encode(texts, prompt=…, truncate_dim=…, normalize_embeddings=…)``).

The model's sentence-transformers files say what to compute; they are read once, when the engine is made:

* ``modules.json``: a ``Transformer`` (its files at the model's root), then ``Pooling``, any ``Dense`` layers, and
  an optional ``Normalize``. Any other module (``Asym``/``Router``, ``CNN``, ``WordEmbeddings``, custom code …) is
  refused with `ValueError` naming it (the model cache makes that a `ModelLoadError`);
* ``sentence_bert_config.json`` (or one of its legacy names): ``max_seq_length`` (the truncation length),
  ``do_lower_case`` (a ``Lowercase`` normalizer put in front of the tokenizer's, as sentence-transformers does);
* ``1_Pooling/config.json`` (the pooling module's own directory): the pooling modes (``pooling_mode``, or the
  legacy ``pooling_mode_*`` flags; several modes are concatenated in sentence-transformers' order) and
  ``include_prompt``;
* ``config_sentence_transformers.json``: ``prompts``, ``default_prompt_name``, ``truncate_dim``.

A plain transformers directory (no ``modules.json``) is a ``Transformer`` and mean pooling (last-token pooling for
a ``…ForCausalLM`` architecture), without normalization, truncated at the model's maximum length — as
sentence-transformers loads it.

Pooling is sentence-transformers' ``Pooling._forward_padded`` on right-padded batches: ``cls`` is the first
position the mask keeps, ``max`` fills masked positions with ``-inf``, ``mean`` divides the masked sum by the
kept count (clamped to 1e-9), ``lasttoken`` takes the last kept position. With ``include_prompt: false`` the
first ``prompt_length`` positions leave the mask, ``prompt_length`` being the length of the prompt tokenized
alone, less a trailing special token (`Engine` measures it as sentence-transformers' ``_get_prompt_length`` does).

Parameters (`inferq.task_specs.EmbeddingParams`): ``normalize`` ``None`` follows the ``Normalize`` module;
``False`` gives the pooled (and ``Dense``) vector; ``dimensions`` keeps the first components and, when
normalizing, normalizes again (``encode(truncate_dim=d, normalize_embeddings=True)``); without ``dimensions``
the config's ``truncate_dim`` applies, as in ``encode``.

``overflow="windows"``: the prompt and the text are tokenized together (no special tokens, with character
offsets); the tokens that end inside the prompt are the prompt's, the rest are the text's, cut into windows of
``window_tokens`` tokens (``None``: the model's maximum less the special and prompt tokens) of which neighbours
share ``stride`` (a little more where a window would start inside a word: windows begin and end at word
boundaries, a word longer than a window aside, so that for a WordPiece model the window's text
``text[start:end]`` embeds to the very vector stored for it); each window is embedded as ``[special] + prompt tokens + window tokens + [special]``, the
model's own template, and its span is the characters its tokens cover in the text (``text[start:end]``).

Differences from sentence-transformers, on purpose:

* token states are pooled in float32 even when the model runs at fp16/bf16 (sentence-transformers pools in the
  model's dtype and only accumulates means in float32);
* with ``dimensions`` (or a config ``truncate_dim``) and normalization on, the truncated vector is normalized
  again, whether normalization came from the parameter or from the model's ``Normalize`` module
  (``encode(truncate_dim=d)`` alone leaves it as cut);
* a ``max_seq_length`` beyond the model's position table is cut to it (sentence-transformers' forward pass fails);
* ``Dense`` layers take weights from safetensors only (pickled ``pytorch_model.bin`` weights are refused) and
  activations among the ``torch.nn`` ones listed in `_ACTIVATIONS`; the residual variant is refused;
* a model whose ``config_sentence_transformers.json`` names another model type (``CrossEncoder``,
  ``SparseEncoder``) is refused, where sentence-transformers would convert it with default modules;
* only text inputs on a ``forward``/``last_hidden_state`` transformer: chat templates, multimodal inputs,
  ``processing_kwargs`` overrides and flattened (FA2) batches are not supported.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from tokenizers.normalizers import Lowercase
from tokenizers.normalizers import Sequence as NormalizerSequence

from inferq.errors import InferqError, InvalidParameter
from inferq.store.chunks import result_json
from inferq.task_specs import EmbeddingParams, TaskName
from worker.engines.base import Engine, Outcome
from worker.engines.batching import Features, RunOutputs
from worker.engines.columnar import format_items
from worker.loaded import LoadedModel, position_limit

log = logging.getLogger(__name__)

#: sentence-transformers' pooling modes, in the order it concatenates legacy ``pooling_mode_*`` flags.
_LEGACY_POOLING_FLAGS = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}
POOLING_MODES = tuple(_LEGACY_POOLING_FLAGS.values())

#: Where the Transformer module's own config may be (sentence-transformers tries them in this order).
_TRANSFORMER_CONFIGS = (
    "sentence_bert_config.json",
    "sentence_roberta_config.json",
    "sentence_distilbert_config.json",
    "sentence_camembert_config.json",
    "sentence_albert_config.json",
    "sentence_xlm-roberta_config.json",
    "sentence_xlnet_config.json",
)

#: The modules this engine computes, by class name (``sentence_transformers.models.Pooling`` and the newer
#: ``sentence_transformers.sentence_transformer.modules.pooling.Pooling`` alike).
_KNOWN_MODULES = ("Transformer", "Pooling", "Dense", "Normalize")

#: ``Dense`` activations computed here: their ``torch.nn`` class paths → the function.
_ACTIVATIONS = {
    "torch.nn.modules.activation.Tanh": "tanh",
    "torch.nn.modules.linear.Identity": "identity",
    "torch.nn.modules.activation.ReLU": "relu",
    "torch.nn.modules.activation.GELU": "gelu",
    "torch.nn.modules.activation.Sigmoid": "sigmoid",
    "torch.nn.modules.activation.SiLU": "silu",
}


@dataclass(frozen=True)
class DenseLayer:
    """A sentence-transformers ``Dense`` module: ``activation(x @ weight.T + bias)``."""

    weight: Any  # torch.Tensor [out, in], on the device, float32
    bias: Any  # torch.Tensor [out] or None
    activation: str


@dataclass(frozen=True)
class SentenceModules:
    """What the model's sentence-transformers files say (or their defaults for a plain transformers model)."""

    pooling: tuple[str, ...] = ("mean",)
    include_prompt: bool = True
    dense: tuple[DenseLayer, ...] = ()
    normalize: bool = False
    #: Truncation length of the Transformer module.
    max_seq_length: int = 512
    do_lower_case: bool = False
    prompts: dict[str, str] = field(default_factory=dict)
    default_prompt_name: str | None = None
    truncate_dim: int | None = None


@dataclass(frozen=True)
class Setup:
    """One job's parameters, resolved against the model: what preprocess, forward and postprocess do."""

    pooling: tuple[str, ...]
    prompt: str
    #: Leading positions left out of pooling (the prompt's, with ``include_prompt: false``), else 0.
    exclude: int
    normalize: bool
    #: Components kept (Matryoshka), or None for all.
    truncate: int | None
    dim: int
    dtype: str
    windows: bool
    window_tokens: int | None
    stride: int


class EmbeddingEngine(Engine[EmbeddingParams]):
    task: ClassVar[TaskName] = TaskName.EMBEDDING
    auto_model: ClassVar[str] = "AutoModel"
    needs_head: ClassVar[bool] = False
    #: Serialise a chunk's results in one pass (`worker.engines.columnar`); ``False``: each item's result as dicts,
    #: serialised by the write (the reference the columnar text is tested against).
    columnar: ClassVar[bool] = True

    def __init__(self, loaded: LoadedModel) -> None:
        super().__init__(loaded)
        self.modules = read_sentence_modules(loaded)
        if self.modules.do_lower_case:
            self.tokenizer = _lowercased(self.tokenizer)
        #: The width of one pooling mode's output: the transformer's hidden size.
        self.hidden_size = int(_hidden_size(self.config))
        width = self.hidden_size * len(self.modules.pooling)
        for layer in self.modules.dense:
            if int(layer.weight.shape[1]) != width:
                raise ValueError(f"a Dense module takes {int(layer.weight.shape[1])} inputs, but gets {width}")
            width = int(layer.weight.shape[0])
        self._special_ids = set(int(i) for i in getattr(self.tokenizer, "all_special_ids", ()))
        self._prompt_lengths: dict[str, int] = {}
        self._setups: dict[EmbeddingParams, Setup | InvalidParameter] = {}
        self._template: tuple[list[int], list[int], list[int], list[int], int] | None = None

    # -- parameters ------------------------------------------------------------------------------------

    def embedding_size(self, pooling: tuple[str, ...]) -> int:
        """The vector's size before truncation, with these pooling modes."""
        if self.modules.dense:
            return int(self.modules.dense[-1].weight.shape[0])
        return self.hidden_size * len(pooling)

    def setup(self, params: EmbeddingParams) -> Setup:
        """``params`` resolved against the model; raises `InvalidParameter` when they do not fit it."""
        cached = self._setups.get(params)
        if cached is None:
            try:
                cached = self._setup(params)
            except InvalidParameter as exc:
                cached = exc
            if len(self._setups) >= 256:
                self._setups.clear()
            self._setups[params] = cached
        if isinstance(cached, InvalidParameter):
            raise cached
        return cached

    def _setup(self, params: EmbeddingParams) -> Setup:
        modules = self.modules
        pooling = (params.pooling,) if params.pooling is not None else modules.pooling
        if params.pooling is not None and modules.dense and len(modules.pooling) != 1:
            raise InvalidParameter(
                f"parameter pooling: this model's Dense module takes {len(modules.pooling)} pooled vectors",
                field="pooling",
            )
        size = self.embedding_size(pooling)
        truncate = params.dimensions if params.dimensions is not None else modules.truncate_dim
        if params.dimensions is not None and params.dimensions > size:
            raise InvalidParameter(
                f"parameter dimensions: {params.dimensions} is more than the model's {size} dimensions",
                field="dimensions",
            )
        if truncate is not None and truncate >= size:
            truncate = None
        prompt = self.resolve_prompt(params)
        exclude = self.prompt_length(prompt) if prompt and not modules.include_prompt else 0
        return Setup(
            pooling=pooling,
            prompt=prompt,
            exclude=exclude,
            normalize=modules.normalize if params.normalize is None else params.normalize,
            truncate=truncate,
            dim=truncate if truncate is not None else size,
            dtype=params.dtype,
            windows=params.overflow == "windows",
            window_tokens=params.window_tokens,
            stride=params.stride,
        )

    def resolve_prompt(self, params: EmbeddingParams) -> str:
        """The prompt put before every text (``""`` for none), as ``SentenceTransformer._resolve_prompt``
        finds it: ``prompt``, else the ``prompt_name``'s, else the default prompt's."""
        if params.prompt is not None:
            return params.prompt
        prompts = self.modules.prompts
        if params.prompt_name is not None:
            if params.prompt_name not in prompts:
                known = ", ".join(repr(k) for k in prompts) or "none"
                raise InvalidParameter(
                    f"parameter prompt_name: the model has no prompt {params.prompt_name!r} (its prompts: {known})",
                    field="prompt_name",
                )
            return prompts[params.prompt_name]
        if self.modules.default_prompt_name is not None:
            return prompts.get(self.modules.default_prompt_name, "")
        return ""

    def prompt_length(self, prompt: str) -> int:
        """The prompt's tokens, as ``Transformer._get_prompt_length`` counts them: the prompt tokenized alone
        (special tokens included, truncated), less a trailing special token."""
        length = self._prompt_lengths.get(prompt)
        if length is None:
            ids = self.tokenize([prompt], max_length=self.modules.max_seq_length)["input_ids"][0]
            length = len(ids) - (1 if ids and int(ids[-1]) in self._special_ids else 0)
            self._prompt_lengths[prompt] = length
        return length

    # -- the three steps -------------------------------------------------------------------------------

    def preprocess(self, inputs: Sequence[dict[str, Any]], params: EmbeddingParams) -> Features:
        """One feature per text (truncated), or one per window (``overflow=windows``); ``extra["error"]`` is the
        parameters' error (every item fails with it), ``extra["errors"]`` the items that fail alone."""
        try:
            setup = self.setup(params)
        except InvalidParameter as exc:
            return _no_features(error=exc)
        if not inputs:
            return _no_features()
        texts = [setup.prompt + str(i["text"]) for i in inputs]
        if setup.windows:
            return self._windows(texts, setup)
        enc = self.tokenize(texts, max_length=self.modules.max_seq_length)
        return Features(
            input_ids=enc["input_ids"],
            token_type_ids=enc.get("token_type_ids"),
            item_of=np.arange(len(inputs)),
            extra={"error": None, "errors": {}},
        )

    def forward(self, batch: dict[str, Any], params: EmbeddingParams) -> dict[str, Any]:
        setup = self.setup(params)
        states = self.model(**batch)[0].float()  # [B, T, H]
        mask = batch["attention_mask"]
        if setup.exclude:
            mask = mask.clone()
            mask[:, : setup.exclude] = 0  # right-padded: the prompt's positions are the first ones
        vectors = torch.cat([_pool(mode, states, mask) for mode in setup.pooling], dim=-1)
        for layer in self.modules.dense:
            vectors = _activate(F.linear(vectors, layer.weight, layer.bias), layer.activation)
        if setup.truncate is not None:
            vectors = vectors[:, : setup.truncate]
        if setup.normalize:
            vectors = F.normalize(vectors, p=2, dim=-1)
        return {"embedding": vectors.float()}

    def postprocess(
        self,
        inputs: Sequence[dict[str, Any]],
        features: Features,
        outputs: RunOutputs,
        params: EmbeddingParams,
    ) -> list[Outcome]:
        error: InferqError | None = features.extra.get("error")
        if error is not None:
            return [Outcome.failure(error) for _ in inputs]
        setup = self.setup(params)
        vectors = outputs.stacked("embedding")
        if vectors.shape[1] != setup.dim:  # nothing ran (every feature failed): rows of the right width
            vectors = np.zeros((len(features), setup.dim), dtype=np.float32)
        stored = vectors.astype("<f2" if setup.dtype == "float16" else "<f4")
        errors: dict[int, InferqError] = features.extra.get("errors", {})
        described = {"dim": setup.dim, "dtype": setup.dtype}
        # One contiguous array of the chunk's vectors, as one ``bytes``: an item's vectors are a slice of it.
        blob = np.ascontiguousarray(stored).tobytes()
        width = stored.shape[1] * stored.itemsize
        if not setup.windows:
            if not self.columnar:
                return [Outcome(result=dict(described), vector=stored[i].tobytes()) for i in range(len(inputs))]
            # Every item's result is the same text: serialised once.
            text = result_json(described)
            return [Outcome(vector=blob[i * width : (i + 1) * width], result_text=text) for i in range(len(inputs))]
        spans: list[list[tuple[int, int]]] = features.extra["spans"]
        bounds = np.searchsorted(features.item_of, np.arange(len(inputs) + 1)).tolist()
        ok = [i for i in range(len(inputs)) if i not in errors]
        texts: list[str | None] = [None] * len(inputs)
        if self.columnar:
            # ``{"dim": …, "dtype": …, "windows": [{"start": s, "end": e}, …]}`` for every item in one pass.
            opening = result_json(described)[:-1].replace("%", "%%") + ', "windows": ['
            made = format_items(
                '{"start": %d, "end": %d}',
                [len(spans[i]) for i in ok],
                [x for i in ok for span in spans[i] for x in span],
                opening=opening,
                closing="]}",
            )
            for i, text in zip(ok, made, strict=True):
                texts[i] = text
        outcomes: list[Outcome] = []
        for i in range(len(inputs)):
            if i in errors:
                outcomes.append(Outcome.failure(errors[i]))
                continue
            vector = blob[bounds[i] * width : bounds[i + 1] * width]
            if texts[i] is not None:
                outcomes.append(Outcome(vector=vector, result_text=texts[i]))
                continue
            windows = [{"start": s, "end": e} for s, e in spans[i]]
            outcomes.append(Outcome(result={**described, "windows": windows}, vector=vector))
        return outcomes

    # -- windows ---------------------------------------------------------------------------------------

    def template(self) -> tuple[list[int], list[int], list[int], list[int], int]:
        """The special tokens the tokenizer puts around one text: ``(prefix ids, suffix ids, prefix types,
        suffix types, the text's token type)``."""
        if self._template is None:
            enc = self.tokenizer("a", add_special_tokens=True, return_attention_mask=False, return_token_type_ids=True)
            sequence = enc.encodings[0].sequence_ids
            inside = [t for t, s in enumerate(sequence) if s is not None]
            if not inside:
                raise ValueError("the tokenizer gives no tokens for the text 'a'")
            first, last = inside[0], inside[-1] + 1
            ids, types = list(enc["input_ids"]), list(enc.get("token_type_ids") or [0] * len(sequence))
            self._template = (ids[:first], ids[last:], types[:first], types[last:], int(types[first]))
        return self._template

    def _windows(self, texts: list[str], setup: Setup) -> Features:
        errors: dict[int, InferqError] = {}
        if not getattr(self.tokenizer, "is_fast", False):
            error = InvalidParameter(
                "parameter overflow: windows need a fast (tokenizers) tokenizer, and "
                f"{type(self.tokenizer).__name__} is not one",
                field="overflow",
            )
            return _no_features(error=error)
        pre, post, pre_types, post_types, text_type = self.template()
        specials = len(pre) + len(post)
        enc = self.tokenizer(
            texts,
            add_special_tokens=False,
            padding=False,
            truncation=False,
            return_offsets_mapping=True,
            return_attention_mask=False,
            return_token_type_ids=False,
            verbose=False,  # texts longer than the model's maximum are expected here
        )
        prompt_chars = len(setup.prompt)
        limit = self.modules.max_seq_length
        ids: list[list[int]] = []
        types: list[list[int]] = []
        item_of: list[int] = []
        spans: list[list[tuple[int, int]]] = []
        for i, (tokens, offsets) in enumerate(zip(enc["input_ids"], enc["offset_mapping"], strict=True)):
            n_prompt = 0
            if prompt_chars:
                while n_prompt < len(tokens) and offsets[n_prompt][1] <= prompt_chars:
                    n_prompt += 1
            room = limit - specials - n_prompt
            size = setup.window_tokens if setup.window_tokens is not None else room
            if size < 1 or size > room:
                errors[i] = InvalidParameter(
                    f"parameter window_tokens: {size} tokens per window, with the prompt's {n_prompt} and "
                    f"{specials} special tokens, do not fit the model's {limit}"
                    + (f" (at most {room})" if room >= 1 else ""),
                    field="window_tokens",
                )
                spans.append([])
                continue
            if setup.stride >= size:
                errors[i] = InvalidParameter(
                    f"parameter stride: {setup.stride} must be smaller than the {size} tokens of a window",
                    field="stride",
                )
                spans.append([])
                continue
            head = pre + list(tokens[:n_prompt])
            head_types = pre_types + [text_type] * n_prompt
            body = tokens[n_prompt:]
            where = offsets[n_prompt:]
            words = enc.word_ids(i)[n_prompt:]
            n = len(body)
            item_spans: list[tuple[int, int]] = []
            start = reached = 0
            while True:
                end = _word_end(words, start, min(start + size, n))
                if end <= reached:  # a word longer than what is left of the window: cut inside it
                    end = min(start + size, n)
                reached = end
                ids.append(head + list(body[start:end]) + post)
                types.append(head_types + [text_type] * (end - start) + post_types)
                item_of.append(i)
                if end > start:
                    item_spans.append((max(where[start][0] - prompt_chars, 0), where[end - 1][1] - prompt_chars))
                else:
                    item_spans.append((0, 0))
                if end >= n:
                    break
                start = _word_start(words, start, max(end - setup.stride, start + 1), end)
            spans.append(item_spans)
        return Features(
            input_ids=ids,
            token_type_ids=types if self._accepts_token_types else None,
            item_of=np.asarray(item_of, dtype=np.int64),
            extra={"error": None, "errors": errors, "spans": spans},
        )


def _word_end(words: Sequence[int | None], start: int, end: int) -> int:
    """A window ``[start, end)`` cut back to end with a whole word, unless that leaves it empty (a word longer than
    a window is cut where the window ends)."""
    cut = end
    while start < cut < len(words) and words[cut] is not None and words[cut] == words[cut - 1]:
        cut -= 1
    return cut if cut > start else end


def _word_start(words: Sequence[int | None], previous: int, start: int, end: int) -> int:
    """The first token of the window after ``[previous, end)``, proposed at ``start``: moved back to its word's
    first token (the windows then share a little more than ``stride``), else forward to the next word's first
    token inside the previous window (a little less), else ``start`` itself (a word longer than a window is cut
    where it must be)."""

    def begins_word(t: int) -> bool:
        return words[t] is None or words[t] != words[t - 1]

    back = start
    while back > previous + 1 and not begins_word(back):
        back -= 1
    if begins_word(back):
        return back
    ahead = start + 1
    while ahead < end and not begins_word(ahead):
        ahead += 1
    return ahead if ahead < end else start


# -- pooling ---------------------------------------------------------------------------------------------


def _pool(mode: str, states: Any, mask: Any) -> Any:
    """sentence-transformers' ``Pooling._forward_padded`` for one mode, on right-padded float32 states."""
    if mode == "cls":
        first = mask.to(torch.int).argmax(dim=1)
        return states[torch.arange(states.shape[0], device=states.device), first]
    if mode == "max":
        return states.masked_fill(mask.unsqueeze(-1) == 0, float("-inf")).max(dim=1).values
    if mode in ("mean", "mean_sqrt_len_tokens"):
        weights = mask.unsqueeze(-1).to(states.dtype)
        total = (states * weights).sum(dim=1)
        count = torch.clamp(weights.sum(dim=1), min=1e-9)
        return total / (count if mode == "mean" else torch.sqrt(count))
    if mode == "weightedmean":
        positions = torch.arange(1, states.shape[1] + 1, device=states.device, dtype=states.dtype).view(1, -1, 1)
        weights = mask.unsqueeze(-1).to(states.dtype) * positions
        return (states * weights).sum(dim=1) / torch.clamp(weights.sum(dim=1), min=1e-9)
    if mode == "lasttoken":
        length = states.shape[1]
        values, back = mask.flip(1).max(1)
        back = torch.where(values == 0, length - 1, back)
        kept = states * mask.unsqueeze(-1).to(states.dtype)
        return kept[torch.arange(states.shape[0], device=states.device), length - back - 1]
    raise ValueError(f"unknown pooling mode {mode!r}")


def _activate(x: Any, name: str) -> Any:
    if name == "tanh":
        return x.tanh()
    if name == "relu":
        return F.relu(x)
    if name == "gelu":
        return F.gelu(x)
    if name == "sigmoid":
        return x.sigmoid()
    if name == "silu":
        return F.silu(x)
    return x


def _no_features(error: InferqError | None = None) -> Features:
    return Features(input_ids=[], item_of=np.zeros(0, dtype=np.int64), extra={"error": error, "errors": {}})


# -- the model's sentence-transformers files ------------------------------------------------------------


def read_sentence_modules(loaded: LoadedModel) -> SentenceModules:
    """Read the model's sentence-transformers files (see the module docstring). Raises `ValueError` (or
    `OSError` when a file cannot be fetched) for what this engine does not compute."""
    source = loaded.source
    config = loaded.model.config
    modules_json = loaded.read_json("modules.json")
    st_config = loaded.read_json("config_sentence_transformers.json")
    if modules_json is None:
        is_causal_lm = bool(getattr(config, "architectures", None)) and (
            str(config.architectures[0]).endswith("ForCausalLM") and getattr(config, "is_causal", True)
        )
        prompts, default_prompt_name, truncate_dim = _prompts(st_config, source)
        return SentenceModules(
            pooling=("lasttoken",) if is_causal_lm else ("mean",),
            max_seq_length=_default_max_length(loaded),
            prompts=prompts,
            default_prompt_name=default_prompt_name,
            truncate_dim=truncate_dim,
        )
    if st_config is not None and st_config.get("model_type", "SentenceTransformer") != "SentenceTransformer":
        raise ValueError(
            f"{source} is a {st_config['model_type']} model (config_sentence_transformers.json), "
            "not a SentenceTransformer"
        )
    entries = sorted(modules_json, key=lambda m: int(m.get("idx", 0)))
    kinds = [_module_kind(str(m.get("type", ""))) for m in entries]
    order = "Transformer, Pooling, Dense…, Normalize"
    if not kinds or kinds[0] != "Transformer":
        raise ValueError(
            f"modules.json: the first module is {entries[0].get('type') if entries else None!r}, not a Transformer"
        )
    transformer_path = str(entries[0].get("path", "") or "")
    if transformer_path.strip("/.") != "":
        raise ValueError(f"modules.json: the Transformer module is in {transformer_path!r}, not the model's root")
    pooling: tuple[str, ...] = ("mean",)
    include_prompt = True
    dense: list[DenseLayer] = []
    normalize = False
    seen_pooling = False
    for entry, kind in zip(entries[1:], kinds[1:], strict=True):
        path = str(entry.get("path", "") or "")
        if kind == "Pooling" and not seen_pooling and not dense and not normalize:
            pooling, include_prompt = _pooling_config(loaded.read_json(_join(path, "config.json")) or {})
            seen_pooling = True
        elif kind == "Dense" and seen_pooling and not normalize:
            dense.append(_dense_layer(loaded, path))
        elif kind == "Normalize" and seen_pooling and not normalize:
            own = loaded.read_json(_join(path, "config.json")) or {}
            for key in ("module_input_name", "module_output_name"):
                if own.get(key, "sentence_embedding") not in (None, "sentence_embedding"):
                    raise ValueError(f"modules.json: a Normalize module of {key}={own[key]!r} is not supported")
            normalize = True
        else:
            raise ValueError(
                f"modules.json: module {entry.get('type')!r} ({path or 'at the root'}) is not supported "
                f"(this engine computes {order}, in that order)"
            )
    if not seen_pooling:
        raise ValueError(f"modules.json has no Pooling module (this engine computes {order})")
    transformer = _transformer_config(loaded)
    max_seq_length = _max_seq_length(transformer, loaded)
    prompts, default_prompt_name, truncate_dim = _prompts(st_config, source)
    return SentenceModules(
        pooling=pooling,
        include_prompt=include_prompt,
        dense=tuple(dense),
        normalize=normalize,
        max_seq_length=max_seq_length,
        do_lower_case=bool(transformer.get("do_lower_case", False)),
        prompts=prompts,
        default_prompt_name=default_prompt_name,
        truncate_dim=truncate_dim,
    )


def _module_kind(type_name: str) -> str | None:
    """``Pooling`` for ``sentence_transformers.models.Pooling`` and its newer paths; None for other modules."""
    if not type_name.startswith("sentence_transformers."):
        return None
    kind = type_name.rsplit(".", 1)[-1]
    return kind if kind in _KNOWN_MODULES else None


def _join(path: str, name: str) -> str:
    path = path.strip("/")
    return f"{path}/{name}" if path else name


def _pooling_config(config: dict[str, Any]) -> tuple[tuple[str, ...], bool]:
    """The pooling modes and ``include_prompt``, read as ``Pooling.load_config`` reads them (``pooling_mode``,
    else the legacy flags in their concatenation order, else mean)."""
    mode = config.get("pooling_mode")
    if mode is None:
        flagged = tuple(m for flag, m in _LEGACY_POOLING_FLAGS.items() if config.get(flag, False))
        modes = flagged or ("mean",)
    else:
        modes = (mode,) if isinstance(mode, str) else tuple(mode)
    for m in modes:
        if m not in POOLING_MODES:
            raise ValueError(f"1_Pooling: unknown pooling mode {m!r} (known: {', '.join(POOLING_MODES)})")
    return modes, bool(config.get("include_prompt", True))


def _dense_layer(loaded: LoadedModel, path: str) -> DenseLayer:

    config = loaded.read_json(_join(path, "config.json")) or {}
    for key in ("module_input_name", "module_output_name"):
        if config.get(key, "sentence_embedding") not in (None, "sentence_embedding"):
            raise ValueError(f"modules.json: a Dense module of {key}={config[key]!r} is not supported")
    if config.get("use_residual", False):
        raise ValueError("modules.json: a Dense module with use_residual is not supported")
    activation_path = str(config.get("activation_function", "torch.nn.modules.activation.Tanh"))
    activation = _ACTIVATIONS.get(activation_path)
    if activation is None:
        raise ValueError(f"modules.json: a Dense module's activation {activation_path!r} is not supported")
    weights_file = loaded.file(_join(path, "model.safetensors"))
    if weights_file is None:
        raise ValueError(
            f"modules.json: the Dense module in {path!r} has no model.safetensors (pickled weights are refused)"
        )
    tensors = load_file(weights_file)
    weight = tensors["linear.weight"].float().to(loaded.device)
    bias = tensors["linear.bias"].float().to(loaded.device) if "linear.bias" in tensors else None
    return DenseLayer(weight=weight, bias=bias, activation=activation)


def _transformer_config(loaded: LoadedModel) -> dict[str, Any]:
    for name in _TRANSFORMER_CONFIGS:
        config = loaded.read_json(name)
        if config:
            break
    else:
        return {}
    task = config.get("transformer_task", "feature-extraction")
    if task != "feature-extraction":
        raise ValueError(f"{name}: transformer_task {task!r} is not supported (feature-extraction only)")
    text = (config.get("modality_config") or {}).get("text")
    if text is not None and (text.get("method"), text.get("method_output_name")) != ("forward", "last_hidden_state"):
        raise ValueError(f"{name}: the text modality {text!r} is not supported (forward → last_hidden_state only)")
    if config.get("module_output_name", "token_embeddings") != "token_embeddings":
        raise ValueError(f"{name}: module_output_name {config['module_output_name']!r} is not supported")
    if (config.get("processing_kwargs") or {}).get("text"):
        raise ValueError(f"{name}: processing_kwargs for text are not supported")
    return dict(config)


def _max_seq_length(transformer: dict[str, Any], loaded: LoadedModel) -> int:
    """The Transformer module's truncation length: the tokenizer's ``model_max_length`` as sentence-transformers
    sets it (``processor_kwargs``/``tokenizer_args``, else ``max_seq_length``, else `_default_max_length`), never
    beyond what the model's position table takes."""
    processor = transformer.get("processor_kwargs") or transformer.get("tokenizer_args") or {}
    given = processor.get("model_max_length", transformer.get("max_seq_length"))
    if given is None:
        return _default_max_length(loaded)
    positions = position_limit(loaded.model.config)
    return int(given) if positions is None else min(int(given), positions)


def _default_max_length(loaded: LoadedModel) -> int:
    """The tokenizer's maximum capped at the model's ``max_position_embeddings``, as sentence-transformers caps
    it (a tokenizer without a maximum: `LoadedModel.max_length`, which the position table decides)."""
    limit = loaded.max_length
    positions = getattr(loaded.model.config, "max_position_embeddings", None)
    if isinstance(positions, int) and positions > 0:
        limit = min(limit, positions)
    return limit


def _prompts(st_config: dict[str, Any] | None, source: str) -> tuple[dict[str, str], str | None, int | None]:
    """``prompts`` (with sentence-transformers' ``query``/``document`` defaults, empty), ``default_prompt_name``
    and ``truncate_dim`` of ``config_sentence_transformers.json``."""
    prompts: dict[str, str] = {"query": "", "document": ""}
    if st_config is None:
        return prompts, None, None
    for name, text in (st_config.get("prompts") or {}).items():
        prompts[str(name)] = "" if text is None else str(text)
    default = st_config.get("default_prompt_name")
    if default is not None and default not in prompts:
        raise ValueError(f"{source}: the default prompt {default!r} is not one of its prompts ({', '.join(prompts)})")
    truncate_dim = st_config.get("truncate_dim")
    return prompts, default, int(truncate_dim) if truncate_dim is not None else None


def _hidden_size(config: Any) -> int:
    for name in ("hidden_size", "dim", "d_model", "n_embd"):
        value = getattr(config, name, None)
        if isinstance(value, int):
            return value
    raise ValueError(f"cannot tell the hidden size of a {type(config).__name__}")


def _lowercased(tokenizer: Any) -> Any:
    """A copy of the tokenizer whose normalizer lowercases first (``do_lower_case``), as sentence-transformers
    makes it; a tokenizer that lowercases already is kept."""
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError("do_lower_case needs a fast (tokenizers) tokenizer")
    normalizer = tokenizer.backend_tokenizer.normalizer
    #: The steps of a normalizer sequence (the tokenizers stubs do not declare it iterable).
    parts: list[Any] = list(normalizer) if isinstance(normalizer, NormalizerSequence) else []  # type: ignore[call-overload]
    if isinstance(normalizer, Lowercase) or any(isinstance(n, Lowercase) for n in parts):
        return tokenizer
    tokenizer = copy.deepcopy(tokenizer)
    steps: list[Any] = [Lowercase()]
    if isinstance(normalizer, NormalizerSequence):
        steps += parts
    elif normalizer is not None:
        steps.append(normalizer)
    tokenizer.backend_tokenizer.normalizer = NormalizerSequence(steps)
    return tokenizer
