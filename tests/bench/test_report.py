"""The printed table, the target lines and the JSON file."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from bench.measure import Deviation, Measurement
from bench.report import Target, format_table, machine_info, machine_line, paired_ratio, ratio, to_plain, write_json


def rows() -> list[Measurement]:
    return [
        Measurement("classification", "pipeline bs=1", "fp32", 512, 20.0, 17000, 17000),
        Measurement("classification", "pipeline bs=32", "fp32", 512, 40.0, 17000, 60000),
        Measurement("classification", "engine (in-process)", "fp32", 512, 10.0, 17000, 18000),
        Measurement("classification", "system (1 worker)", "fp32", 512, 11.0, 17000, 18500, peak_rss_mib=1234.0),
    ]


def test_the_table_has_a_row_per_measurement_compared_with_the_bs32_row() -> None:
    table = format_table(rows()).splitlines()
    assert table[0].split()[:3] == ["task", "variant", "prec"]
    assert len(table) == 2 + 4
    engine = next(line for line in table if "engine" in line)
    assert "51.2" in engine  # items/s
    assert "4.00×" in engine  # over the bs=32 row
    assert "1.06" in engine  # padding
    system = next(line for line in table if "system" in line)
    assert "1,234 MiB" in system
    assert "—" in engine  # no peak RSS in-process


def test_ratio_is_throughput_over_throughput() -> None:
    pipe, engine = rows()[1], rows()[2]
    assert ratio(engine, pipe) == 4.0
    assert ratio(engine, None) is None


def test_targets_pass_fail_or_skip() -> None:
    assert Target("x", 1.6, 1.5).line().startswith("PASS  x: 1.60 (target >= 1.50)")
    assert Target("x", 1.4, 1.5).passed is False
    assert Target("y", 3.0, 0, "<=", "of 512").line() == "FAIL  y: 3.00 (target <= 0.00)  (of 512)"
    assert Target("z", None, 1.0).line().startswith("SKIP  z: not measured")
    assert Target("big", 123456.0, 20000).line() == "PASS  big: 123,456 (target >= 20,000)"


def test_json_is_written_atomically_with_plain_values(tmp_path: Path) -> None:
    dev = Deviation(items=2, mismatches=0, top_changes=0, max_abs=0.0, mean_abs=0.0, top_max_abs=0.0, top_mean_abs=0.0)
    payload = {"measurements": rows(), "parity": {"classification": dev}, "t": [Target("x", math.inf, 1.0)]}
    path = write_json(tmp_path / "results" / "run.json", payload)
    data = json.loads(path.read_text())
    assert data["measurements"][2]["items_per_second"] == 51.2
    assert data["parity"]["classification"]["items"] == 2
    assert data["t"][0]["value"] is None and data["t"][0]["passed"] is True
    assert [p.name for p in path.parent.iterdir()] == ["run.json"]


def test_to_plain_turns_paths_and_tuples_into_json() -> None:
    assert to_plain({"p": Path("/a"), "t": (1, float("nan"))}) == {"p": "/a", "t": [1, None]}


def test_the_machine_line_names_cpu_cores_and_versions() -> None:
    info = machine_info()
    line = machine_line(info)
    assert line.startswith("machine: ")
    assert f"{info['cores']} cores" in line and "torch" in line and "transformers" in line
    assert ", native bf16" in machine_line({**info, "native_bf16": True})
    assert "(no native bf16: bf16 is emulated)" in machine_line({**info, "native_bf16": False})
    assert "bf16" not in machine_line({k: v for k, v in info.items() if k != "native_bf16"})


def test_paired_ratio_is_the_median_of_the_rounds_ratios() -> None:
    # Given an engine and a system measured in three rounds, the machine busy for the engine's second run
    engine = Measurement(
        "classification", "engine", "fp32", 512, 10.0, 1, 1, extra={"runs_items_per_second": [50.0, 20.0, 48.0]}
    )
    system = Measurement(
        "classification", "system", "fp32", 512, 11.0, 1, 1, extra={"runs_items_per_second": [47.0, 19.0, 47.0]}
    )
    # Then the ratio compares runs of the same round: ~0.95, not the best over the best
    assert paired_ratio(system, engine) == pytest.approx(0.95)
    # And a baseline measured in the first two rounds only pairs with those
    base = Measurement(
        "classification", "pipeline bs=32", "fp32", 512, 40.0, 1, 1, extra={"runs_items_per_second": [10.0, 5.0]}
    )
    assert paired_ratio(engine, base) == pytest.approx((5.0 + 4.0) / 2)
    # And a single run falls back to the plain ratio
    single = Measurement("classification", "engine", "bf16", 512, 4.0, 1, 1)
    assert paired_ratio(single, base) == pytest.approx(128.0 / 12.8)
    assert paired_ratio(single, None) is None


def test_a_value_just_short_of_its_bound_shows_enough_digits() -> None:
    assert Target("x", 3.9987, 4.0).line().startswith("FAIL  x: 3.9987 (target >= 4.00)")
