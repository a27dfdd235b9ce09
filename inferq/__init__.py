"""inferq: batch inference jobs for Hugging Face Transformers models, on Celery, with results in SQL.

This package is the shared core (settings, schema, task names and payloads, errors, the CLI entry).
It never imports torch or transformers: the producer side stays light.
"""

from inferq.errors import InferqError
from inferq.settings import ModelSpec, Settings, get_settings
from inferq.states import ChunkState, ItemState, JobState

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
