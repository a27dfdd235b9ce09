"""The CPU an item costs after the forward pass (``python -m bench.columnar``): each engine's ``postprocess`` and
the write's binary COPY payload (`inferq.store.chunks._CopyBuffer`), in this process, per item, for the
columnar path (a chunk's results serialised in one pass, `worker.engines.columnar`) and the per-item one (each
result as dicts, serialised by the write one at a time: the engines' ``columnar = False``).

``--against REV`` adds the engines and the write of an older commit (read with ``git show``), run on the very same
features and model outputs: the before of a change, in the same process. Variants are interleaved, each timed
``--repeats`` times on one chunk; the report gives the median µs of CPU (``time.process_time``) an item. Tiny
random-weight models (`inferq_demo.stand_ins`): the forward pass is not timed, only what follows it, which does not
depend on the model's size. Question answering, fill-mask and token classification serialise in one pass too,
but make their results per item first (character spans, decoded sequences, entity grouping), so the one pass
saves less of their cost."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import subprocess
import sys
import tempfile
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

from inferq.settings import ModelSpec, Settings
from inferq.store import chunks
from inferq.task_specs import MASK_PLACEHOLDER, TaskName, validate_params
from inferq_demo.stand_ins import build_cross_encoder, build_model, build_nli_model, corpus
from worker.engines.base import Engine
from worker.model_cache import ModelCache

#: Items (lines) of the measured chunk.
CHUNK = 1024
LABELS = ["sports", "politics", "programming", "cooking", "music"]


def cases(root: Path) -> dict[str, tuple[TaskName, Path, list[dict[str, Any]], dict[str, Any]]]:
    """Case → (task, model directory, one chunk's inputs, parameters)."""
    texts = [corpus()[i % len(corpus())] for i in range(CHUNK)]
    qa = build_model(root / "qa", TaskName.QUESTION_ANSWERING, "bert", max_length=128)
    return {
        "classification top_k=1": (
            TaskName.CLASSIFICATION,
            build_model(root / "cls", TaskName.CLASSIFICATION, "distilbert"),
            [{"text": t} for t in texts],
            {"top_k": 1},
        ),
        "classification top_k=all": (
            TaskName.CLASSIFICATION,
            root / "cls",
            [{"text": t} for t in texts],
            {"top_k": None},
        ),
        "embedding": (
            TaskName.EMBEDDING,
            build_model(root / "emb", TaskName.EMBEDDING, "bert"),
            [{"text": t} for t in texts],
            {},
        ),
        "embedding windows": (
            TaskName.EMBEDDING,
            root / "emb",
            [{"text": " ".join(corpus()[i % 500 : i % 500 + 3])} for i in range(CHUNK // 4)],
            {"overflow": "windows", "window_tokens": 16, "stride": 4},
        ),
        "rerank 10 documents": (
            TaskName.RERANK,
            build_cross_encoder(root / "ce", "bert"),
            [{"query": texts[i], "documents": texts[i + 1 : i + 11]} for i in range(CHUNK // 10)],
            {},
        ),
        "rerank 10 documents, top 3 with documents": (
            TaskName.RERANK,
            root / "ce",
            [{"query": texts[i], "documents": texts[i + 1 : i + 11]} for i in range(CHUNK // 10)],
            {"top_k": 3, "return_documents": True},
        ),
        "zero-shot 5 labels": (
            TaskName.ZERO_SHOT_CLASSIFICATION,
            build_nli_model(root / "nli", "bert"),
            [{"text": t} for t in texts[: CHUNK // 5]],
            {"candidate_labels": LABELS},
        ),
        "question answering": (
            TaskName.QUESTION_ANSWERING,
            qa,
            [{"question": "what is it?", "context": " ".join(texts[i : i + 3])} for i in range(CHUNK)],
            {},
        ),
        "fill-mask": (
            TaskName.FILL_MASK,
            build_model(root / "fm", TaskName.FILL_MASK, "bert"),
            [{"text": t.replace(" ", f" {MASK_PLACEHOLDER} ", 1)} for t in texts],
            {},
        ),
        "token classification": (
            TaskName.TOKEN_CLASSIFICATION,
            build_model(root / "ner", TaskName.TOKEN_CLASSIFICATION, "bert", labels=["O", "B-PER", "I-PER"]),
            [{"text": t} for t in texts],
            {"aggregation_strategy": "simple"},
        ),
        "token classification none": (
            TaskName.TOKEN_CLASSIFICATION,
            root / "ner",
            [{"text": t} for t in texts],
            {"aggregation_strategy": "none"},
        ),
    }


def old_module(rev: str, path: str, name: str) -> types.ModuleType:
    """The module at ``path`` as commit ``rev`` has it, loaded under ``name``."""
    source = subprocess.run(["git", "show", f"{rev}:{path}"], capture_output=True, text=True, check=True).stdout
    module = types.ModuleType(name)
    module.__file__ = f"{rev}:{path}"
    sys.modules[name] = module
    exec(compile(source, module.__file__, "exec"), module.__dict__)
    return module


#: One end time for every payload, so that the variants' payloads compare byte for byte.
NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def payload(buffer_class: Any, outcomes: list[Any]) -> bytes:
    """The write's COPY payload of ``outcomes`` (one chunk)."""
    buffer = buffer_class(NOW)
    buffer.add("0" * 32, 1, list(enumerate(outcomes)))
    return b"".join(buffer._parts)


def measure(against: str | None, repeats: int, only: str | None = None) -> dict[str, Any]:
    report: dict[str, Any] = {}
    old_chunks = old_module(against, "inferq/store/chunks.py", "_before_chunks") if against else None
    with tempfile.TemporaryDirectory() as tmp:
        for case, (task, model, inputs, stored) in cases(Path(tmp)).items():
            if only is not None and only not in case:
                continue
            cache = ModelCache(Settings(models={"m": ModelSpec(source=str(model))}), device="cpu")
            engine: Engine[Any] = cache.engine("m", task)
            old_engine = None
            if against and old_chunks is not None:
                module = type(engine).__module__
                old = old_module(against, module.replace(".", "/") + ".py", f"_before_{module.rsplit('.', 1)[1]}")
                old_engine = getattr(old, type(engine).__name__)(engine.loaded)
            report[case] = measure_case(engine, inputs, validate_params(task, stored), old_engine, old_chunks, repeats)
            print(case, json.dumps(report[case]), flush=True)
    return report


def measure_case(
    engine: Engine[Any],
    inputs: list[dict[str, Any]],
    params: Any,
    old_engine: Any,
    old_chunks: types.ModuleType | None,
    repeats: int,
) -> dict[str, Any]:
    """One case's variants on the features and model outputs of one run of ``engine``."""
    captured: list[tuple[Any, ...]] = []
    postprocess = engine.postprocess

    def capture(*args: Any) -> Any:
        captured.append(args)
        return postprocess(*args)

    setattr(engine, "postprocess", capture)  # noqa: B010  # an instance attribute, removed below
    engine.run(inputs, params)
    delattr(engine, "postprocess")
    args = captured[-1]
    kind: Any = type(engine)

    def now() -> bytes:
        return payload(chunks._CopyBuffer, engine.postprocess(*args))

    def per_item() -> bytes:
        kind.columnar = False
        try:
            return now()
        finally:
            kind.columnar = True

    variants: dict[str, Callable[[], bytes]] = (
        {"per-item": per_item, "columnar": now} if hasattr(kind, "columnar") else {"now": now}
    )
    if old_engine is not None and old_chunks is not None:
        buffer = old_chunks._CopyBuffer
        variants["before"] = lambda: payload(buffer, old_engine.postprocess(*args))
    made = {name: run() for name, run in variants.items()}
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, run in variants.items():
            start = time.process_time()
            run()
            times[name].append(time.process_time() - start)
    return {
        "items": len(inputs),
        "same_payload": len(set(made.values())) == 1,
        "us_per_item": {n: round(statistics.median(t) / len(inputs) * 1e6, 2) for n, t in times.items()},
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--against", help="an older commit whose engines and write to measure alongside")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--out", type=Path, help="write the report as JSON here")
    parser.add_argument("--only", help="measure only the cases whose name contains this")
    args = parser.parse_args(argv)
    report = measure(args.against, args.repeats, args.only)
    if args.out is not None:
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
