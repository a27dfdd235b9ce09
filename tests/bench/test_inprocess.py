"""Helpers of the in-process runs."""

from __future__ import annotations

from bench.inprocess import WARMUP_ITEMS, warm_up_items


def test_the_warm_up_takes_the_longest_items_by_their_text_fields() -> None:
    items = [{"text": "x" * n, "id": 7} for n in range(100)]
    warm = warm_up_items(items)
    assert len(warm) == WARMUP_ITEMS
    assert sorted(len(w["text"]) for w in warm) == list(range(100 - WARMUP_ITEMS, 100))
    pairs = [{"question": "q" * n, "context": "c" * (100 - 2 * n)} for n in range(40)]
    assert warm_up_items(pairs)[0] == pairs[0]  # 100 characters in all, the most
    assert warm_up_items(["a", "ccc", "bb"]) == ["ccc", "bb", "a"]
