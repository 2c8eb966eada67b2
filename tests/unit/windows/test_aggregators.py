"""The aggregations: values, merges, order independence, serialisation, bounded memory."""

from __future__ import annotations

import copy
import math
import random
import statistics
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from headrace.windows.aggregators import (
    Aggregator,
    Count,
    CountsByType,
    DistinctCount,
    First,
    Last,
    LastN,
    Max,
    Mean,
    Min,
    Std,
    Sum,
)

Event = tuple[int, Any]  # (event time in ms, value)


def fold(agg: Aggregator[Any], events: list[Event]) -> Any:
    state = agg.init()
    for at, value in events:
        state = agg.add(state, value, at)
    return state


def roundtrip(agg: Aggregator[Any], state: Any) -> Any:
    """Through msgpack, as a snapshot stores it."""
    return agg.load(msgspec.msgpack.decode(msgspec.msgpack.encode(agg.dump(state))))


def same(a: Any, b: Any) -> bool:
    """Equal, floats up to rounding (compensated sums differ from sequential ones by ulps)."""
    if isinstance(a, float) or isinstance(b, float):
        if isinstance(a, float) and isinstance(b, float) and math.isnan(a):
            return math.isnan(b)
        return bool(a == pytest.approx(b, rel=1e-9, abs=1e-9))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


numbers = st.one_of(
    st.integers(-1000, 1000), st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False)
)
kinds = st.sampled_from(["view", "click", "buy", "cart", "exit", 7])
anything = st.one_of(st.integers(-5, 5), st.text(max_size=2), st.booleans())

# Every built-in, with the values it takes; small bounds so the caps are reached.
CASES: list[tuple[Aggregator[Any], st.SearchStrategy[Any]]] = [
    (Count(), anything),
    (Sum(), numbers),
    (Mean(), numbers),
    (Min(), numbers),
    (Max(), numbers),
    (Std(), numbers),
    (Std(ddof=0), numbers),
    (First(), anything),
    (Last(), anything),
    (LastN(3), anything),
    (DistinctCount(exact_up_to=4, precision=4), st.integers(0, 12)),
    (CountsByType(max_types=2), kinds),
    (CountsByType(types=["view", "buy"]), kinds),
]
IDS = [repr(agg) for agg, _ in CASES]


def events_of(values: st.SearchStrategy[Any]) -> st.SearchStrategy[list[Event]]:
    # Few distinct times, so ties (decided by arrival) are common.
    return st.lists(st.tuples(st.integers(0, 8), values), max_size=30)


@pytest.mark.parametrize(("agg", "values"), CASES, ids=IDS)
@settings(max_examples=20, deadline=None)
@given(data=st.data())
def test_arrival_order_does_not_matter_only_event_time_then_arrival(
    agg: Aggregator[Any], values: st.SearchStrategy[Any], data: st.DataObject
) -> None:
    events = data.draw(events_of(values))
    batch = sorted(events, key=lambda e: e[0])  # stable: ties stay in arrival order
    assert same(agg.result(fold(agg, events)), agg.result(fold(agg, batch)))


@pytest.mark.parametrize(("agg", "values"), CASES, ids=IDS)
@settings(max_examples=20, deadline=None)
@given(data=st.data())
def test_merging_the_states_of_consecutive_runs_equals_one_run(
    agg: Aggregator[Any], values: st.SearchStrategy[Any], data: st.DataObject
) -> None:
    events = data.draw(events_of(values))
    cuts = sorted(data.draw(st.lists(st.integers(0, len(events)), max_size=4)))
    runs = [events[a:b] for a, b in zip([0, *cuts], [*cuts, len(events)], strict=True)]
    states = [fold(agg, run) for run in runs]
    left = agg.init()
    for s in [fold(agg, run) for run in runs]:
        left = agg.merge(left, s)
    # Any bracketing gives the same state (merge is associative): fold from the right too.
    right = states[-1]
    for s in reversed(states[:-1]):
        right = agg.merge(s, right)
    expected = agg.result(fold(agg, events))
    assert same(agg.result(left), expected)
    assert same(agg.result(right), expected)


