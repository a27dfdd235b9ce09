"""Resolving a job's ``--model`` (a registry name or a local directory) without loading anything."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from inferq.errors import InvalidParameter, UnknownModel
from inferq.settings import ModelSpec, Settings
from inferq.task_specs import MASK_PLACEHOLDER, TASKS, ModelFiles, TaskName, TaskParams

#: Mask tokens of the common families, accepted at submit for models whose tokenizer is not on this machine.
COMMON_MASK_TOKENS = ("[MASK]", "<mask>")


def resolve_model(settings: Settings, name: str, task: TaskName | None = None) -> ModelSpec:
    """A registry name, or a local directory (inside ``settings.model_dirs`` when those are set)."""
    spec = settings.models.get(name)
    if spec is None:
        path = Path(name).expanduser()
        if not path.is_dir():
            known = ", ".join(sorted(settings.models)) or "none"
            raise UnknownModel(
                f"unknown model {name!r}: not in the registry (known: {known}) and not a local directory"
            )
        resolved = path.resolve()
        allowed = [Path(d).expanduser().resolve() for d in settings.model_dirs]
        if allowed and not any(resolved.is_relative_to(d) for d in allowed):
            raise UnknownModel(f"model directory {name!r} is outside the allowed model directories")
        spec = ModelSpec(source=str(resolved))
    if task is not None and spec.task is not None and spec.task != task:
        raise InvalidParameter(f"model {name!r} serves {spec.task.value}, not {task.value}", field="model")
    return spec


def model_files(spec: ModelSpec) -> ModelFiles:
    """A reader of the model's JSON files (`TaskSpec.check_model`): local directories only; nothing is loaded."""
    directory = Path(spec.source)

    def read(name: str) -> Any:
        file = directory / name
        if not file.is_file():
            return None
        try:
            return json.loads(file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None

    return read


def check_model(spec: ModelSpec, task: TaskName, params: TaskParams) -> None:
    """Refuse, before anything is stored, parameters the model's own files show it cannot honour."""
    check = TASKS[task].check_model
    if check is None:
        return
    problem = check(params, model_files(spec))
    if problem is not None:
        field, message = problem
        where = "model" if field in (None, "model") else f"parameter {field}"
        raise InvalidParameter(f"{where}: {message}", field=field or "model")


def mask_tokens(spec: ModelSpec) -> tuple[str, ...]:
    """The strings that count as a mask in a fill-mask input: the placeholder, plus the model's mask token when
    its tokenizer files are on this machine (read as JSON; nothing is loaded), else the common ones."""
    directory = Path(spec.source)
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        file = directory / name
        if file.is_file():
            try:
                token = json.loads(file.read_text(encoding="utf-8")).get("mask_token")
            except (OSError, ValueError):
                continue
            if isinstance(token, dict):
                token = token.get("content")
            if isinstance(token, str) and token:
                return (MASK_PLACEHOLDER, token)
    return (MASK_PLACEHOLDER, *COMMON_MASK_TOKENS)
