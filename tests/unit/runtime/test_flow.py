"""FlowControl: counts of records and bytes in flight, and the watermarks that pause and
resume reading."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from headrace.runtime.flow import FlowControl

# -- construction --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_records": 0}, "record bound must be at least 1"),
        ({"max_records": -3}, "record bound must be at least 1"),
        ({"max_records": 10, "max_bytes": 0}, "byte bound must be at least 1"),
        ({"max_records": 10, "resume_at": 1.0}, r"resume_at must be in \[0, 1\)"),
        ({"max_records": 10, "resume_at": -0.1}, r"resume_at must be in \[0, 1\)"),
    ],
)
def test_invalid_bounds_are_rejected(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        FlowControl(**kwargs)


def test_resume_marks_are_the_fraction_of_each_bound() -> None:
    flow = FlowControl(max_records=10, max_bytes=1001, resume_at=0.3)
    assert (flow.resume_records, flow.resume_bytes) == (3, 300)
    flow = FlowControl(max_records=10, max_bytes=None)
    assert flow.resume_bytes is None


def test_an_empty_flow_is_below_low_and_not_over_high() -> None:
    flow = FlowControl(max_records=1, max_bytes=1, resume_at=0.0)
    assert flow.below_low and not flow.over_high
    assert flow.fraction() == 0.0


# -- the record bound and its hysteresis ---------------------------------------------------


def test_record_bound_pauses_at_the_high_mark_and_resumes_only_at_the_low_mark() -> None:
    """Between the marks the state does not flip: a flow that reached the bound is not
    below the low mark until it fell to ``resume_at`` of it."""
    flow = FlowControl(max_records=10, max_bytes=None, resume_at=0.5)
    flow.admit(9)
    assert not flow.over_high
    flow.admit(1)
    assert flow.over_high and not flow.below_low
    flow.release(1)  # 9: under the high mark, but far above the low one
    assert not flow.over_high and not flow.below_low
    flow.release(3)  # 6
    assert not flow.below_low
    flow.release(1)  # 5 == resume mark
    assert flow.below_low
    flow.release(5)
    assert flow.count == 0 and flow.below_low


def test_admission_never_blocks_and_may_go_past_the_bound() -> None:
    """The bound is a watermark: a source that keeps delivering is counted over it."""
    flow = FlowControl(max_records=4, max_bytes=None)
    flow.admit(3)
    flow.admit(50)
    assert flow.count == 53 and flow.over_high
    assert flow.fraction() == pytest.approx(53 / 4)


def test_resume_at_zero_resumes_only_when_empty() -> None:
    flow = FlowControl(max_records=10, max_bytes=100, resume_at=0.0)
    flow.admit(10, 10)
    flow.release(9, 9)
    assert not flow.below_low
    flow.release(1, 1)
    assert flow.below_low


# -- the byte bound ------------------------------------------------------------------------


def test_byte_bound_alone_reaches_the_high_mark() -> None:
    flow = FlowControl(max_records=1000, max_bytes=100, resume_at=0.5)
    flow.admit(2, 99)
    assert not flow.over_high
    flow.admit(1, 1)
    assert flow.over_high
    assert flow.fraction() == pytest.approx(1.0)


def test_below_low_needs_both_marks() -> None:
    """Few records that hold many bytes keep the flow paused, and so do many small ones."""
    flow = FlowControl(max_records=10, max_bytes=100, resume_at=0.5)
    flow.admit(2, 90)  # records at 2 (<= 5), bytes at 90 (> 50)
    assert not flow.below_low
    flow.release(1, 40)  # 1 record, 50 bytes
    assert flow.below_low
    flow.admit(7, 0)  # 8 records, 50 bytes
    assert not flow.below_low


def test_fraction_is_the_tighter_bound() -> None:
    flow = FlowControl(max_records=10, max_bytes=1000)
    flow.admit(2, 600)
    assert flow.fraction() == pytest.approx(0.6)
    flow.admit(6, 0)
    assert flow.fraction() == pytest.approx(0.8)


def test_peaks_keep_the_maxima_after_release() -> None:
    flow = FlowControl(max_records=100, max_bytes=10_000)
    flow.admit(30, 3000)
    flow.release(20, 100)
    flow.admit(5, 5000)  # bytes peak later than records
    assert (flow.peak, flow.peak_bytes) == (30, 7900)
    assert (flow.count, flow.bytes) == (15, 7900)


# -- waiting for the low mark --------------------------------------------------------------


async def test_wait_below_low_returns_at_once_when_already_low() -> None:
    flow = FlowControl(max_records=10, max_bytes=None)
    flow.admit(5)
    async with asyncio.timeout(1):
        await flow.wait_below_low()


async def test_wait_below_low_waits_for_releases_that_reach_the_low_mark() -> None:
    flow = FlowControl(max_records=10, max_bytes=None, resume_at=0.5)
    flow.admit(10)
    waiter = asyncio.create_task(flow.wait_below_low())
    await asyncio.sleep(0)
    flow.release(3)  # 7: a release, but not low enough
    for _ in range(5):
        await asyncio.sleep(0)
    assert not waiter.done()
    flow.release(2)  # 5: the low mark
    async with asyncio.timeout(1):
        await waiter


# -- random admit/release sequences --------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(
    max_records=st.integers(1, 50),
    max_bytes=st.one_of(st.none(), st.integers(1, 5000)),
    resume_at=st.sampled_from([0.0, 0.25, 0.5, 0.9, 0.99]),
    steps=st.lists(st.tuples(st.booleans(), st.integers(0, 20), st.integers(0, 400)), max_size=60),
)
def test_random_sequences_keep_counts_watermarks_and_peaks(
    max_records: int,
    max_bytes: int | None,
    resume_at: float,
    steps: list[tuple[bool, int, int]],
) -> None:
    """Any sequence of admits and releases (never releasing more than is in flight, and
    bytes only with records): the counts are the sums, ``over_high`` and ``below_low``
    follow their definitions, the peaks are the maxima seen."""
    flow = FlowControl(max_records, max_bytes, resume_at)
    count = nbytes = peak = peak_bytes = 0
    low_records = int(max_records * resume_at)
    low_bytes = int(max_bytes * resume_at) if max_bytes is not None else None
    for admit, n, b in steps:
        if n == 0:
            b = 0  # bytes come and go with records
        if admit:
            flow.admit(n, b)
            count, nbytes = count + n, nbytes + b
        else:
            n, b = min(n, count), min(b, nbytes)
            if n == count:
                b = nbytes  # the last records out take the last bytes with them
            flow.release(n, b)
            count, nbytes = count - n, nbytes - b
        peak, peak_bytes = max(peak, count), max(peak_bytes, nbytes)

        assert (flow.count, flow.bytes) == (count, nbytes)
        assert (flow.peak, flow.peak_bytes) == (peak, peak_bytes)
        over = count >= max_records or (max_bytes is not None and nbytes >= max_bytes)
        assert flow.over_high == over
        low = count == 0 or (count <= low_records and (low_bytes is None or nbytes <= low_bytes))
        assert flow.below_low == low
        # The marks never overlap: a flow is never both over the top and below the bottom.
        assert not (flow.over_high and flow.below_low)
        expected = count / max_records
        if max_bytes is not None:
            expected = max(expected, nbytes / max_bytes)
        assert flow.fraction() == pytest.approx(expected)
        assert (flow.fraction() >= 1) == over
