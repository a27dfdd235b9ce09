"""A model and its tokenizer, loaded on one device."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
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
    #: The hub revision the registry pins (None: the default branch, or a local directory).
    revision: str | None = None

    def file(self, name: str) -> Path | None:
        """A file of the checkpoint (``"modules.json"``, ``"1_Pooling/config.json"``): from its directory, or for
        a hub id from the hub cache at the pinned revision (fetched if need be); None where there is none."""
        source = Path(self.source)
        if source.is_dir():
            found = source / name
            return found if found.is_file() else None
        from transformers.utils import cached_file

        try:
            path = cached_file(
                self.source,
                name,
                revision=self.revision,
                _raise_exceptions_for_missing_entries=False,
                _raise_exceptions_for_connection_errors=False,
            )
        except OSError:
            return None
        return Path(path) if path else None

    def read_json(self, name: str) -> Any:
        """A JSON file of the checkpoint, decoded; None where there is none. Bad JSON raises ValueError (the
        model cache turns it into `ModelLoadError`)."""
        found = self.file(name)
        if found is None:
            return None
        try:
            return json.loads(found.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise ValueError(f"{name} of {self.source!r} is not valid JSON: {exc}") from exc

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
    # No maximum in the tokenizer: the model's position table decides.
    return position_limit(config, default=512) or 512


def position_limit(config: Any, default: int | None = None) -> int | None:
    """The longest sequence the model's position table takes (the RoBERTa family reserves ``padding_idx + 1``
    positions); None where the config names no table (and no ``default`` stands in for it)."""
    positions = getattr(config, "max_position_embeddings", default)
    if not isinstance(positions, int) or positions <= 0:
        return None
    if getattr(config, "model_type", "") in ("roberta", "xlm-roberta", "camembert", "longformer"):
        positions -= int(getattr(config, "pad_token_id", 1) or 1) + 1
    return positions
