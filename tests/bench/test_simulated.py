"""The simulated-device benchmark's arithmetic: the chunks' stages summed from a worker's log, and the targets as
ratios within a round."""

from __future__ import annotations

from bench.simulated import POOLS, SimRun, chunk_stages, sim_targets


def line(proc: str, job: str, seq: int, gap: float, write: float, device: float = 0.0) -> str:
    return (
        f"[2026-11-30 10:00:00,000: INFO/{proc}] job {job} chunk {seq}: done, 4 succeeded, 0 failed in 0.10s; "
        f"stages_ms gap={gap} claim=1 read=1 tokenize=2 forward=3 postprocess=1 write={write} commit=1 other=0.5 "
        f"device={device}"
    )


def test_a_jobs_chunks_are_summed_without_the_gap_before_each_processs_first_chunk_or_an_idle_one() -> None:
    log = "\n".join(
        [
            line("ForkPoolWorker-1", "aa", 0, gap=5000, write=10, device=2),  # first in this process: idle before
            line("ForkPoolWorker-2", "aa", 1, gap=7000, write=10, device=2),  # first in this process
            line("ForkPoolWorker-1", "aa", 2, gap=4, write=20, device=2),
            line("ForkPoolWorker-2", "bb", 0, gap=3, write=99),  # another job
            line("ForkPoolWorker-2", "aa", 3, gap=1500, write=20, device=2),  # idle: the sibling had the work
            "[2026-11-30 10:00:00,000: INFO/MainProcess] Task inferq.run_chunk[x] succeeded in 0.1s: None",
        ]
    )
    chunks, stages = chunk_stages(log, "aa")
    assert chunks == 4
    assert stages["gap"] == 0.004
    assert abs(stages["write"] - 0.060) < 1e-12 and abs(stages["device"] - 0.008) < 1e-12


def test_the_targets_are_ratios_within_each_round() -> None:
    one = POOLS[0]

    def run(device: int, pool: object, r: int, seconds: float, device_seconds: float) -> SimRun:
        return SimRun(device, pool, 256, r, 1000, seconds, seconds + 0.1, 4, {"device": device_seconds})  # type: ignore[arg-type]

    runs = [
        # round 0: the device alone runs 1,000 items in 0.5 s (2,000/s); the system took 0.55 s: 0.909
        run(2_000, one, 0, 0.55, 0.5),
        run(10_000, one, 0, 0.2, 0.1),  # 5,000/s against a ceiling of 4,000/s (0.25 s): 1.25
        run(0, one, 0, 0.25, 0.0),
        # round 1: slower on a busy machine
        run(2_000, one, 1, 1.0, 0.5),
        run(10_000, one, 1, 0.5, 0.1),
        run(0, one, 1, 0.4, 0.0),
    ]
    result = {"_runs": runs, "_engine": {256: [4000.0, 5000.0]}}
    targets = {t.name: t for t in sim_targets(result, 256)}
    slow = targets["sim: system / device at 2,000 items/s, 1 process, chunks of 256 (the default)"]
    assert slow.value is not None and abs(slow.value - (0.5 / 0.55 + 0.5) / 2) < 1e-9
    fast = targets["sim: system / min(device, null ceiling) at 10,000 items/s, 1 process, chunks of 256 (the default)"]
    assert fast.value is not None and abs(fast.value - (1.25 + 0.8) / 2) < 1e-9
    ceiling = targets[
        "sim: null-device ceiling (1 process) / engine in-process (null device), chunks of 256 (the default)"
    ]
    assert ceiling.value is not None and abs(ceiling.value - (1.0 + 0.5) / 2) < 1e-9
    assert not any("threads" in name or "2 processes" in name for name in targets)


def test_sim_runs_alone_or_with_the_tasks() -> None:
    from bench.__main__ import parse_args

    assert parse_args(["--tasks", "sim"]).task_list == []
    assert parse_args(["--tasks", "sim"]).sim
    assert parse_args([]).sim
    assert not parse_args(["--tasks", "classic"]).sim


def test_the_cpu_bound_is_the_cores_over_the_machines_cpu_a_chunk_against_the_engines_time() -> None:
    from bench.simulated import cpu_bound, cpu_table

    # Given a null-device job of 4 chunks of 256 that cost the machine 0.2 s of CPU (50 ms a chunk) in 0.1 s
    run = SimRun(0, POOLS[0], 256, 0, 1024, 0.1, 0.2, 4)
    run.cpu = {"worker": 0.12, "postgres": 0.05, "redis": 0.01, "other": 0.02, "machine": 0.2}
    run.cpu_window = 0.1
    # and an engine that runs a chunk in 10 ms (25,600 items/s)
    engine = 25_600.0

    # Then 2 cores allow at most 2 chunks per 50 ms against 1 per 10 ms: 0.4; the machine was busy on 2 cores
    bound = cpu_bound(run, engine, cores=2)
    assert bound is not None and abs(bound - 0.4) < 1e-9
    assert run.busy_cores == 2.0
    table = cpu_table([run], {256: [0.018]}, {256: [engine]})
    assert "50.0" in table and "30.0" in table and "18.0 ms CPU a chunk on 1.80 cores" in table
    # And a run without CPU measured has no bound
    assert cpu_bound(SimRun(0, POOLS[0], 256, 0, 1024, 0.1, 0.2, 4), engine, cores=2) is None
