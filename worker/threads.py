"""How a worker runs its chunks: the pool it uses by default on its device, and how many threads torch takes in
each of its processes (a thread policy, so that more pool processes never make a worker slower)."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping, MutableMapping

from inferq.settings import Settings, is_accelerator

log = logging.getLogger(__name__)

#: Chunks in flight in one worker process on an accelerator (``--pool threads``): while one chunk's forward pass
#: runs on the device (which releases the GIL), the others claim, read, tokenize, postprocess and write, so the
#: device never waits for one chunk's CPU work. On a simulated device of 2,000 items/s (see `bench.simulated`) one
#: chunk at a time kept it busy 47-73% of the time; two threads 79-90%, three 85-90%, four no better than three.
DEVICE_POOL_THREADS = 3


def default_pool(device: str, pool: str | None, concurrency: int | None) -> tuple[str, int]:
    """``inferq worker``'s pool and concurrency where the options leave them out: on a CPU one prefork process
    (``--concurrency N`` for N processes, each taking its share of the cores); on an accelerator one process whose
    `DEVICE_POOL_THREADS` threads share one loaded model."""
    accelerator = is_accelerator(device)
    if pool is None:
        pool = "threads" if accelerator else "prefork"
    if concurrency is None:
        concurrency = DEVICE_POOL_THREADS if accelerator and pool == "threads" else 1
    return pool, concurrency


def undeclared_queues(settings: Settings, queues: Iterable[str]) -> list[str]:
    """Of the ``queues`` a worker on ``settings.device`` consumes, those that `Settings.queue_devices` does not put on
    the same kind of device (an accelerator worker on a queue declared ``cpu``, or not declared at all, and the other
    way round): their jobs get the other device's default chunk size (`Settings.chunk_size_for`)."""
    accelerator = is_accelerator(settings.device)
    return sorted(q for q in set(queues) if is_accelerator(settings.queue_device(q)) != accelerator)


def torch_threads(settings: Settings, processes: int, environ: Mapping[str, str] = os.environ) -> int | None:
    """torch's intra-op threads for each of a worker's ``processes`` pool processes: ``INFERQ_TORCH_THREADS`` when
    set; None (torch's own choice) where ``OMP_NUM_THREADS`` is set, the user's; else its share of the cores
    (`core_share`). By default torch takes every core in each process: several processes then
    oversubscribe the CPU, and OpenMP threads spin at their barriers while a sibling is descheduled (two processes
    on 2 cores ran 200 items/s at two threads each, 547 at one)."""
    if settings.torch_threads is not None:
        return settings.torch_threads
    if environ.get("OMP_NUM_THREADS"):
        return None
    return core_share(processes)


def core_share(processes: int) -> int:
    """The cores this worker may use ÷ its ``processes``, at least 1: each process's threads (torch's, the
    tokenizer's)."""
    return max(1, len(os.sched_getaffinity(0)) // max(1, processes))


#: The fast tokenizer's switch for its thread pool, and the pool's size (Rust's rayon): either set by the user wins.
TOKENIZER_ENVIRON = ("TOKENIZERS_PARALLELISM", "RAYON_NUM_THREADS")


def tokenizer_threads(processes: int, environ: Mapping[str, str] = os.environ) -> int | None:
    """Threads the fast tokenizer's batch encoding takes in each of a worker's ``processes`` pool processes: None
    (its own choice) where the user set ``TOKENIZERS_PARALLELISM`` or ``RAYON_NUM_THREADS``, else its share of the
    cores (`core_share`), as torch's (`torch_threads`). By default every process's tokenizer spreads each chunk over
    every core: two processes on 2 cores then run four threads that hand the chunk's pieces back and forth, where
    one each keeps both cores busy with no hand-off (the null-device system, 2 cores, two processes: 20,200-20,500
    items/s at one thread each, 19,100-19,200 with the pool on)."""
    if any(environ.get(name) for name in TOKENIZER_ENVIRON):
        return None
    return core_share(processes)


def use_tokenizer_threads(threads: int | None, environ: MutableMapping[str, str] = os.environ) -> None:
    """Size the fast tokenizer's thread pool in this process (nothing for None), before its first batch: one thread
    turns its parallelism off (each chunk encoded in the calling thread), more sets the pool's size. The tokenizer
    reads both from the environment."""
    if threads is None:
        return
    if threads == 1:
        environ["TOKENIZERS_PARALLELISM"] = "false"
    else:
        environ["RAYON_NUM_THREADS"] = str(threads)
    log.info("tokenizer threads: %d", threads)


def use_torch_threads(threads: int | None) -> None:
    """Set torch's intra-op threads in this process (nothing for None), before it runs anything."""
    if threads is None:
        return
    import torch  # here, not at the top: the prefork parent imports this module and stays free of torch

    torch.set_num_threads(threads)
    log.info("torch threads: %d", threads)
