"""What the embedding endpoint answers, in batches and directly: OpenAI's embedding objects from inferq's stored
vectors, and the request's token count (``usage``)."""

from __future__ import annotations

import base64
import functools
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from inferq.settings import ModelSpec
from producer.vectors import FLOAT32, decode

EncodingFormat = Literal["float", "base64"]


def embedding_value(stored: Any, blob: bytes | None, encoding: EncodingFormat) -> list[float] | str:
    """An item's vector as OpenAI gives it: a list of floats (each the float32 value exactly), or the base64 of its
    little-endian float32 bytes (what the official client decodes with ``numpy.frombuffer(..., "float32")``)."""
    if blob is None or not isinstance(stored, dict):
        raise ValueError("the item has no vector")
    vector = decode(stored, blob)[0]
    if encoding == "base64":
        return base64.b64encode(np.ascontiguousarray(vector, dtype=FLOAT32.newbyteorder("<")).tobytes()).decode()
    return list(vector.tolist())


def embedding_list(model: str, vectors: Sequence[list[float] | str], tokens: int) -> dict[str, Any]:
    """OpenAI's ``CreateEmbeddingResponse``."""
    return {
        "object": "list",
        "data": [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)],
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


@functools.lru_cache(maxsize=16)
def _tokenizer(source: str) -> Any:
    path = Path(source) / "tokenizer.json"
    if not path.is_file():
        return None
    from tokenizers import Tokenizer  # the Rust tokenizers alone: no torch, no transformers

    try:
        return Tokenizer.from_file(str(path))
    except Exception:  # a tokenizer file this version cannot read: no count, not a failed request
        return None


def token_counts(spec: ModelSpec, texts: Sequence[str]) -> list[int]:
    """Tokens of each text as the model's tokenizer (``tokenizer.json``) cuts it, special tokens included and
    before any truncation; 0 each for a model without that file (a hub name, an older tokenizer). One call for many
    texts: the tokenizer's own threads share them, and a call's overhead is paid once."""
    tokenizer = _tokenizer(spec.source)
    if tokenizer is None or not texts:
        return [0] * len(texts)
    encode = getattr(tokenizer, "encode_batch_fast", tokenizer.encode_batch)  # without offsets, where there is one
    return [len(e.ids) for e in encode(list(texts))]


def count_tokens(spec: ModelSpec, texts: Sequence[str]) -> int:
    """The tokens of ``texts`` in all (`token_counts`)."""
    return sum(token_counts(spec, texts))


def count_pair_tokens(spec: ModelSpec, query: str, documents: Sequence[str]) -> int:
    """Tokens of the (query, document) pairs a cross-encoder reads, as `count_tokens` counts them."""
    tokenizer = _tokenizer(spec.source)
    if tokenizer is None or not documents:
        return 0
    return sum(len(e.ids) for e in tokenizer.encode_batch([(query, d) for d in documents]))
