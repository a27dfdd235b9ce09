"""The shared batching core: token-budget micro-batches and failure isolation."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.engines.batching import Packed, pad, plan_batches, run_batches


def recording(
    events: list[str],
) -> tuple[Callable[[np.ndarray], np.ndarray], Callable[[np.ndarray], dict[str, np.ndarray]]]:
    """A forward and a collect that note each micro-batch's launch and collection (by its first row) in ``events``;
    the collect gives each row's index back as its one feature."""

    def forward(rows: np.ndarray) -> np.ndarray:
        events.append(f"launch {rows[0]}")
        return rows

    def collect(rows: np.ndarray) -> dict[str, np.ndarray]:
        events.append(f"collect {rows[0]}")
        return {"x": rows.astype(np.float32)[:, None]}

    return forward, collect


def test_the_next_micro_batch_is_launched_before_the_previous_one_is_collected() -> None:
    # Given three micro-batches, launched by forward and brought back by collect
    plan = [np.array([0, 1]), np.array([2, 3]), np.array([4])]
    events: list[str] = []
    forward, collect = recording(events)

    # When they run
    out = run_batches(plan, forward, collect=collect, n_features=5)

    # Then the device always has the next one queued while the previous one is collected, and all of them land
    assert events == ["launch 0", "launch 2", "collect 0", "launch 4", "collect 2", "collect 4"]
    assert out.stacked("x")[:, 0].tolist() == [0.0, 1.0, 2.0, 3.0, 4.0]


def test_a_depth_keeps_that_many_micro_batches_launched_and_collects_them_in_launch_order() -> None:
    # Given five micro-batches of one feature and a forward that hands each to one of two lanes
    plan = [np.array([i]) for i in range(5)]
    events: list[str] = []
    forward, collect = recording(events)

    out = run_batches(plan, forward, collect=collect, n_features=5, depth=2)

    # Then two stay launched while the next one is (the lanes busy and one queued), collected oldest first
    assert events == [
        "launch 0",
        "launch 1",
        "launch 2",
        "collect 0",
        "launch 3",
        "collect 1",
        "launch 4",
        "collect 2",
        "collect 3",
        "collect 4",
    ]
    assert out.stacked("x")[:, 0].tolist() == [0.0, 1.0, 2.0, 3.0, 4.0]


def test_a_batch_that_fails_when_collected_is_split_like_one_that_fails_at_launch() -> None:
    # Given a device on which a micro-batch holding feature 5 fails only once it is waited for (as a kernel's error
    # surfaces at the copy back), and a stop asked while a micro-batch is in flight
    plan = plan_batches(np.full(12, 10), max_tokens=40, max_size=4)
    launched: list[int] = []

    def collect(rows: np.ndarray) -> dict[str, np.ndarray]:
        if 5 in rows:
            raise RuntimeError("device-side assert")
        return {"x": rows.astype(np.float32)[:, None]}

    def forward(rows: np.ndarray) -> np.ndarray:
        launched.append(len(rows))
        return rows

    out = run_batches(plan, forward, collect=collect, n_features=12)

    # Then feature 5 alone failed and every other feature has its output
    assert list(out.failed) == [5]
    others = [i for i in range(12) if i != 5]
    assert out.stacked("x")[:, 0][others].tolist() == [float(i) for i in others]

    # And a micro-batch launched before a stop is still collected: it ran
    launched.clear()
    stopped = run_batches(plan, forward, collect=collect, should_stop=lambda: len(launched) >= 1, n_features=12)
    assert len(launched) == 1 and len(stopped.batches) == 1


@settings(max_examples=100, deadline=None)
@given(
    lengths=st.lists(st.integers(min_value=1, max_value=600), min_size=0, max_size=300),
    max_tokens=st.integers(min_value=16, max_value=4096),
    max_size=st.integers(min_value=1, max_value=64),
)
def test_every_feature_lands_in_exactly_one_batch_within_budget(
    lengths: list[int], max_tokens: int, max_size: int
) -> None:
    arr = np.array(lengths, dtype=np.int64)
    plan = plan_batches(arr, max_tokens, max_size)
    seen = np.concatenate(plan) if plan else np.array([], dtype=np.int64)
    assert sorted(seen.tolist()) == list(range(len(lengths)))
    for batch in plan:
        padded = len(batch) * int(arr[batch].max())
        assert len(batch) <= max_size
        assert padded <= max_tokens or len(batch) == 1


