"""How many threads torch takes in each process of a worker: a thread policy, so that more pool processes never
make a worker slower."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

from inferq.settings import Settings

log = logging.getLogger(__name__)


def torch_threads(settings: Settings, processes: int, environ: Mapping[str, str] = os.environ) -> int | None:
    """torch's intra-op threads for each of a worker's ``processes`` pool processes: ``INFERQ_TORCH_THREADS`` when
    set; None (torch's own choice) where ``OMP_NUM_THREADS`` is set, the user's; else the cores this worker may use
    ÷ its processes, at least 1. By default torch takes every core in each process: several processes then
    oversubscribe the CPU, and OpenMP threads spin at their barriers while a sibling is descheduled (two processes
    on 2 cores ran 200 items/s at two threads each, 547 at one)."""
    if settings.torch_threads is not None:
        return settings.torch_threads
    if environ.get("OMP_NUM_THREADS"):
        return None
    return max(1, len(os.sched_getaffinity(0)) // max(1, processes))


def use_torch_threads(threads: int | None) -> None:
    """Set torch's intra-op threads in this process (nothing for None), before it runs anything."""
    if threads is None:
        return
    import torch

    torch.set_num_threads(threads)
    log.info("torch threads: %d", threads)
