"""Status polling under load (``python -m bench.polling``): a compiled load generator (``wrk``, Debian's package)
reads one job's status through a real ``inferq serve`` with one and with several server processes, the key check
and the SQL read included in every request.

A poller is a client that asks for its job's status again as soon as it has the answer: ``wrk`` keeps
``--connections`` of them busy for ``--seconds`` and reports requests/s and latency percentiles. The target of the
hardening issue: at least `TARGET_RPS` status requests/s with a p99 under `TARGET_P99_MS` at `TARGET_CONNECTIONS`
concurrent pollers, on the machine's own cores. The load generator, the server, PostgreSQL and Redis share those
cores, so the numbers are the whole machine's; the report names the CPU. Many more pollers than that
(``--connections 200``, the probe that found the issue) queue behind one another: by Little's law their latency
is connections ÷ throughput, whatever the server does, so they are reported without a target."""

from __future__ import annotations

import argparse
import json
import logging
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

#: The issue's target: status requests a second, with the key check and the SQL read, on this machine.
TARGET_RPS = 1_000.0
#: The issue's target: the 99th percentile of a status request's latency.
TARGET_P99_MS = 50.0
#: Concurrent pollers the target is measured at: enough to keep every server process busy while the load generator
#: runs beside them; at 1,000 requests/s each poller then waits 20 ms on average (Little's law).
TARGET_CONNECTIONS = 20
#: Server processes measured: one, and one per core.
SERVER_PROCESSES = (1, 2)
#: wrk's own threads: it is compiled and event-driven, one thread keeps hundreds of connections.
WRK_THREADS = 1

_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}
_PERCENTILE = re.compile(r"^\s*(50|75|90|99)%\s+([\d.]+)(us|ms|s|m)\s*$", re.MULTILINE)
_RPS = re.compile(r"^Requests/sec:\s+([\d.]+)", re.MULTILINE)
_NON_2XX = re.compile(r"Non-2xx or 3xx responses:\s+(\d+)")
_SOCKET_ERRORS = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")
_REQUESTS = re.compile(r"^\s*(\d+) requests in", re.MULTILINE)


@dataclass(frozen=True)
class Load:
    """One wrk run: ``connections`` pollers against ``processes`` server processes."""

    processes: int
    connections: int
    seconds: float
    requests: int
    requests_per_second: float
    p50_ms: float
    p75_ms: float
    p90_ms: float
    p99_ms: float
    #: Answers other than 2xx/3xx, and socket errors (connect, read, write, timeout), added up.
    errors: int

    @property
    def meets_target(self) -> bool:
        return self.errors == 0 and self.requests_per_second >= TARGET_RPS and self.p99_ms < TARGET_P99_MS


def parse_wrk(output: str, *, processes: int, connections: int, seconds: float) -> Load:
    """wrk's ``--latency`` report as a `Load`; `ValueError` when a figure is missing."""
    pct = {int(p): float(v) * _UNITS_MS[unit] for p, v, unit in _PERCENTILE.findall(output)}
    rps, requests = _RPS.search(output), _REQUESTS.search(output)
    if rps is None or requests is None or set(pct) != {50, 75, 90, 99}:
        raise ValueError(f"not a wrk --latency report:\n{output}")
    non_2xx = _NON_2XX.search(output)
    sockets = _SOCKET_ERRORS.search(output)
    errors = (int(non_2xx.group(1)) if non_2xx else 0) + (sum(map(int, sockets.groups())) if sockets else 0)
    return Load(
        processes=processes,
        connections=connections,
        seconds=seconds,
        requests=int(requests.group(1)),
        requests_per_second=float(rps.group(1)),
        p50_ms=pct[50],
        p75_ms=pct[75],
        p90_ms=pct[90],
        p99_ms=pct[99],
        errors=errors,
    )


def wrk_script(key: str) -> str:
    """wrk's Lua setup: every request carries the tenant's key."""
    return f'wrk.headers["Authorization"] = "Bearer {key}"\n'


