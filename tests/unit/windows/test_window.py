"""Window bounds and the microsecond time unit."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from headrace.windows.window import Window, event_us, to_seconds, to_us


@pytest.mark.parametrize(
    ("seconds", "us"),
    [
        (0.1 + 0.2, 300_000),  # 0.30000000000000004 s is 300,000 us, not 300,000.00000000006
        (1700000000.123456, 1700000000123456),
        (1700000010.0 - 10.0, 1700000000000000),
        (0.0000004, 0),
        (0.0000006, 1),
        (-1.5, -1_500_000),
        (1e-7 * 5, 0),  # half a microsecond: to even
        (30.0, 30_000_000),
    ],
)
def test_to_us_rounds_to_the_nearest_microsecond(seconds: float, us: int) -> None:
    assert to_us(seconds) == us


@given(st.integers(-(2**33) * 10**6 + 1, 2**33 * 10**6 - 1))
def test_microseconds_survive_the_round_trip_through_seconds(us: int) -> None:
    assert to_us(to_seconds(us)) == us
    assert event_us(to_seconds(us)) == us


@given(st.integers(-(10**9), 10**9), st.integers(0, 6))
def test_bounds_show_as_the_decimal_seconds_they_are(whole: int, digits: int) -> None:
    """A bound of whole seconds, ms or us shows as the float that decimal parses to: 10 s as
    ``10.0``, not ``10.000000000000002``."""
    us = whole * 10 ** (6 - digits)
    sign, n = "-" if us < 0 else "", abs(us)
    assert to_seconds(us) == float(f"{sign}{n // 10**6}.{n % 10**6:06d}")


def test_a_window_is_half_open() -> None:
    w = Window(to_us(10.0), to_us(20.0))
    assert (w.start, w.end) == (10.0, 20.0)
    assert w.contains(event_us(10.0))
    assert w.contains(event_us(19.999999))
    assert not w.contains(event_us(20.0))
    assert not w.contains(event_us(9.999999))


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
