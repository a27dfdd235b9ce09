"""The worker's model cache: model names → loaded models on this worker's device. A model loads on first use, in
the process that runs it, and stays loaded."""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from inferq import metrics
from inferq.errors import ModelLoadError
from inferq.model_sources import resolve_model
from inferq.settings import ModelSpec, Settings
from inferq.task_specs import TaskName
from worker.engines import engine_class
from worker.engines.base import Engine
from worker.loaded import LoadedModel

log = logging.getLogger(__name__)

#: Builds a task's engine for a loaded model: given the task's engine class (`worker.engines.engine_class`) and
#: the model, the engine the worker runs.
EngineFactory = Callable[[type[Engine[Any]], LoadedModel], Engine[Any]]


def default_engine_factory(cls: type[Engine[Any]], loaded: LoadedModel) -> Engine[Any]:
    """The engine class itself on the loaded model: what every production worker runs."""
    return cls(loaded)


#: The factory a `ModelCache` uses when it is given none (`set_engine_factory`).
_engine_factory: EngineFactory = default_engine_factory


def set_engine_factory(factory: EngineFactory | None) -> None:
    """The hook for how this process builds engines: every `ModelCache` made afterwards without a factory of its
    own uses ``factory`` (``None``: the default again). Install it before the worker starts (its pool processes
    inherit it when they fork). The worker itself never calls it; a tool that runs the normal worker with other
    engines does (the benchmark's simulated device, `bench.simulated_worker`)."""
    global _engine_factory
    _engine_factory = factory or default_engine_factory


def resolve_precision(precision: str, device: Any) -> str:
    """``auto``: fp16 on CUDA, bf16 on CPUs with native bf16, fp32 otherwise."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "fp16"
    return "bf16" if cpu_has_native_bf16() else "fp32"


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 in hardware (AVX-512 BF16 or AMX): without it, torch emulates bf16 and a
    bf16 model runs several times slower than at fp32."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def freeze_long_lived() -> None:
    """Move every object this process holds now (its imports, the models loaded so far: hundreds of thousands of
    objects once torch and transformers are in) out of the garbage collector's generations (``gc.freeze``). A full collection no longer walks them all: in a worker holding one
    model, one full collection took 26 µs of CPU an item of a 10,240-item job, 0.0 frozen (the chunks' own objects
    are still collected). A worker's cache calls it after each model loads (``freeze=True``): it keeps its models for
    the process's life, so nothing frozen is dropped while still in a reference cycle.

    Only the young generations are collected first: a full collection of those objects takes ~0.3 s, which a
    worker's first chunk would wait for; what older garbage there is then stays, once."""
    gc.collect(1)
    gc.freeze()


