"""The polling benchmark's reading of wrk's report (the run itself is `python -m bench.polling`, outside the suite)."""

from __future__ import annotations

import pytest

from bench.polling import TARGET_CONNECTIONS, Load, parse_wrk, render, wrk_script

#: A real wrk 4.1 --latency report (a local server answering 404: every answer counted as an error).
REPORT = """Running 1s test @ http://127.0.0.1:18765/nonexistent
  1 threads and 4 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     3.32ms    2.49ms  16.15ms   83.51%
    Req/Sec     1.27k   277.36     1.61k    60.00%
  Latency Distribution
     50%  712.00us
     75%    4.21ms
     90%    6.46ms
     99%    1.20s
  1284 requests in 1.02s, 652.03KB read
  Socket errors: connect 0, read 2, write 0, timeout 3
  Non-2xx or 3xx responses: 1284
Requests/sec:   1253.02
Transfer/sec:    636.30KB
"""


def test_the_report_is_read_with_its_units_and_errors() -> None:
    load = parse_wrk(REPORT, processes=2, connections=4, seconds=1)
    assert load.requests == 1284
    assert load.requests_per_second == pytest.approx(1253.02)
    assert load.p50_ms == pytest.approx(0.712)
    assert load.p75_ms == pytest.approx(4.21)
    assert load.p99_ms == pytest.approx(1200.0)
    assert load.errors == 1284 + 5
    assert not load.meets_target


def test_a_report_without_percentiles_is_refused() -> None:
    with pytest.raises(ValueError, match="not a wrk --latency report"):
        parse_wrk(REPORT.replace("     99%    1.20s\n", ""), processes=1, connections=4, seconds=1)


def test_the_target_needs_throughput_latency_and_no_errors() -> None:
    good = Load(1, TARGET_CONNECTIONS, 10, 12_000, 1_200, 10, 12, 15, 30, 0)
    assert good.meets_target
    assert not Load(1, TARGET_CONNECTIONS, 10, 9_000, 900, 10, 12, 15, 30, 0).meets_target
    assert not Load(1, TARGET_CONNECTIONS, 10, 12_000, 1_200, 10, 12, 15, 60, 0).meets_target
    assert not Load(1, TARGET_CONNECTIONS, 10, 12_000, 1_200, 10, 12, 15, 30, 1).meets_target


def test_render_names_the_machine_and_the_verdict() -> None:
    loads = [
        {**Load(n, TARGET_CONNECTIONS, 10, 10_000, rps, 5, 8, 12, p99, 0).__dict__, "meets_target": ok}
        for n, rps, p99, ok in ((1, 800.0, 40.0, False), (2, 1_300.0, 30.0, True))
    ]
    text = render({"cpu": "Some CPU", "cores": 2, "loads": loads})
    assert "Some CPU" in text
    assert text.endswith("p99 30.0 ms (2 processes): PASS")


def test_the_key_goes_in_the_authorization_header() -> None:
    assert wrk_script("iq_a_b") == 'wrk.headers["Authorization"] = "Bearer iq_a_b"\n'