def run_wrk(url: str, key: str, *, processes: int, connections: int, seconds: float, workdir: Path) -> Load:
    script = workdir / "auth.lua"
    script.write_text(wrk_script(key))
    cmd = [
        "wrk",
        f"-t{min(WRK_THREADS, connections)}",
        f"-c{connections}",
        f"-d{seconds:g}s",
        "--timeout",
        "10s",
        "--latency",
        "-s",
        str(script),
        url,
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return parse_wrk(done.stdout, processes=processes, connections=connections, seconds=seconds)


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def bench_polling(
    *, seconds: float, connections: Sequence[int], processes: Sequence[int], models_dir: Path
) -> dict[str, Any]:
    """Start private services, make a tenant's key and one job, and poll its status with wrk against each number of
    server processes. The job goes to a queue no worker consumes: its status is read, never changed."""
    import os

    from bench.models import ensure_model
    from bench.system import client_and_key, services_for, worker_env
    from inferq.task_specs import TaskName
    from producer.client import JobOptions
    from server.process import running_server

    if shutil.which("wrk") is None:
        return {"skipped": "wrk is not installed (Debian: apt-get install wrk)"}
    out: dict[str, Any] = {"cpu": cpu_name(), "cores": os.cpu_count(), "loads": []}
    model = ensure_model(models_dir, "bench-cls")
    with ExitStack() as stack:
        found = services_for(stack, model)
        if isinstance(found, str):
            return {"skipped": found}
        services, entries = found
        entries[model.name]["queue"] = services.cold_queue
        env = {**worker_env(services, json.dumps(entries)), "INFERQ_LOG_LEVEL": "WARNING"}
        client, key = client_and_key(stack, env)
        job = client.submit(
            TaskName.CLASSIFICATION, model.name, [{"text": "a status to poll"}], options=JobOptions(tenant="bench")
        )
        workdir = Path(tempfile.mkdtemp(prefix="inferq-bench-polling-"))
        out["logs"] = str(workdir)
        for n in processes:
            with running_server(env, workdir / f"server-{n}.log", "--workers", str(n), ready_timeout=120) as served:
                url = f"{served.url}/v1/jobs/{job.job_id}"
                # A short warm-up: every server process opens its connections and imports its routes.
                run_wrk(url, key, processes=n, connections=max(connections), seconds=2, workdir=workdir)
                for c in connections:
                    load = run_wrk(url, key, processes=n, connections=c, seconds=seconds, workdir=workdir)
                    log.info(
                        "polling: %d process(es), %d pollers: %.0f requests/s, p50 %.1f ms, p99 %.1f ms, %d errors",
                        n,
                        c,
                        load.requests_per_second,
                        load.p50_ms,
                        load.p99_ms,
                        load.errors,
                    )
                    out["loads"].append(asdict(load) | {"meets_target": load.meets_target})
    return out


def render(result: dict[str, Any]) -> str:
    if "skipped" in result:
        return f"status polling: skipped ({result['skipped']})"
    lines = [
        f"status polling with wrk ({result['cpu']}, {result['cores']} cores; load generator on the same cores)",
        "  processes  pollers  requests/s   p50 ms   p90 ms   p99 ms  errors",
    ]
    for load in result["loads"]:
        lines.append(
            f"  {load['processes']:>9}  {load['connections']:>7}  {load['requests_per_second']:>10.0f}"
            f"  {load['p50_ms']:>7.1f}  {load['p90_ms']:>7.1f}  {load['p99_ms']:>7.1f}  {load['errors']:>6}"
        )
    at_target = [load for load in result["loads"] if load["connections"] == TARGET_CONNECTIONS]
    best = max(at_target, key=lambda load: load["requests_per_second"], default=None)
    if best is not None:
        verdict = "PASS" if best["meets_target"] else "FAIL"
        lines.append(
            f"  target: >= {TARGET_RPS:.0f} requests/s with p99 < {TARGET_P99_MS:.0f} ms at {TARGET_CONNECTIONS}"
            f" pollers: {best['requests_per_second']:.0f} requests/s, p99 {best['p99_ms']:.1f} ms"
            f" ({best['processes']} processes): {verdict}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.polling", description=__doc__)
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds of each wrk run")
    parser.add_argument(
        "--connections",
        default=f"{TARGET_CONNECTIONS},200",
        help=f"comma-separated numbers of concurrent pollers (the target is at {TARGET_CONNECTIONS})",
    )
    parser.add_argument(
        "--processes", default=",".join(map(str, SERVER_PROCESSES)), help="comma-separated server process counts"
    )
    parser.add_argument("--models-dir", type=Path, default=Path(".bench-models"))
    parser.add_argument("--json", type=Path, default=None, help="write the result here too")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    connections = [int(c) for c in args.connections.split(",")]
    if TARGET_CONNECTIONS not in connections:
        connections.insert(0, TARGET_CONNECTIONS)
    result = bench_polling(
        seconds=args.seconds,
        connections=connections,
        processes=[int(p) for p in args.processes.split(",")],
        models_dir=args.models_dir,
    )
    print(render(result))
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    if "skipped" in result:
        return 0
    met = any(load["meets_target"] for load in result["loads"] if load["connections"] == TARGET_CONNECTIONS)
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
