"""``python -m bench.simulated_worker --items-per-second N [inferq worker options]``: the normal ``inferq worker``
with every model's forward pass on the benchmark's simulated device (`bench.simulated_device`; ``0``: the null
device). Benchmark only: the results such a worker stores are made up. It installs the simulated engine factory
with the worker's engine hook (`worker.model_cache.set_engine_factory`), then hands the other options to the
worker command unchanged, so everything but the forward pass is the production worker."""

from __future__ import annotations

import click

from bench.simulated_device import simulated_engine_factory
from worker.cli import worker_command
from worker.model_cache import set_engine_factory


@click.command(
    "simulated-worker",
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True, "help_option_names": ["--help"]},
)
@click.option(
    "--items-per-second",
    type=click.FloatRange(min=0),
    required=True,
    help="The simulated device's speed (0: the null device, which takes no time).",
)
@click.argument("worker_args", nargs=-1, type=click.UNPROCESSED)
def main(items_per_second: float, worker_args: tuple[str, ...]) -> None:
    """Run ``inferq worker WORKER_ARGS`` on a simulated device of ITEMS_PER_SECOND."""
    set_engine_factory(simulated_engine_factory(items_per_second))
    worker_command.main(args=list(worker_args), prog_name="python -m bench.simulated_worker", standalone_mode=True)


if __name__ == "__main__":
    main()
