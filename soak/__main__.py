"""``python -m soak``: a chaos soak on real services (see `soak`); exit status 0 only for a clean verdict."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from soak.faults import KINDS
from soak.run import Options, render, run, write_json


def parse_args(argv: list[str] | None) -> Options:
    p = argparse.ArgumentParser(prog="python -m soak", description=(__doc__ or "").splitlines()[0])
    p.add_argument("--duration", type=float, default=1800, help="seconds of jobs and faults (default 1800)")
    p.add_argument("--seed", type=int, default=1, help="draws the jobs and the fault schedule (default 1)")
    p.add_argument("--workers", type=int, default=3, help="workers at the start (default 3)")
    p.add_argument(
        "--faults",
        default=",".join(KINDS),
        help=f"comma-separated fault kinds, or 'none' (default all: {','.join(KINDS)})",
    )
    p.add_argument("--broker", choices=["redis", "amqp"], default="redis")
    p.add_argument("--json", type=Path, default=None, help="write the summary here as JSON")
    p.add_argument("--fault-every", type=float, default=30, help="mean seconds between faults (default 30)")
    p.add_argument("--backlog", type=int, default=1500, help="unfinished items kept waiting (default 1500)")
    p.add_argument("--quiet", type=float, default=None, help="longest wait for every job to end after the run")
    p.add_argument("--lease-seconds", type=int, default=None, help="workers' INFERQ_LEASE_SECONDS (default: theirs)")
    p.add_argument("--recover-interval", type=int, default=None, help="workers' INFERQ_RECOVER_INTERVAL")
    p.add_argument("--recover-older-than", type=int, default=None, help="workers' INFERQ_RECOVER_OLDER_THAN")
    p.add_argument("--logs", type=Path, default=None, help="copy the workers' logs to this folder at the end")
    p.add_argument("--pg-admin-url", default="postgresql://postgres@127.0.0.1:5432/test")
    p.add_argument("--amqp-url", default="amqp://guest:guest@127.0.0.1:5672//")
    a = p.parse_args(argv)
    kinds = [] if a.faults == "none" else [k.strip() for k in a.faults.split(",") if k.strip()]
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown:
        p.error(f"unknown fault kinds: {', '.join(unknown)}")
    return Options(
        duration=a.duration,
        seed=a.seed,
        workers=a.workers,
        faults=kinds,
        broker=a.broker,
        json_path=a.json,
        pg_admin_url=a.pg_admin_url,
        amqp_url=a.amqp_url,
        fault_every=a.fault_every,
        backlog=a.backlog,
        quiet=a.quiet,
        lease_seconds=a.lease_seconds,
        recover_interval=a.recover_interval,
        recover_older_than=a.recover_older_than,
        logs_dir=a.logs,
    )


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    opts = parse_args(argv)
    summary = run(opts)
    print(render(summary))
    if opts.json_path is not None:
        write_json(summary, opts.json_path)
        print(f"summary written to {opts.json_path}")
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
