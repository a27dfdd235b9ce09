"""A model and its tokenizer, loaded on one device."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class LoadedModel:
    #: Registry name or local directory, as the job names it.
    name: str
    #: Where it was loaded from (hub id or directory).
    source: str
    model: Any
    tokenizer: Any
    device: Any
    #: torch dtype the weights run at.
    dtype: Any
    precision: str
    #: Padded tokens per micro-batch for this model.
    max_batch_tokens: int
    max_batch_size: int

    @property
    def config(self) -> Any:
        return self.model.config

    @property
    def max_length(self) -> int:
        """Longest sequence the model takes: what ``truncation=True`` in a pipeline truncates to."""
        return effective_max_length(self.tokenizer, self.model.config)


#: Tokenizers without a configured maximum report this sentinel (transformers' VERY_LARGE_INTEGER).
_UNSET_MAX_LENGTH = 10**12


def effective_max_length(tokenizer: Any, config: Any) -> int:
    limit = int(getattr(tokenizer, "model_max_length", _UNSET_MAX_LENGTH) or _UNSET_MAX_LENGTH)
    if limit < _UNSET_MAX_LENGTH:
        return limit
    # No maximum in the tokenizer: the model's position table decides (RoBERTa reserves padding_idx + 1).
    positions = int(getattr(config, "max_position_embeddings", 512))
    if getattr(config, "model_type", "") in ("roberta", "xlm-roberta", "camembert", "longformer"):
        positions -= int(getattr(config, "pad_token_id", 1) or 1) + 1
    return positions