@pytest.mark.parametrize(("agg", "values"), CASES, ids=IDS)
@settings(max_examples=12, deadline=None)
@given(data=st.data())
def test_merge_leaves_its_second_argument_alone(
    agg: Aggregator[Any], values: st.SearchStrategy[Any], data: st.DataObject
) -> None:
    a = fold(agg, data.draw(events_of(values)))
    b = fold(agg, data.draw(events_of(values)))
    before = copy.deepcopy(agg.dump(b))
    merged = agg.merge(a, b)
    assert agg.dump(b) == before
    # Nor does changing the merged state later reach into b.
    for at, v in data.draw(events_of(values)):
        merged = agg.add(merged, v, at)
    assert agg.dump(b) == before


@pytest.mark.parametrize(("agg", "values"), CASES, ids=IDS)
@settings(max_examples=12, deadline=None)
@given(data=st.data())
def test_a_state_survives_msgpack_and_goes_on_counting(
    agg: Aggregator[Any], values: st.SearchStrategy[Any], data: st.DataObject
) -> None:
    first = data.draw(events_of(values))
    rest = data.draw(events_of(values))
    straight = fold(agg, first + rest)
    restored = roundtrip(agg, fold(agg, first))
    for at, v in rest:
        restored = agg.add(restored, v, at)
    assert agg.result(restored) == agg.result(straight)  # the same operations: exactly equal


# -- each one ------------------------------------------------------------------------------


def test_empty_windows_give_none_for_what_needs_values() -> None:
    for agg in (Mean(), Min(), Max(), Std(), First(), Last()):
        assert agg.result(agg.init()) is None, agg
    assert Count().result(Count().init()) == 0
    assert Sum().result(Sum().init()) == 0.0
    assert LastN(2).result(LastN(2).init()) == []
    assert DistinctCount().result(DistinctCount().init()) == 0


def test_sum_is_compensated() -> None:
    values = [1e16, 1.0, -1e16] * 10 + [0.1] * 10
    assert Sum().result(fold(Sum(), [(0, v) for v in values])) == pytest.approx(11.0)
    assert Mean().result(fold(Mean(), [(0, v) for v in [0.1] * 10])) == 0.1


def test_the_compensation_survives_merges() -> None:
    # Each side alone loses its 1.0 to rounding next to 1e16; the compensations keep them.
    a, b = [(0, -1e16), (0, 1.0)], [(0, 1e16), (0, 1.0)]
    assert Sum().result(Sum().merge(fold(Sum(), a), fold(Sum(), b))) == 2.0
    assert Mean().result(Mean().merge(fold(Mean(), a), fold(Mean(), b))) == 0.5


def test_sums_of_infinities_stay_infinite() -> None:
    assert Sum().result(fold(Sum(), [(0, 1.0), (0, math.inf), (0, 2.0)])) == math.inf
    assert Mean().result(fold(Mean(), [(0, -math.inf), (0, 1.0)])) == -math.inf


def test_min_and_max() -> None:
    events = [(0, 3), (0, -2.5), (0, 7), (0, True)]
    assert Min().result(fold(Min(), events)) == -2.5
    assert Max().result(fold(Max(), events)) == 7


@given(st.lists(st.floats(-1e6, 1e6), min_size=2, max_size=50))
def test_std_matches_the_statistics_module(values: list[float]) -> None:
    state = fold(Std(), [(0, v) for v in values])
    assert Std().result(state) == pytest.approx(statistics.stdev(values), rel=1e-7, abs=1e-6)
    assert Std(ddof=0).result(state) == pytest.approx(statistics.pstdev(values), rel=1e-7, abs=1e-6)


def test_std_is_stable_far_from_zero() -> None:
    # E[x²] - E[x]² loses every digit here; Welford and Chan's merge do not.
    values = [1e9 + d for d in (4.0, 7.0, 13.0, 16.0)]
    half = len(values) // 2
    merged = Std().merge(
        fold(Std(), [(0, v) for v in values[:half]]), fold(Std(), [(0, v) for v in values[half:]])
    )
    assert Std().result(merged) == pytest.approx(statistics.stdev([4.0, 7.0, 13.0, 16.0]))


def test_std_needs_more_values_than_ddof() -> None:
    assert Std().result(fold(Std(), [(0, 5)])) is None
    assert Std(ddof=0).result(fold(Std(), [(0, 5)])) == 0.0
    with pytest.raises(ValueError, match="ddof"):
        Std(ddof=-1)


