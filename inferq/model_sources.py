"""Resolving a job's ``--model`` (a registry name or a local directory) without loading anything."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from inferq.errors import InvalidParameter, RemoteCodeRefused, UnknownModel
from inferq.settings import ModelSpec, Settings
from inferq.task_specs import MASK_PLACEHOLDER, TASKS, ModelFiles, TaskName, TaskParams

#: Mask tokens of the common families, accepted at submit for models whose tokenizer is not on this machine.
COMMON_MASK_TOKENS = ("[MASK]", "<mask>")


def resolve_model(settings: Settings, name: str, task: TaskName | None = None, *, tenant: bool = False) -> ModelSpec:
    """A registry name, or a local directory that ``name`` may point to (`allowed_directory`).

    Every name that is neither gets one answer, `UnknownModel` with the same message whether a directory of that
    name exists or not, is outside the allowed directories, or cannot be a path at all: whoever submits learns
    nothing of the machine's files. ``tenant``: the name comes from a tenant of the HTTP API, not the operator's own
    client or command line (see `allowed_directory`)."""
    spec = settings.models.get(name)
    if spec is None:
        source = allowed_directory(settings, name, tenant=tenant)
        if source is None:
            known = ", ".join(sorted(settings.models)) or "none"
            raise UnknownModel(
                f"unknown model {_shorten(name)!r}: not a registered model (known: {known}) "
                "nor a model directory allowed here"
            )
        spec = ModelSpec(source=source)
    if task is not None and spec.task is not None and spec.task != task:
        raise InvalidParameter(f"model {name!r} serves {spec.task.value}, not {task.value}", field="model")
    return spec


def allowed_directory(settings: Settings, name: str, *, tenant: bool = False) -> str | None:
    """The resolved directory ``name`` names, where it may be used as a model; None otherwise.

    A directory must exist and lie inside one of ``settings.model_dirs`` (symbolic links resolved first, so that a
    link cannot lead out of them). While ``model_dirs`` is empty (the default) the operator's own `Client` and
    command line may name any directory, and a tenant (``tenant=True``: a request to the HTTP API) none: tenants
    use the registry's models unless the operator lists directories for them. The name is taken as written: no
    ``~`` expansion (which would tell whether a user exists); a relative name is relative to the working
    directory."""
    allowed = [Path(d).expanduser().resolve() for d in settings.model_dirs]
    if tenant and not allowed:
        return None
    if not name or "\x00" in name:
        return None
    try:
        path = Path(name).resolve()
        if allowed and not any(path.is_relative_to(d) for d in allowed):
            return None
        if not path.is_dir():
            return None
    except (OSError, RuntimeError, ValueError):  # a link loop, a name the file system cannot encode
        return None
    return str(path)


def _shorten(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


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


#: The files where a model asks for its own code: transformers reads ``auto_map`` in them as classes to import
#: from the model's directory (run only with ``trust_remote_code``, which workers never set).
_CODE_FILES = ("config.json", "tokenizer_config.json", "preprocessor_config.json", "processor_config.json")


def asks_for_code(files: ModelFiles) -> str | None:
    """The file in which a model asks to run its own Python code (``auto_map``, or ``trust_remote_code`` set), or
    None: read as JSON, nothing imported."""
    for name in _CODE_FILES:
        content = files(name)
        if isinstance(content, dict) and (content.get("auto_map") or content.get("trust_remote_code")):
            return name
    return None


def check_model(spec: ModelSpec, task: TaskName, params: TaskParams) -> None:
    """Refuse, before anything is stored, a model that asks for its own code (`RemoteCodeRefused`: workers would
    refuse to load it) and parameters the model's own files show it cannot honour."""
    files = model_files(spec)
    asking = asks_for_code(files)
    if asking is not None:
        raise RemoteCodeRefused(
            f"model: its {asking} asks to run the model's own code (auto_map), which inferq never runs",
            field="model",
        )
    check = TASKS[task].check_model
    if check is None:
        return
    problem = check(params, files)
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
