"""Tiny models for the tests: the demo's stand-in builders (`inferq_demo.stand_ins`), and the model directories
only the tests need (a sentence-transformers embedding model with its pooling, dense and normalize modules)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from inferq.task_specs import TaskName
from inferq_demo.stand_ins import (
    DEFAULT_LABELS,
    Arch,
    CrossEncoderLayout,
    build_config,
    build_cross_encoder,
    build_model,
    build_nli_model,
    build_tokenizer,
    corpus,
)

__all__ = [
    "DEFAULT_LABELS",
    "Arch",
    "CrossEncoderLayout",
    "PoolingMode",
    "build_config",
    "build_cross_encoder",
    "build_model",
    "build_nli_model",
    "build_sentence_transformer",
    "build_tokenizer",
    "corpus",
]


#: How a sentence-transformers model pools its token vectors (``1_Pooling/config.json``'s ``pooling_mode``).
PoolingMode = Literal["mean", "cls", "max", "lasttoken", "mean_sqrt_len_tokens", "weightedmean"]


def build_sentence_transformer(
    path: str | Path,
    arch: Arch = "bert",
    *,
    pooling: PoolingMode | tuple[PoolingMode, ...] = "mean",
    include_prompt: bool = True,
    normalize: bool = False,
    dense: int | None = None,
    max_seq_length: int | None = None,
    do_lower_case: bool | None = None,
    prompts: dict[str, str] | None = None,
    default_prompt_name: str | None = None,
    truncate_dim: int | None = None,
    initializer_range: float = 0.3,
    seed: int = 0,
    **kwargs: Any,
) -> Path:
    """A sentence-transformers model directory, in the files ``SentenceTransformer.save`` (6.x) writes: a bare
    encoder (`build_model` for the embedding task, random weights with a wide ``initializer_range``) as the
    ``Transformer`` module, ``1_Pooling`` with ``pooling`` (several modes: concatenated) and ``include_prompt``,
    then a ``Dense`` layer of ``dense`` outputs (Tanh, random weights) and a ``Normalize`` module when asked.

    ``max_seq_length`` and ``do_lower_case`` go to ``sentence_bert_config.json`` (where sentence-transformers
    reads them; 6.x itself saves the length as the tokenizer's ``model_max_length``, `build_model`'s
    ``max_length``); ``prompts``, ``default_prompt_name`` and ``truncate_dim`` to
    ``config_sentence_transformers.json``. Other keyword arguments go to `build_model`."""
    import torch

    path = build_model(path, TaskName.EMBEDDING, arch, initializer_range=initializer_range, seed=seed, **kwargs)
    config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    hidden = int(config.get("hidden_size") or config["dim"])  # DistilBERT calls it dim
    modes = (pooling,) if isinstance(pooling, str) else tuple(pooling)
    modules: list[dict[str, Any]] = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.base.modules.transformer.Transformer"}
    ]
    files: dict[str, Any] = {
        "1_Pooling/config.json": {
            "embedding_dimension": hidden,
            "pooling_mode": modes[0] if len(modes) == 1 else list(modes),
            "include_prompt": include_prompt,
        }
    }
    modules.append(
        {
            "idx": 1,
            "name": "1",
            "path": "1_Pooling",
            "type": "sentence_transformers.sentence_transformer.modules.pooling.Pooling",
        }
    )
    if dense is not None:
        idx = len(modules)
        folder = f"{idx}_Dense"
        modules.append(
            {"idx": idx, "name": str(idx), "path": folder, "type": "sentence_transformers.base.modules.dense.Dense"}
        )
        width = hidden * len(modes)
        files[f"{folder}/config.json"] = {
            "in_features": width,
            "out_features": dense,
            "bias": True,
            "activation_function": "torch.nn.modules.activation.Tanh",
            "module_input_name": "sentence_embedding",
            "module_output_name": "sentence_embedding",
        }
        from safetensors.torch import save_file

        generator = torch.Generator().manual_seed(seed + 1)
        (path / folder).mkdir(parents=True, exist_ok=True)
        save_file(
            {
                "linear.weight": torch.randn(dense, width, generator=generator) / width**0.5,
                "linear.bias": torch.randn(dense, generator=generator) * 0.1,
            },
            str(path / folder / "model.safetensors"),
        )
    if normalize:
        idx = len(modules)
        folder = f"{idx}_Normalize"
        modules.append(
            {
                "idx": idx,
                "name": str(idx),
                "path": folder,
                "type": "sentence_transformers.base.modules.normalize.Normalize",
            }
        )
        files[f"{folder}/config.json"] = {
            "module_input_name": "sentence_embedding",
            "module_output_name": "sentence_embedding",
        }
    transformer: dict[str, Any] = {
        "transformer_task": "feature-extraction",
        "modality_config": {"text": {"method": "forward", "method_output_name": "last_hidden_state"}},
        "module_output_name": "token_embeddings",
    }
    if max_seq_length is not None:
        transformer["max_seq_length"] = max_seq_length
    if do_lower_case is not None:
        transformer["do_lower_case"] = do_lower_case
    files["modules.json"] = modules
    files["sentence_bert_config.json"] = transformer
    st_config: dict[str, Any] = {
        "__version__": {"sentence_transformers": "6.2.0"},
        "default_prompt_name": default_prompt_name,
        "model_type": "SentenceTransformer",
        "prompts": {"document": "", "query": "", **(prompts or {})},
        "similarity_fn_name": "cosine",
    }
    if truncate_dim is not None:
        st_config["truncate_dim"] = truncate_dim
    files["config_sentence_transformers.json"] = st_config
    for name, content in files.items():
        file = path / name
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_text(json.dumps(content, indent=2), encoding="utf-8")
    return path