def test_first_and_last_go_by_event_time_then_arrival() -> None:
    events = [(5, "b"), (3, "a"), (3, "a2"), (9, "z"), (9, "z2"), (4, "c")]
    assert First().result(fold(First(), events)) == "a"
    assert Last().result(fold(Last(), events)) == "z2"
    # merge(a, b): b's events arrived later, so b wins a tie for Last and loses it for First.
    a, b = fold(First(), [(1, "a")]), fold(First(), [(1, "b")])
    assert First().result(First().merge(a, b)) == "a"
    a, b = fold(Last(), [(1, "a")]), fold(Last(), [(1, "b")])
    assert Last().result(Last().merge(a, b)) == "b"


def test_last_n_keeps_the_latest_n_in_event_time_order() -> None:
    events = [(t, f"e{t}") for t in random.Random(3).sample(range(100), 100)]
    state = fold(LastN(5), events)
    assert LastN(5).result(state) == ["e95", "e96", "e97", "e98", "e99"]
    assert len(state) == 5  # bounded, whatever the stream
    with pytest.raises(ValueError, match="at least 1"):
        LastN(0)


def test_distinct_count_is_exact_up_to_the_bound() -> None:
    d = DistinctCount(exact_up_to=1000)
    state = fold(d, [(0, f"u{i % 700}") for i in range(5000)])
    assert isinstance(state, set) and d.result(state) == 700


def test_distinct_count_estimates_beyond_the_bound_in_bounded_memory() -> None:
    d = DistinctCount(exact_up_to=100, precision=12)
    state = fold(d, [(0, i) for i in range(50_000)] + [(0, i) for i in range(1000)])
    assert isinstance(state, bytearray) and len(state) == 4096
    assert d.result(state) == pytest.approx(50_000, rel=0.05)  # 1.6 % standard error


def test_distinct_count_merges_exact_and_estimated_states() -> None:
    d = DistinctCount(exact_up_to=50, precision=10)
    small = fold(d, [(0, i) for i in range(30)])  # exact
    big = fold(d, [(0, i) for i in range(20, 5000)])  # estimated
    merged_both_ways = [
        d.result(d.merge(roundtrip(d, small), roundtrip(d, big))),
        d.result(d.merge(roundtrip(d, big), roundtrip(d, small))),
    ]
    assert (
        merged_both_ways[0]
        == merged_both_ways[1]
        == d.result(fold(d, [(0, i) for i in range(5000)]))
    )
    # Two exact states whose union passes the bound turn into an estimate.
    a, b = fold(d, [(0, i) for i in range(40)]), fold(d, [(0, i) for i in range(40, 80)])
    assert isinstance(d.merge(a, b), bytearray)


def test_distinct_count_parameters_are_checked() -> None:
    with pytest.raises(ValueError, match="precision"):
        DistinctCount(precision=20)
    with pytest.raises(ValueError, match="exact_up_to"):
        DistinctCount(exact_up_to=-1)


def test_counts_by_type_keep_the_first_types_in_string_order() -> None:
    c = CountsByType(max_types=2)
    events = [(0, v) for v in ["view", "click", "view", "buy", "click", "view", "cart"]]
    assert c.result(fold(c, events)) == {"buy": 1, "cart": 1, "other": 5}
    state = fold(c, events * 50)
    assert len(state[0]) == 2  # bounded


def test_counts_by_type_with_a_vocabulary_have_a_fixed_shape() -> None:
    c = CountsByType(types=["buy", "click", "refund"], other="rest")
    assert c.result(fold(c, [(0, "click"), (0, "view"), (0, 3)])) == {
        "buy": 0,
        "click": 1,
        "refund": 0,
        "rest": 2,
    }


def test_counts_by_type_name_non_string_types_by_their_string() -> None:
    c = CountsByType()
    assert c.result(fold(c, [(0, 1), (0, "1"), (0, None), (0, True)])) == {
        "1": 2,
        "None": 1,
        "True": 1,
        "other": 0,
    }


def test_counts_by_type_parameters_are_checked() -> None:
    with pytest.raises(ValueError, match="max_types"):
        CountsByType(max_types=-1)