def test_batches_are_length_sorted_so_padding_stays_small() -> None:
    lengths = np.array([5, 100, 6, 98, 7, 99])
    plan = plan_batches(lengths, max_tokens=300, max_size=3)
    assert [sorted(lengths[b].tolist()) for b in plan] == [[98, 99, 100], [5, 6, 7]]


def test_pad_right_pads_and_masks() -> None:
    ids, mask = pad([[1, 2, 3], [4], [5, 6]], np.array([2, 1]), pad_value=0)
    assert ids.tolist() == [[5, 6], [4, 0]]
    assert mask.tolist() == [[1, 1], [1, 0]]


def test_packed_sequences_pad_each_micro_batch_as_row_by_row_padding_would() -> None:
    # Given sequences of every length from none up, one token id equal to the pad value, packed once
    rng = np.random.default_rng(7)
    sequences = [rng.integers(0, 50, size=int(n)).tolist() for n in rng.integers(0, 30, size=200)]
    sequences[3] = []
    sequences[4] = [9, 9, 9]
    packed = Packed.of(sequences)
    # When micro-batches of any rows, in any order, are padded
    for rows in (np.array([4, 3]), np.array([3]), rng.permutation(200)[:64], np.arange(200)):
        ids, mask = packed.pad(rows, pad_value=9)
        # Then each row holds its sequence, then the pad value, and the mask marks the sequence
        width = max(len(sequences[r]) for r in rows)
        assert ids.shape == mask.shape == (len(rows), width)
        assert ids.tolist() == [sequences[r] + [9] * (width - len(sequences[r])) for r in rows]
        assert mask.tolist() == [[1] * len(sequences[r]) + [0] * (width - len(sequences[r])) for r in rows]
    # And sequences that are all empty pad to nothing
    ids, mask = Packed.of([[], []]).pad(np.array([1, 0]), pad_value=0)
    assert ids.shape == mask.shape == (2, 0)


def test_a_poison_feature_is_isolated_and_its_neighbours_still_run() -> None:
    # Given a forward pass that raises whenever feature 13 is in its batch
    plan = plan_batches(np.full(40, 10), max_tokens=200, max_size=20)

    def forward(rows: np.ndarray) -> dict[str, np.ndarray]:
        if 13 in rows:
            raise RuntimeError("poison")
        return {"x": rows.astype(np.float32)[:, None]}

    # When the batches run
    out = run_batches(plan, forward, n_features=40)

    # Then only feature 13 failed, and every other feature has its output
    assert list(out.failed) == [13]
    stacked = out.stacked("x")[:, 0]
    others = [i for i in range(40) if i != 13]
    assert stacked[others].tolist() == [float(i) for i in others]


def test_should_stop_halts_between_batches() -> None:
    plan = plan_batches(np.full(10, 10), max_tokens=20, max_size=2)
    calls: list[int] = []

    def forward(rows: np.ndarray) -> dict[str, np.ndarray]:
        calls.append(len(rows))
        return {"x": np.zeros((len(rows), 1))}

    out = run_batches(plan, forward, should_stop=lambda: len(calls) >= 2, n_features=10)
    assert len(calls) == 2 and len(out.batches) == 2


@settings(max_examples=100, deadline=None)
@given(
    lengths=st.lists(st.integers(min_value=0, max_value=600), min_size=0, max_size=300),
    max_tokens=st.integers(min_value=16, max_value=4096),
    max_size=st.integers(min_value=1, max_value=64),
    batch_cost=st.integers(min_value=0, max_value=10_000),
)
def test_the_least_cost_plan_keeps_the_budget_and_never_pads_more_than_filling_it(
    lengths: list[int], max_tokens: int, max_size: int, batch_cost: int
) -> None:
    arr = np.array(lengths, dtype=np.int64)
    greedy = plan_batches(arr, max_tokens, max_size)
    plan = plan_batches(arr, max_tokens, max_size, batch_cost=batch_cost)
    seen = np.concatenate(plan) if plan else np.array([], dtype=np.int64)
    assert sorted(seen.tolist()) == list(range(len(lengths)))
    for batch in plan:
        assert len(batch) <= max_size
        assert len(batch) * max(int(arr[batch].max()), 1) <= max_tokens or len(batch) == 1

    def cost(p: list[np.ndarray]) -> int:
        return sum(len(b) * max(int(arr[b].max()), 1) + batch_cost for b in p)

    # The plan is the cheapest: never costlier than filling the budget, which makes the fewest batches.
    assert cost(plan) <= cost(greedy)
    assert len(plan) >= len(greedy)


