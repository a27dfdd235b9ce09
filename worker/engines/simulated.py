"""A simulated accelerator, for the benchmark only: an engine whose forward pass takes the time a device of a given
speed would take and returns outputs of the right shape, made up from the input ids. Everything else a worker
does (claim, input read, tokenize, postprocess, result write, commit, the broker) is the real thing, so that the
benchmark measures what keeps a fast device busy or idle without a GPU.

Selected only by ``INFERQ_BENCH_SIMULATED_DEVICE`` (items/s; ``0`` is the null device, which takes no time: the
control plane's ceiling). Never set it in production: the results it stores are not the model's (each worker
process logs a warning when it builds such an engine).

The cost model: a forward pass of ``b`` sequences padded to ``t`` tokens takes ``SIM_CALL_SECONDS + b × t ×
per_token`` with ``per_token = 1 / (items_per_second × SIM_TOKENS_PER_ITEM)``: a device "of 2,000 items/s" runs
2,000 items of `SIM_TOKENS_PER_ITEM` padded tokens a second, plus a fixed cost per call. It sleeps, so the CPU
stays free, as it is while a GPU computes; the processes of one worker (its pool, one process group) share one
device: a file lock lets one forward compute at a time, as kernels from two processes share one GPU. The
micro-batch plan follows the device: it weighs padding against the device's cost of a call
(``SIM_CALL_SECONDS`` in tokens' worth), as the CPU plan does with the CPU's.
"""

from __future__ import annotations

import fcntl
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from inferq.errors import ModelLoadError
from inferq.task_specs import TaskName
from worker.engines.base import Engine, Outcome
from worker.engines.batching import BatchOutputs, Features, plan_batches
from worker.stages import StageClock

log = logging.getLogger(__name__)

#: Fixed device time of one forward call: kernel launches and the synchronising copy back of a 6-layer encoder on a
#: GPU take about a millisecond whatever the batch.
SIM_CALL_SECONDS = 0.001

#: Padded tokens of an item at which the device runs its nominal items/s: the benchmark's short sentences average
#: 39 real tokens, 40 padded in a budget-filling plan.
SIM_TOKENS_PER_ITEM = 40

#: Tasks whose forward is the default one (sequence-level ``logits``): the only outputs the simulation makes up.
SIMULATED_TASKS = (TaskName.CLASSIFICATION, TaskName.ZERO_SHOT_CLASSIFICATION, TaskName.RERANK)


class SimulatedDevice:
    """The device's time per call, and the lock the processes of one worker share it by."""

    def __init__(self, items_per_second: float, lock_path: Path | None = None) -> None:
        self.items_per_second = items_per_second
        self.per_token = 1.0 / (items_per_second * SIM_TOKENS_PER_ITEM) if items_per_second > 0 else 0.0
        self.call_seconds = SIM_CALL_SECONDS if items_per_second > 0 else 0.0
        #: The fixed cost of a call in tokens' worth of device time: what the micro-batch plan weighs padding
        #: against (None for the null device, where nothing costs anything: fill the budget).
        self.batch_cost_tokens = round(self.call_seconds / self.per_token) if self.per_token > 0 else None
        path = lock_path or Path(tempfile.gettempdir()) / f"inferq-simulated-device-{os.getpgid(0)}.lock"
        self._lock_fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600) if items_per_second > 0 else None
        # flock excludes other processes only: the threads of one process (``--pool threads``) take this first.
        self._thread_lock = threading.Lock()

    def compute(self, sequences: int, width: int) -> float:
        """Take the device (waiting while another process computes on it), then the time a forward of
        ``sequences`` × ``width`` padded tokens takes; the seconds it computed: the model's, not the sleep's (a
        sleep that overshoots on a busy CPU counts as the system's loss, not as a slower device)."""
        if self._lock_fd is None:
            return 0.0
        seconds = self.call_seconds + sequences * width * self.per_token
        with self._thread_lock:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
            try:
                time.sleep(seconds)
            finally:
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
        return seconds


class SimulatedEngine(Engine[Any]):
    """Mixed in before a task's engine class (`simulated_engine_class`): its forward pass is the simulated
    device's, its plan a GPU's."""

    simulated: ClassVar[bool] = True
    device_model: SimulatedDevice

    def attach(self, device: SimulatedDevice) -> None:
        self.device_model = device
        self._num_labels = int(self.config.num_labels)
        #: The running chunk's clock, per thread (pool threads share the engine).
        self._local = threading.local()

    def forward(self, batch: dict[str, Any], params: Any) -> BatchOutputs:
        ids = batch["input_ids"]
        sequences, width = (int(x) for x in ids.shape)
        computed = self.device_model.compute(sequences, width)
        clock: StageClock | None = getattr(self._local, "clock", None)
        if clock is not None:
            clock.note("device", computed)
        # Made-up logits, different per input: the outputs' shape and dtype are the model's.
        seed = (ids.sum(dim=1).numpy() % 1000).astype(np.float32) / 1000.0
        return {"logits": seed[:, None] * np.arange(1, self._num_labels + 1, dtype=np.float32)[None, :]}

    def plan(self, features: Features) -> list[np.ndarray]:
        """The plan follows the device: padding weighed against the device's own cost of a call."""
        cost = self.device_model.batch_cost_tokens
        return plan_batches(features.lengths, self.loaded.max_batch_tokens, self.loaded.max_batch_size, cost)

    def run(
        self,
        inputs: Sequence[dict[str, Any]],
        params: Any,
        *,
        should_stop: Callable[[], bool] = lambda: False,
        clock: StageClock | None = None,
    ) -> list[Outcome | None]:
        self._local.clock = clock
        try:
            return super().run(inputs, params, should_stop=should_stop, clock=clock)
        finally:
            self._local.clock = None


def simulated_engine_class(cls: type[Engine[Any]]) -> type[Engine[Any]]:
    """``cls`` with its forward pass on the simulated device (`ModelLoadError` for a task it cannot simulate)."""
    if cls.task not in SIMULATED_TASKS:
        raise ModelLoadError(
            f"the simulated device runs {', '.join(t.value for t in SIMULATED_TASKS)} only, not {cls.task.value}"
        )
    return type(f"Simulated{cls.__name__}", (SimulatedEngine, cls), {})


def make_simulated(cls: type[Engine[Any]], loaded: Any, items_per_second: float) -> Engine[Any]:
    """An engine of ``cls`` on a simulated device of ``items_per_second`` (0: the null device)."""
    engine = simulated_engine_class(cls)(loaded)
    assert isinstance(engine, SimulatedEngine)
    engine.attach(SimulatedDevice(items_per_second))
    log.warning(
        "%s runs on a SIMULATED device (%s): benchmark only, its results are made up",
        loaded.name,
        f"{items_per_second:g} items/s" if items_per_second > 0 else "null device, no time",
    )
    return engine
