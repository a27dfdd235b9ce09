"""Padding arithmetic, process-tree memory and the comparison of two runs' scores."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from bench.measure import (
    Measurement,
    _proc_tree,
    _proc_tree_by_scan,
    compare,
    padded_in_order,
    padded_in_plan,
    tree_rss_bytes,
)


def test_padding_in_input_order_pads_each_batch_to_its_longest() -> None:
    # Batches [5, 1] and [3, 3] and [2]: 2×5 + 2×3 + 1×2
    assert padded_in_order([5, 1, 3, 3, 2], batch_size=2) == 18
    assert padded_in_order([5, 1, 3], batch_size=1) == 9


def test_padding_of_a_plan_counts_every_batch() -> None:
    lengths = np.array([5, 1, 3, 3, 2])
    plan = [np.array([0, 2]), np.array([3, 4, 1])]
    assert padded_in_plan(lengths, plan) == 2 * 5 + 3 * 3


def test_a_measurement_derives_its_rates() -> None:
    m = Measurement("classification", "engine", "fp32", items=100, seconds=4.0, real_tokens=2000, padded_tokens=2500)
    assert m.items_per_second == 25.0
    assert m.tokens_per_second == 500.0
    assert m.padding_ratio == 1.25
    assert m.to_json()["padding_ratio"] == 1.25


def test_identical_runs_do_not_differ() -> None:
    run = [[("POSITIVE", 0.7), ("NEGATIVE", 0.3)], [("NEGATIVE", 0.6), ("POSITIVE", 0.4)]]
    dev = compare(run, run)
    assert (dev.items, dev.mismatches, dev.top_changes, dev.max_abs) == (2, 0, 0, 0.0)


def test_scores_are_compared_by_key_and_a_changed_top_is_counted() -> None:
    want = [[("A", 0.70), ("B", 0.30)], [("A", 0.55), ("B", 0.45)], [("A", 0.9), ("B", 0.1)]]
    got = [[("A", 0.70), ("B", 0.30)], [("B", 0.52), ("A", 0.48)], [("A", 0.9 + 2e-6), ("B", 0.1 - 2e-6)]]
    dev = compare(got, want)
    assert dev.top_changes == 1
    assert dev.mismatches == 1  # the third item lies within tolerance
    assert dev.max_abs == pytest.approx(0.07)
    assert dev.top_max_abs == pytest.approx(0.07)
    assert dev.mean_abs == pytest.approx((0 + 0 + 0.07 + 0.07 + 2e-6 + 2e-6) / 6)


def test_a_tie_within_tolerance_is_not_a_changed_top() -> None:
    want = [[("A", 0.5), ("B", 0.5 - 1e-7)]]
    got = [[("B", 0.5), ("A", 0.5 - 1e-7)]]
    dev = compare(got, want)
    assert dev.top_changes == 0 and dev.mismatches == 0


def test_a_missing_result_is_a_mismatch_and_a_beyond_tolerance_score_too() -> None:
    want = [[("A", 0.6)], [("A", 0.6)]]
    dev = compare([None, [("A", 0.6 + 1e-3)]], want)
    assert dev.mismatches == 2 and dev.top_changes == 1


def test_compare_refuses_runs_of_different_lengths() -> None:
    with pytest.raises(ValueError):
        compare([[("A", 1.0)]], [])


def test_tree_rss_counts_the_children() -> None:
    # Given a child that holds ~64 MiB, started by a shell that is our child
    code = "import time; b = bytearray(64 * 2**20); b[::4096] = b'x' * len(b[::4096]); print('up', flush=True); time.sleep(30)"
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"up"
        # Then our tree holds the child, and its RSS counts in our tree's
        assert proc.pid in _proc_tree(os.getpid())
        assert sorted(_proc_tree(os.getpid())) == sorted(_proc_tree_by_scan(os.getpid()))
        assert tree_rss_bytes(os.getpid()) >= tree_rss_bytes(proc.pid) >= 60 * 2**20
    finally:
        proc.kill()
        proc.wait()
    assert tree_rss_bytes(proc.pid) == 0


def test_stored_vector_bytes_decode_as_float32_rows() -> None:
    from bench.measure import vector_of

    v = np.arange(6, dtype="<f4") / 7
    assert vector_of({"dim": 3, "dtype": "float32"}, v.tobytes()).tolist() == v.reshape(2, 3).tolist()
    half = vector_of({"dim": 6, "dtype": "float16"}, v.astype("<f2").tobytes())
    assert half.dtype == np.float32 and half.shape == (1, 6)
    assert np.allclose(half, v, atol=1e-3)
    assert vector_of(None, b"") is None and vector_of({"dim": 3, "dtype": "float32"}, None) is None


def test_equal_vectors_do_not_differ_and_a_turned_one_shows_in_its_cosine() -> None:
    from bench.measure import compare_vectors

    a = np.array([[1.0, 0.0]], dtype=np.float32)
    b = np.array([[0.6, 0.8]], dtype=np.float32)
    same = compare_vectors([a, b], [a.copy(), b.copy()])
    assert (same.items, same.mismatches, same.max_abs) == (2, 0, 0.0)
    assert same.min_cosine == pytest.approx(1.0) and same.mean_cosine == pytest.approx(1.0)
    # Given one vector turned from a towards b, and one within tolerance
    dev = compare_vectors([b, b + 1e-7], [a, b])
    assert dev.mismatches == 1
    assert dev.min_cosine == pytest.approx(0.6)
    assert dev.mean_cosine == pytest.approx(0.8)
    assert dev.max_abs == pytest.approx(0.8)


def test_a_missing_or_misshapen_vector_is_a_mismatch() -> None:
    from bench.measure import compare_vectors

    a = np.ones((1, 4), dtype=np.float32)
    dev = compare_vectors([None, np.ones((2, 4), dtype=np.float32), a], [a, a, a])
    assert dev.mismatches == 2 and dev.min_cosine == pytest.approx(1.0)
    with pytest.raises(ValueError):
        compare_vectors([a], [])
    empty = compare_vectors([None], [a])
    assert empty.mismatches == 1 and np.isnan(empty.min_cosine)


def test_describe_reads_either_comparison() -> None:
    from bench.measure import compare_vectors, describe

    a = np.ones((1, 4), dtype=np.float32)
    assert describe(compare_vectors([a], [a])).startswith("0 of 1 differ (cosine min 1.000000")
    assert describe(compare([[("A", 0.5)]], [[("A", 0.5)]])) == "0 of 1 differ (max |Δscore| 0.0e+00, 0 top changed)"


def test_cpu_snapshots_charge_a_busy_child_to_the_worker_and_the_machine() -> None:
    from bench.measure import cpu_between, cpu_snapshot

    # Given a child of ours that spins for about 0.6 s of CPU
    before = cpu_snapshot(os.getpid())
    assert before is not None and set(before) == {"worker", "postgres", "redis", "machine"}
    code = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.6: pass"
    subprocess.run([sys.executable, "-c", code], check=True)
    # (a child that has exited is charged to its parent once reaped: run one that is still alive too)
    proc = subprocess.Popen(
        [sys.executable, "-c", code + "\nprint('spun', flush=True)\ntime.sleep(30)"], stdout=subprocess.PIPE
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"spun"
        after = cpu_snapshot(os.getpid())
    finally:
        proc.kill()
        proc.wait()

    # Then the live child's CPU is the "worker" tree's, the machine's busy time holds it, and "other" is the rest
    spent = cpu_between(before, after)
    assert spent["worker"] >= 0.5, spent
    assert spent["machine"] >= spent["worker"] - 0.05, spent
    named = spent["worker"] + spent["postgres"] + spent["redis"]
    assert abs(spent["other"] - max(0.0, spent["machine"] - named)) < 1e-9
    assert cpu_between(None, after) == {}
