"""A simulated accelerator, for the benchmark only: an engine whose forward pass takes the time a device of a given
speed would take and returns outputs of the right shape, made up from the input ids. Everything else a worker
does (claim, input read, tokenize, postprocess, result write, commit, the broker) is the real thing, so that the
benchmark measures what keeps a fast device busy or idle without a GPU.

The worker knows nothing of it: a worker runs it only when started through ``python -m bench.simulated_worker
--items-per-second N`` (``0`` is the null device, which takes no time: the control plane's ceiling), which
installs `simulated_engine_factory` with the worker's engine hook (`worker.model_cache.set_engine_factory`) and
then runs the normal ``inferq worker``; in-process, a `ModelCache` is given the factory. The results it stores
are not the model's (each worker process logs a warning when it builds such an engine).

The cost model: a forward pass of ``b`` sequences padded to ``t`` tokens takes ``SIM_CALL_SECONDS + b × t ×
per_token`` with ``per_token = 1 / (items_per_second × SIM_TOKENS_PER_ITEM)``: a device "of 2,000 items/s" runs
2,000 items of `SIM_TOKENS_PER_ITEM` padded tokens a second, plus a fixed cost per call. As on a GPU, a forward
pass is launched and returns at once, queued behind what the device already has (`SimulatedDevice.launch`); its
outputs are waited for when they are brought back (`SimulatedDevice.wait`, a sleep, so the CPU stays free, as it is
while a GPU computes). The processes of one worker (its pool, one process group) share one device: its queue's
end lives in a file that they update under a lock, as kernels from two processes share one GPU. The
micro-batch plan follows the device: it weighs padding against the device's cost of a call
(``SIM_CALL_SECONDS`` in tokens' worth), as the CPU plan does with the CPU's.
"""

from __future__ import annotations

import fcntl
import logging
import os
import struct
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
from worker.model_cache import EngineFactory
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
        #: Holds when the device's queue ends (``time.monotonic()``, the same clock in every process), as 8 bytes.
        self._queue_fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600) if items_per_second > 0 else None
        # flock excludes other processes only: the threads of one process (``--pool threads``) take this first.
        self._thread_lock = threading.Lock()

    def launch(self, sequences: int, width: int) -> tuple[float, float]:
        """Queue a forward pass of ``sequences`` × ``width`` padded tokens behind what the device already has,
        without waiting: when it will be done (``time.monotonic()``), and the seconds it computes (the model's
        time, not a sleep's: a sleep that overshoots on a busy CPU counts as the system's loss, not as a slower
        device)."""
        if self._queue_fd is None:
            return 0.0, 0.0
        seconds = self.call_seconds + sequences * width * self.per_token
        with self._thread_lock:
            fcntl.flock(self._queue_fd, fcntl.LOCK_EX)
            try:
                stored = os.pread(self._queue_fd, 8, 0)
                queue_end = struct.unpack("<d", stored)[0] if len(stored) == 8 else 0.0
                done = max(time.monotonic(), queue_end) + seconds
                os.pwrite(self._queue_fd, struct.pack("<d", done), 0)
            finally:
                fcntl.flock(self._queue_fd, fcntl.LOCK_UN)
        return done, seconds

    @staticmethod
    def wait(done: float) -> None:
        """Wait until a launched forward pass is done (its outputs copied back)."""
        left = done - time.monotonic()
        if left > 0:
            time.sleep(left)


#: The key of a simulated forward's outputs that holds when the device finishes it (taken out by `to_host`).
_DONE = "_simulated_done"


class SimulatedEngine(Engine[Any]):
    """Mixed in before a task's engine class (`simulated_engine_class`): its forward pass is the simulated
    device's, its plan a GPU's."""

    simulated: ClassVar[bool] = True
    device_model: SimulatedDevice

    @property
    def forwards_one_at_a_time(self) -> bool:
        """An accelerator's forwards need no lock: the simulated device queues them as a GPU does."""
        return False

    def attach(self, device: SimulatedDevice) -> None:
        self.device_model = device
        self._num_labels = int(self.config.num_labels)
        #: The running chunk's clock, per thread (pool threads share the engine).
        self._local = threading.local()

    def forward(self, batch: dict[str, Any], params: Any) -> dict[str, Any]:
        ids = batch["input_ids"]
        sequences, width = (int(x) for x in ids.shape)
        done, computed = self.device_model.launch(sequences, width)
        clock: StageClock | None = getattr(self._local, "clock", None)
        if clock is not None:
            clock.note("device", computed)
        # Made-up logits, different per input: the outputs' shape and dtype are the model's.
        seed = (ids.sum(dim=1).numpy() % 1000).astype(np.float32) / 1000.0
        logits = seed[:, None] * np.arange(1, self._num_labels + 1, dtype=np.float32)[None, :]
        return {"logits": logits, _DONE: done}

    def to_host(self, outputs: dict[str, Any]) -> BatchOutputs:
        """Wait for the device to finish the micro-batch, as a copy back from a GPU does."""
        self.device_model.wait(outputs.pop(_DONE))
        return outputs

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


def simulated_engine_factory(items_per_second: float) -> EngineFactory:
    """The engine factory (`worker.model_cache.EngineFactory`) that puts every model on a simulated device of
    ``items_per_second`` (0: the null device)."""

    def make(cls: type[Engine[Any]], loaded: Any) -> Engine[Any]:
        return make_simulated(cls, loaded, items_per_second)

    return make
