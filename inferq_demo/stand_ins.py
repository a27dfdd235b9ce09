"""The demo's stand-in models: small models built locally (tokenizers trained here, random weights, written with
``save_pretrained``) for when a real model cannot be had.

No model hub is needed: a stand-in loads through the same code as a real model (``from_pretrained`` on a local
directory). Three families, as real users meet them: BERT (WordPiece), DistilBERT (WordPiece) and RoBERTa
(byte-level BPE). The tests (`tests.support.tiny_models`) and the benchmark build on these builders; nothing the
product ships uses them.
"""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path
from typing import Any, Literal, cast

from inferq.task_specs import TaskName

Arch = Literal["bert", "distilbert", "roberta"]

#: Special tokens of each family, in vocabulary order.
_BERT_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
_ROBERTA_SPECIALS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]

#: Default labels per task for tiny heads.
DEFAULT_LABELS: dict[TaskName, list[str]] = {
    TaskName.CLASSIFICATION: ["NEGATIVE", "POSITIVE"],
    TaskName.TOKEN_CLASSIFICATION: [
        "O",
        "B-PER",
        "I-PER",
        "B-ORG",
        "I-ORG",
        "B-LOC",
        "I-LOC",
        "B-MISC",
        "I-MISC",
    ],
}


@functools.cache
def corpus() -> tuple[str, ...]:
    """Real English sentences shipped with CPython (the pydoc topic texts): about 3,000, ~19 words on average,
    with a long tail. Used to train tokenizers, and as realistic inputs for tests and benchmarks."""
    import pydoc_data.topics

    text = " ".join(pydoc_data.topics.topics.values())
    sentences = (re.sub(r"\s+", " ", s).strip() for s in re.split(r"(?<=[.!?])\s+", text))
    return tuple(s for s in sentences if 20 < len(s) < 600)