def test_the_least_cost_plan_cuts_where_lengths_drop() -> None:
    # Given 8 sequences of ~100 tokens and 8 of ~10, with room for all 16 in one batch
    lengths = np.array([100, 10] * 8)
    # When the plan fills the budget, the short ones are padded to 100; with a small cost per batch they are not
    assert [len(b) for b in plan_batches(lengths, max_tokens=4096, max_size=64)] == [16]
    plan = plan_batches(lengths, max_tokens=4096, max_size=64, batch_cost=32)
    assert [sorted(lengths[b].tolist()) for b in plan] == [[100] * 8, [10] * 8]
    # And a cost above the padding saved keeps them together
    assert len(plan_batches(lengths, max_tokens=4096, max_size=64, batch_cost=1000)) == 1


@given(
    lengths=st.lists(st.integers(min_value=0, max_value=600), min_size=0, max_size=200),
    max_tokens=st.integers(min_value=16, max_value=4096),
    max_size=st.integers(min_value=1, max_value=64),
    batch_cost=st.integers(min_value=0, max_value=10_000),
    lanes=st.integers(min_value=1, max_value=4),
)
@settings(deadline=None)
def test_a_plan_for_lanes_gives_every_lane_a_batch_and_keeps_the_budget(
    lengths: list[int], max_tokens: int, max_size: int, batch_cost: int, lanes: int
) -> None:
    arr = np.array(lengths, dtype=np.int64)
    alone = plan_batches(arr, max_tokens, max_size, batch_cost=batch_cost)
    plan = plan_batches(arr, max_tokens, max_size, batch_cost=batch_cost, lanes=lanes)
    # Every feature in exactly one batch, within the budget and the batch size
    seen = np.concatenate(plan) if plan else np.array([], dtype=np.int64)
    assert sorted(seen.tolist()) == list(range(len(lengths)))
    for batch in plan:
        assert len(batch) >= 1 and len(batch) <= max_size
        assert len(batch) * max(int(arr[batch].max()), 1) <= max_tokens or len(batch) == 1
    # at least one batch a lane where there are features enough (one each where fewer), and the plan for one lane
    # wherever it already had that many.
    assert len(plan) >= min(lanes, len(lengths))
    if len(alone) >= lanes:
        assert [b.tolist() for b in plan] == [b.tolist() for b in alone]


def test_a_chunk_of_one_batch_is_cut_for_two_lanes_where_the_costliest_half_is_cheapest() -> None:
    # Given 8 short texts that one lane would run as one batch (padding them costs less than another forward)
    lengths = np.array([14, 18, 8, 17, 10, 18, 12, 16])
    assert len(plan_batches(lengths, max_tokens=4096, max_size=64, batch_cost=32)) == 1
    # When two lanes run side by side, the plan has two batches, length-sorted, cut so that the costlier one is as
    # cheap as it can be (the lanes finish when it does): the four longest (4 × 18 + 32 = 104) and the four shortest
    # (4 × 14 + 32 = 88), not the cut of least total cost (5 × 18 + 32 = 122 and 3 × 12 + 32 = 68: 190 against 192)
    plan = plan_batches(lengths, max_tokens=4096, max_size=64, batch_cost=32, lanes=2)
    assert [lengths[b].tolist() for b in plan] == [[18, 18, 17, 16], [14, 12, 10, 8]]


def test_a_chunk_smaller_than_the_lanes_runs_one_feature_a_batch() -> None:
    assert [b.tolist() for b in plan_batches(np.array([5, 9]), 4096, 64, batch_cost=32, lanes=3)] == [[1], [0]]
    assert [b.tolist() for b in plan_batches(np.array([5]), 4096, 64, batch_cost=32, lanes=3)] == [[0]]
    assert plan_batches(np.array([], dtype=np.int64), 4096, 64, batch_cost=32, lanes=3) == []
