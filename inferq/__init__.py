"""inferq: batch inference jobs for Hugging Face Transformers models, on Celery, with results in SQL.

This package is the shared core (settings, schema, task names and payloads, errors, the CLI entry).
It never imports torch or transformers: the producer side stays light. The settings (pydantic-settings) load on
first use of `Settings`, `ModelSpec` or `get_settings`, so that ``inferq --help`` does not pay for them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from inferq.errors import InferqError
from inferq.lazy import lazy_attributes
from inferq.states import ChunkState, ItemState, JobState

if TYPE_CHECKING:
    from inferq.settings import ModelSpec, Settings, get_settings

__all__ = [
    "ChunkState",
    "InferqError",
    "ItemState",
    "JobState",
    "ModelSpec",
    "Settings",
    "get_settings",
]

__version__ = "0.1.0"

#: Public names whose module is imported on first access.
_LAZY = {"ModelSpec": "inferq.settings", "Settings": "inferq.settings", "get_settings": "inferq.settings"}


__getattr__ = lazy_attributes(__name__, _LAZY)