def _train_wordpiece(vocab_size: int, lowercase: bool) -> dict[str, int]:
    """A WordPiece vocabulary of ``vocab_size`` learnt from `corpus()`, the same in every process: the specials, then
    each piece of a BPE trained on the corpus (BERT's normalizer and pre-tokenizer), in the order it learnt them,
    both word-initial and as a ``##`` continuation. (The tokenizers library's own WordPiece trainer numbers the
    ``##`` pieces in the order of a hash map, so each process learnt another vocabulary and built another model
    from the same seed.)"""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=lowercase)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    # Each piece gives two entries (some pieces are only one of them, where they repeat): half the size and a margin.
    trainer = trainers.BpeTrainer(vocab_size=vocab_size // 2 + 64, special_tokens=_BERT_SPECIALS, show_progress=False)
    tok.train_from_iterator(corpus(), trainer)
    pieces = sorted(tok.get_vocab().items(), key=lambda item: item[1])
    entries = dict.fromkeys(_BERT_SPECIALS)
    for piece, _ in pieces:
        if piece not in _BERT_SPECIALS:
            entries.update(dict.fromkeys((piece, f"##{piece}")))
    return {piece: i for i, piece in enumerate(list(entries)[:vocab_size])}


def _train_byte_bpe(vocab_size: int) -> tuple[dict[str, int], list[tuple[str, str]]]:
    from tokenizers import ByteLevelBPETokenizer

    tok = ByteLevelBPETokenizer(add_prefix_space=False)
    tok.train_from_iterator(corpus(), vocab_size=vocab_size, special_tokens=_ROBERTA_SPECIALS, show_progress=False)
    state = tok.to_str()
    model = json.loads(state)["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    return dict(model["vocab"]), merges  # type: ignore[return-value]


def build_tokenizer(arch: Arch, *, max_length: int = 64, vocab_size: int = 2000, lowercase: bool = True) -> Any:
    """A fast tokenizer of the family, trained on `corpus()`."""
    if arch in ("bert", "distilbert"):
        from transformers import BertTokenizer, DistilBertTokenizer

        cls = BertTokenizer if arch == "bert" else DistilBertTokenizer
        return cls(
            vocab=_train_wordpiece(vocab_size, lowercase),
            do_lower_case=lowercase,
            model_max_length=max_length,
        )
    from transformers import RobertaTokenizer

    vocab, merges = _train_byte_bpe(vocab_size)
    return RobertaTokenizer(vocab=vocab, merges=merges, model_max_length=max_length)  # type: ignore[arg-type]


def build_config(
    arch: Arch, vocab_size: int, *, max_length: int, size: Literal["tiny", "base"] = "tiny", **extra: Any
) -> Any:
    """A model config of the family. ``tiny``: 2 layers of width 32; ``base``: the real base sizes."""
    from transformers import BertConfig, DistilBertConfig, RobertaConfig

    tiny = size == "tiny"
    if arch == "distilbert":
        dims: dict[str, Any] = {"dim": 32, "hidden_dim": 64, "n_layers": 2, "n_heads": 2} if tiny else {}
        return DistilBertConfig(vocab_size=vocab_size, max_position_embeddings=max(max_length, 512), **dims, **extra)
    dims = cast(
        dict[str, Any],
        {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2} if tiny else {},
    )
    if arch == "bert":
        return BertConfig(vocab_size=vocab_size, max_position_embeddings=max(max_length, 512), **dims, **extra)
    # RoBERTa's positions start after the padding index: two more than the longest sequence.
    return RobertaConfig(
        vocab_size=vocab_size,
        max_position_embeddings=max(max_length, 512) + 2,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
        type_vocab_size=1,
        **dims,
        **extra,
    )


def build_model(
    path: str | Path,
    task: TaskName,
    arch: Arch = "distilbert",
    *,
    labels: list[str] | None = None,
    max_length: int = 64,
    vocab_size: int = 2000,
    size: Literal["tiny", "base"] = "tiny",
    seed: int = 0,
    lowercase: bool = True,
    **config_extra: Any,
) -> Path:
    """Build a model of ``arch`` with ``task``'s head and random weights; ``save_pretrained`` it to ``path``."""
    import torch
    import transformers

    from worker.engines import engine_class

    path = Path(path)
    tokenizer = build_tokenizer(arch, max_length=max_length, vocab_size=vocab_size, lowercase=lowercase)
    labels = labels if labels is not None else DEFAULT_LABELS.get(task)
    extra: dict[str, Any] = dict(config_extra)
    if labels is not None:
        extra.update(id2label=dict(enumerate(labels)), label2id={lab: i for i, lab in enumerate(labels)})
    config = build_config(arch, len(tokenizer), max_length=max_length, size=size, **extra)
    torch.manual_seed(seed)
    model = getattr(transformers, engine_class(task).auto_model).from_config(config)
    model.eval()
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


#: How `build_cross_encoder` stores the activation: as sentence-transformers 6 ``CrossEncoder.save`` writes it
#: (``config_sentence_transformers.json`` beside ``modules.json``), in ``config.json``'s ``sentence_transformers``
#: entry (as versions 4 and 5 saved it), or not at all (a plain transformers checkpoint).
CrossEncoderLayout = Literal["sentence_transformers", "config", "transformers"]


def build_cross_encoder(
    path: str | Path,
    arch: Arch = "bert",
    *,
    activation: str | None = "torch.nn.modules.activation.Sigmoid",
    layout: CrossEncoderLayout = "sentence_transformers",
    prompts: dict[str, str] | None = None,
    default_prompt_name: str | None = None,
    initializer_range: float = 0.3,
    **kwargs: Any,
) -> Path:
    """A one-label sequence-classification model (a reranker, as sentence-transformers' ``CrossEncoder`` loads
    it), random weights with a wide ``initializer_range`` so that scores rarely tie. ``activation``: the dotted
    path of the activation stored with it, in the `CrossEncoderLayout` ``layout`` (``None``: none stored, so
    CrossEncoder applies its default, Sigmoid). ``prompts``/``default_prompt_name`` go with the
    ``sentence_transformers`` layout only. Other keyword arguments go to `build_model`."""
    extra: dict[str, Any] = {}
    if layout == "config" and activation is not None:
        extra["sentence_transformers"] = {"activation_fn": activation, "version": "5.0.0"}
    path = build_model(
        path,
        TaskName.RERANK,
        arch,
        labels=["LABEL_0"],
        initializer_range=initializer_range,
        **extra,
        **kwargs,
    )
    if layout == "sentence_transformers":
        files: dict[str, Any] = {
            "modules.json": [
                {
                    "idx": 0,
                    "name": "0",
                    "path": "",
                    "type": "sentence_transformers.base.modules.transformer.Transformer",
                }
            ],
            "sentence_bert_config.json": {
                "transformer_task": "sequence-classification",
                "modality_config": {"text": {"method": "forward", "method_output_name": "logits"}},
                "module_output_name": "scores",
            },
            "config_sentence_transformers.json": {
                "activation_fn": activation,
                "default_prompt_name": default_prompt_name,
                "model_type": "CrossEncoder",
                "prompts": prompts or {},
            },
        }
        for name, content in files.items():
            (path / name).write_text(json.dumps(content, indent=2, sort_keys=True), encoding="utf-8")
    return path


def build_nli_model(
    path: str | Path,
    arch: Arch = "bert",
    labels: tuple[str, ...] | list[str] = ("contradiction", "neutral", "entailment"),
    *,
    initializer_range: float = 0.3,
    **kwargs: Any,
) -> Path:
    """A sequence-classification model with NLI labels (``("ENTAILMENT", "NEUTRAL", "CONTRADICTION")`` …, in
    id order), random weights with a wide ``initializer_range``, for zero-shot classification. Other keyword
    arguments go to `build_model`."""
    return build_model(
        path,
        TaskName.ZERO_SHOT_CLASSIFICATION,
        arch,
        labels=list(labels),
        initializer_range=initializer_range,
        **kwargs,
    )