class ModelCache:
    """Loads and keeps models (and their engines) for one worker process. ``freeze``: the process's objects are frozen
    once each model loads (`freeze_long_lived`): a worker process's, whose objects all live as long as it does."""

    def __init__(
        self,
        settings: Settings,
        device: str | None = None,
        precision: str | None = None,
        engine_factory: EngineFactory | None = None,
        backend: str | None = None,
        *,
        freeze: bool = False,
    ) -> None:
        import torch

        self.settings = settings
        #: How this cache builds an engine for a loaded model (`set_engine_factory`'s where not given).
        self.engine_factory = engine_factory or _engine_factory
        self.device = torch.device(device or settings.device)
        self.precision_override = precision or settings.precision
        self.backend_override = backend or settings.backend
        self._loaded: dict[tuple[str, TaskName], LoadedModel] = {}
        self._engines: dict[tuple[str, TaskName], Engine[Any]] = {}
        self._lock = threading.Lock()
        self.freeze = freeze

    def engine(self, name: str, task: TaskName) -> Engine[Any]:
        key = (name, task)
        engine = self._engines.get(key)
        if engine is None:
            with self._lock:
                engine = self._engines.get(key)
                if engine is None:
                    loaded = self.load(name, task)
                    try:
                        engine = self.engine_factory(engine_class(task), loaded)
                    except (OSError, ValueError, KeyError) as exc:
                        raise ModelLoadError(f"model {name!r} cannot run {task.value}: {exc}") from exc
                    self._engines[key] = engine
                    if self.freeze:
                        freeze_long_lived()
        return engine

    def load(self, name: str, task: TaskName) -> LoadedModel:
        key = (name, task)
        if key in self._loaded:
            return self._loaded[key]
        spec = resolve_model(self.settings, name)
        requested = self.precision_override or spec.precision
        precision = resolve_precision(requested, self.device)
        started = time.perf_counter()
        try:
            backend = self._backend(spec, task, precision)
            loaded, backend = self._load_or_torch(name, spec, task, precision, backend)
            if requested == "auto" and precision != "fp32":
                loaded, precision, backend = self._keep_tier(name, spec, task, loaded, precision, backend)
        except (OSError, ValueError, KeyError, ImportError, RuntimeError) as exc:
            raise ModelLoadError(f"could not load model {name!r} from {spec.source!r}: {exc}") from exc
        metrics.model_loaded(task, name, time.perf_counter() - started)
        self._loaded[key] = loaded
        log.info(
            "loaded %s (%s) for %s on %s at %s (backend %s)",
            name,
            spec.source,
            task.value,
            self.device,
            precision,
            backend,
        )
        return loaded

    def _backend(self, spec: ModelSpec, task: TaskName, precision: str) -> str:
        """The backend that runs ``spec`` (`worker.backends.resolve_backend`)."""
        from worker.backends import AUTO_TABLE, auto_backend, model_type_of, resolve_backend

        requested = self.backend_override or spec.backend
        if requested == "auto" and (task, self.device.type, precision) not in AUTO_TABLE:
            requested = "torch"
        if requested == "torch":
            return "torch"  # without reading the checkpoint's config
        model_type = model_type_of(spec.source, spec.revision)
        if requested == "auto":
            requested = auto_backend(task, self.device.type, precision, model_type)
        return resolve_backend(requested, task, self.device.type, precision, model_type)

    def _load_or_torch(
        self, name: str, spec: ModelSpec, task: TaskName, precision: str, backend: str
    ) -> tuple[LoadedModel, str]:
        """``_load`` on ``backend``; where a non-torch backend fails to convert or load the checkpoint (an
        architecture variant its converter rejects), torch instead, with one log line saying why."""
        if backend == "torch":
            return self._load(name, spec, task, precision, backend), backend
        try:
            return self._load(name, spec, task, precision, backend), backend
        except Exception as exc:  # a converter's failures have no common type (AssertionError, NotImplementedError…)
            log.info(
                "backend %s cannot load %s (%s: %s): falling back to torch", backend, name, type(exc).__name__, exc
            )
            return self._load(name, spec, task, precision, "torch"), "torch"

    def _keep_tier(
        self, name: str, spec: ModelSpec, task: TaskName, loaded: LoadedModel, precision: str, backend: str
    ) -> tuple[LoadedModel, str, str]:
        """``auto``'s precision measured against fp32 on this model (`worker.backends.calibration`): kept where it
        keeps its tier, else fp32, with one log line saying why."""
        from inferq.precision import choose
        from worker.backends.calibration import compare, first_output

        reference, reference_backend = self._load_or_torch(name, spec, task, "fp32", self._backend(spec, task, "fp32"))
        want, mask = first_output(reference.model, reference.tokenizer, self.device)
        got, _ = first_output(loaded.model, loaded.tokenizer, self.device)
        quality = compare(got, want, mask, vectors=not engine_class(task).needs_head)
        chosen, reasons = choose([precision, "fp32"], {precision: quality})
        if chosen == precision:
            return loaded, precision, backend
        log.warning("precision auto: %s runs %s at fp32: %s", self.device, name, "; ".join(reasons))
        return reference, "fp32", reference_backend

    def _load(self, name: str, spec: ModelSpec, task: TaskName, precision: str, backend: str = "torch") -> LoadedModel:
        import torch
        import transformers

        common: dict[str, Any] = {"revision": spec.revision, "trust_remote_code": False}
        tokenizer = transformers.AutoTokenizer.from_pretrained(spec.source, **common)
        engine = engine_class(task)
        if backend == "ctranslate2" and not engine.needs_head:
            from worker.backends.ct2 import load_encoder

            config = transformers.AutoConfig.from_pretrained(spec.source, **common)
            encoder = load_encoder(spec.source, spec.revision, config, self.device, precision)
            return self._loaded_model(name, spec, encoder, tokenizer, torch.float32, precision)
        auto = getattr(transformers, engine.auto_model)
        # On CTranslate2 only the head's modules of the torch model run, at fp32.
        dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision, torch.float32)
        if backend == "ctranslate2":
            dtype = torch.float32
        model, info = auto.from_pretrained(
            spec.source, dtype=dtype, use_safetensors=_prefer_safetensors(spec), output_loading_info=True, **common
        )
        if engine.needs_head:
            _check_head(model, info, task)
        if backend == "ctranslate2":
            from worker.backends.ct2 import load_classifier

            classifier = load_classifier(
                spec.source, spec.revision, model, self.device, precision, first_token=engine.reads_first_token
            )
            return self._loaded_model(name, spec, classifier, tokenizer, torch.float32, precision)
        model.eval()
        if precision == "int8":
            if self.device.type != "cpu":
                raise ValueError("int8 (dynamic quantization) runs on the CPU only")
            model = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
        if engine.reads_first_token:
            from worker.backends import first_token

            first_token.apply(model)  # the last layer for the first token only, where the head reads no other
        model.to(self.device)
        return self._loaded_model(name, spec, model, tokenizer, dtype, precision)

    def _loaded_model(
        self, name: str, spec: ModelSpec, model: Any, tokenizer: Any, dtype: Any, precision: str
    ) -> LoadedModel:
        return LoadedModel(
            name=name,
            source=spec.source,
            model=model,
            tokenizer=tokenizer,
            device=self.device,
            dtype=dtype,
            precision=precision,
            max_batch_tokens=spec.max_batch_tokens or self.settings.max_batch_tokens,
            max_batch_size=self.settings.max_batch_size,
            revision=spec.revision,
        )

    def loaded_names(self) -> list[str]:
        return sorted({name for name, _ in self._loaded})


def _check_head(model: Any, info: dict[str, Any], task: TaskName) -> None:
    """Refuse a checkpoint that lacks the task's head (transformers would initialise one at random and warn):
    the weights it would have to make up are those outside the base model."""
    prefix = f"{model.base_model_prefix}."
    made_up = sorted(k for k in info.get("missing_keys", ()) if not k.startswith(prefix))
    if made_up:
        shown = ", ".join(made_up[:4]) + (", …" if len(made_up) > 4 else "")
        raise ValueError(f"the checkpoint has no {task.value} head ({model.__class__.__name__}: {shown} missing)")


def _prefer_safetensors(spec: ModelSpec) -> bool | None:
    """Safetensors where the directory has them (never unpickle when a safe format is there); ``None`` lets
    transformers choose for hub ids and for directories with only legacy weights."""
    path = Path(spec.source)
    if path.is_dir():
        return True if any(path.glob("*.safetensors")) else None
    return None
