"""Window bounds and the millisecond time unit."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from headrace.windows.window import Window, to_ms, to_seconds


@pytest.mark.parametrize(
    ("seconds", "ms"),
    [
        (0.1 + 0.2, 300),  # 0.30000000000000004 s is 300 ms, not 300.00000000000006
        (1700000000.123, 1700000000123),
        (1700000010.0 - 10.0, 1700000000000),
        (0.0004, 0),
        (0.0006, 1),
        (-1.5, -1500),
    ],
)
def test_to_ms_rounds_to_the_nearest_millisecond(seconds: float, ms: int) -> None:
    assert to_ms(seconds) == ms


@given(st.integers(-(10**13), 10**13))
def test_milliseconds_survive_the_round_trip_through_seconds(ms: int) -> None:
    assert to_ms(to_seconds(ms)) == ms


def test_a_window_is_half_open() -> None:
    w = Window(to_ms(10.0), to_ms(20.0))
    assert (w.start, w.end) == (10.0, 20.0)
    assert w.contains(to_ms(10.0))
    assert w.contains(to_ms(19.999))
    assert not w.contains(to_ms(20.0))
    assert not w.contains(to_ms(9.999))


@pytest.mark.parametrize(
    ("a", "b", "overlap"),
    [
        ((0, 10), (5, 15), True),
        ((0, 10), (10, 20), False),  # touching
        ((0, 10), (2, 3), True),  # inside
        ((5, 6), (0, 5), False),
    ],
)
def test_overlap_is_symmetric_and_excludes_touching(
    a: tuple[int, int], b: tuple[int, int], overlap: bool
) -> None:
    assert Window(*a).overlaps(Window(*b)) is overlap
    assert Window(*b).overlaps(Window(*a)) is overlap


def test_windows_are_hashable_and_ordered_by_start() -> None:
    assert len({Window(0, 10), Window(0, 10), Window(5, 15)}) == 2
    assert sorted([Window(5, 15), Window(0, 10)])[0] == Window(0, 10)
