"""Watermarks: per partition, the minimum over partitions, idleness, monotonicity."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from headrace.windows.watermark import Watermarks, is_closed
from headrace.windows.window import Window

MS = 1000  # times are microseconds


def test_a_partition_watermark_is_its_latest_event_minus_the_lateness() -> None:
    wm = Watermarks(allowed_lateness=3.0)
    assert wm.observe(0, 10_000 * MS, now=0) == 7_000 * MS
    assert wm.observe(0, 8_000 * MS, now=0) == 7_000 * MS  # out of order: the max stays
    assert wm.observe(0, 12_000 * MS, now=0) == 9_000 * MS
    assert wm.partition_watermark(0) == 9_000 * MS
    assert wm.max_us(0) == 12_000 * MS
    assert wm.partition_watermark(5) is None


def test_the_worker_watermark_is_the_minimum_over_partitions() -> None:
    wm = Watermarks()
    for p in (0, 1, 2):
        wm.assign(p)
    wm.observe(0, 50_000 * MS, now=0)
    wm.observe(1, 20_000 * MS, now=0)
    assert wm.observe(2, 90_000 * MS, now=0) == 20_000 * MS
    assert wm.observe(1, 60_000 * MS, now=0) == 50_000 * MS


def test_an_assigned_partition_holds_everything_back_until_it_delivers() -> None:
    wm = Watermarks()
    wm.assign(0)
    wm.assign(1)
    assert wm.observe(0, 50_000 * MS, now=0) is None
    assert wm.observe(1, 10_000 * MS, now=0) == 10_000 * MS


def test_an_idle_partition_stops_holding_the_watermark_back() -> None:
    wm = Watermarks(idle_timeout=30)
    wm.observe(0, 10_000 * MS, now=100)
    wm.observe(1, 80_000 * MS, now=100)
    assert wm.current == 10_000 * MS
    assert wm.refresh(now=130) == 10_000 * MS  # exactly the timeout: not yet "longer than"
    wm.observe(1, 90_000 * MS, now=125)
    assert wm.refresh(now=130.5) == 90_000 * MS  # partition 0 quiet for 30.5 s
    assert wm.idle == {0}


def test_a_partition_that_never_delivers_idles_out_from_its_assignment() -> None:
    wm = Watermarks(idle_timeout=10)
    wm.assign(0)
    wm.refresh(now=0)  # starts its idle clock
    wm.observe(1, 5_000 * MS, now=0)
    assert wm.current is None
    assert wm.refresh(now=10.5) == 5_000 * MS
    assert wm.idle == {0, 1}  # both quiet now: the most advanced one counts


def test_when_every_partition_is_idle_the_most_advanced_one_counts() -> None:
    wm = Watermarks(allowed_lateness=1, idle_timeout=5)
    wm.observe(0, 10_000 * MS, now=0)
    wm.observe(1, 40_000 * MS, now=0)
    assert wm.current == 9_000 * MS
    assert wm.refresh(now=6) == 39_000 * MS


def test_a_partition_that_delivers_again_counts_again_but_the_watermark_never_goes_back() -> None:
    wm = Watermarks(idle_timeout=5)
    wm.observe(0, 10_000 * MS, now=0)
    wm.observe(1, 40_000 * MS, now=4)
    assert wm.refresh(now=6) == 40_000 * MS  # 0 idle
    assert wm.observe(0, 12_000 * MS, now=7) == 40_000 * MS  # 0 active again, behind: no step back
    wm.observe(1, 60_000 * MS, now=8)
    assert wm.current == 40_000 * MS  # held by partition 0 (12 s) and clamped to 40 s
    assert wm.observe(0, 70_000 * MS, now=9) == 60_000 * MS


def test_without_an_idle_timeout_a_quiet_partition_holds_forever() -> None:
    wm = Watermarks()
    wm.observe(0, 1_000 * MS, now=0)
    wm.observe(1, 9_000 * MS, now=0)
    assert wm.refresh(now=10**9) == 1_000 * MS


def test_a_restored_partition_resumes_its_position_and_starts_active() -> None:
    wm = Watermarks(allowed_lateness=2, idle_timeout=10)
    wm.assign(3, max_us=50_000 * MS)
    wm.assign(4, max_us=70_000 * MS)
    assert wm.current is None  # not until the others are back too
    assert wm.refresh(now=1000) == 48_000 * MS
    assert wm.idle == set()
    wm.forget(3)
    assert wm.partitions == [4]
    assert wm.refresh(now=1001) == 68_000 * MS


def test_a_partition_first_seen_late_does_not_pull_the_watermark_back() -> None:
    wm = Watermarks()
    wm.observe(0, 50_000 * MS, now=0)
    assert (
        wm.observe(1, 20_000 * MS, now=0) == 50_000 * MS
    )  # assign partitions up front to avoid this


Steps = list[tuple[int, int, float]]
steps = st.lists(st.tuples(st.integers(0, 3), st.integers(0, 10_000), st.floats(0, 5)), max_size=60)


@settings(max_examples=50, deadline=None)
@given(steps, st.integers(0, 2_000))
def test_without_idleness_the_watermark_is_the_minimum_over_partitions(
    events: Steps, lateness: int
) -> None:
    wm = Watermarks(allowed_lateness=lateness / 10**6)
    for p in range(4):
        wm.assign(p)
    latest: dict[int, int] = {}
    for partition, t, _ in events:
        latest[partition] = max(latest.get(partition, t), t)
        expected = min(latest.values()) - lateness if len(latest) == 4 else None
        assert wm.observe(partition, t, now=0) == expected


@settings(max_examples=50, deadline=None)
@given(steps, st.integers(0, 2_000))
def test_with_idleness_the_watermark_still_never_goes_back(events: Steps, lateness: int) -> None:
    wm = Watermarks(allowed_lateness=lateness / 10**6, idle_timeout=2.0)
    now = 0.0
    last: int | None = None
    for partition, t, step in events:
        now += step
        for current in (wm.refresh(now), wm.observe(partition, t, now)):
            if last is not None:
                assert current is not None and current >= last
            last = current
            # Never ahead of the most advanced partition.
            top = max(m for p in wm.partitions if (m := wm.max_us(p)) is not None)
            assert current is None or current <= top - lateness


def test_invalid_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="allowed_lateness"):
        Watermarks(allowed_lateness=-1)
    with pytest.raises(ValueError, match="idle_timeout"):
        Watermarks(idle_timeout=0)


def test_a_window_closes_when_the_watermark_reaches_its_end_plus_the_grace() -> None:
    w = Window(0, 10_000)
    assert not is_closed(w, None, 0)
    assert not is_closed(w, 9_999, 0)
    assert is_closed(w, 10_000, 0)
    assert not is_closed(w, 11_999, 2_000)
    assert is_closed(w, 12_000, 2_000)
