"""Tumbling, hopping, sliding and session window assignment."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from headrace.windows.assigners import Hopping, Session, Sliding, Tumbling
from headrace.windows.window import Window, event_us


def starts(windows: list[Window]) -> list[float]:
    return [w.start for w in windows]


# -- Tumbling ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("t", "start"),
    [
        (0.0, 0.0),
        (9.999999, 0.0),
        (10.0, 10.0),
        (12.5, 10.0),
        (-0.000001, -10.0),
        (-10.0, -10.0),
    ],
)
def test_tumbling_puts_each_event_in_exactly_one_window(t: float, start: float) -> None:
    (w,) = Tumbling(10).assign(event_us(t))
    assert (w.start, w.end) == (start, start + 10)


def test_a_time_computed_with_float_drift_still_lands_on_the_boundary() -> None:
    # 0.1 * 3 is 0.30000000000000004: the size 0.3 s is 300,000 us exactly, and an event at
    # 0.1 * 3 is at (after) the float 0.3 a window starting at 300,000 us shows.
    assert Tumbling(0.1 * 3).assign(event_us(0.1 * 3)) == [Window(300_000, 600_000)]
    # 0.7 - 0.4 is 0.29999999999999993, before that bound: it is in the window before.
    assert Tumbling(0.3).assign(event_us(0.7 - 0.4)) == [Window(0, 300_000)]


def test_tumbling_windows_align_to_the_offset() -> None:
    assert Tumbling(60, offset=15).assign(event_us(74.0)) == [Window(15_000_000, 75_000_000)]
    assert Tumbling(60, offset=15).assign(event_us(75.0)) == [Window(75_000_000, 135_000_000)]


@given(st.integers(1, 10**10), st.integers(-(10**16), 10**16))
def test_tumbling_window_contains_its_event_and_has_the_size(size: int, t: int) -> None:
    (w,) = Tumbling(size / 10**6).assign(t)
    assert w.contains(t)
    assert w.end_us - w.start_us == size
    assert w.start_us % size == 0


# -- Hopping -------------------------------------------------------------------------------


def test_hopping_puts_an_event_in_every_window_that_contains_it() -> None:
    assert starts(Hopping(10, 5).assign(event_us(12.5))) == [5.0, 10.0]
    assert starts(Hopping(10, 5).assign(event_us(10.0))) == [5.0, 10.0]
    assert starts(Hopping(10, 5).assign(event_us(9.999999))) == [0.0, 5.0]
    assert starts(Hopping(10, 3).assign(event_us(10.0))) == [3.0, 6.0, 9.0]


def test_hopping_with_the_hop_equal_to_the_size_is_tumbling() -> None:
    for t in range(-5000, 5000, 137):
        assert Hopping(2, 2).assign(t) == Tumbling(2).assign(t)


@given(
    st.integers(1, 60).flatmap(lambda size: st.tuples(st.just(size), st.integers(1, size))),
    st.integers(-200, 200),
    st.integers(-10_000, 10_000),
)
def test_hopping_matches_a_brute_force_enumeration(
    size_hop: tuple[int, int], offset: int, t: int
) -> None:
    size, hop = size_hop
    got = Hopping(size / 10**6, hop / 10**6, offset / 10**6).assign(t)
    expected = [Window(s, s + size) for s in range(t - size + 1, t + 1) if (s - offset) % hop == 0]
    assert got == expected


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: Hopping(5, 10), "must not exceed"),
        (lambda: Hopping(5, 0), "a hop must be at least 1 µs"),
        (lambda: Tumbling(0), "a window size must be at least 1 µs"),
        (lambda: Tumbling(0.0000004), "at least 1 µs"),  # rounds to 0 us
        (lambda: Sliding(-1), "at least 1 µs"),
        (lambda: Session(0), "a session gap must be at least 1 µs"),
    ],
)
def test_sizes_below_a_microsecond_are_rejected(make: Callable[[], object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make()


# -- Sliding and sessions ------------------------------------------------------------------


def test_the_sliding_window_of_an_event_ends_at_it_inclusive() -> None:
    (w,) = Sliding(10).assign(event_us(30.0))
    # (20 s, 30 s]: an event at 30 s is in it, one at exactly 20 s is not.
    assert w.contains(event_us(30.0)) and w.contains(event_us(20.000001))
    assert not w.contains(event_us(20.0)) and not w.contains(event_us(30.000001))
    assert Sliding(10).window_at(event_us(30.0)) == w
    assert (w.start, w.end) == (20.000001, 30.000001)


def test_a_session_event_opens_the_gap_after_it() -> None:
    assert Session(30).assign(event_us(100.0)) == [Window(100_000_000, 130_000_000)]
    assert Session(30).assign(event_us(100.0009)) == [Window(100_000_900, 130_000_900)]


def test_merged_sessions_cover_all_of_them() -> None:
    ws = [Window(50, 80), Window(0, 30), Window(20, 60)]
    assert Session.merged(ws) == Window(0, 80)


def test_reprs_name_the_parameters_in_seconds() -> None:
    assert repr(Tumbling(10)) == "Tumbling(size=10.0, offset=0.0)"
    assert repr(Hopping(10, 2.5)) == "Hopping(size=10.0, hop=2.5, offset=0.0)"
    assert repr(Sliding(1)) == "Sliding(size=1.0)"
    assert repr(Session(30)) == "Session(gap=30.0)"
