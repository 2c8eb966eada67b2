"""Events at and around window bounds land where exact arithmetic puts them.

Event times here are microsecond timestamps, not aligned to milliseconds, as a Kafka
timestamp, an ISO 8601 string or a JSON number gives them: a decimal ``u / 10**6`` s,
carried as the nearest float. Mostly at today's epoch (``1.7e9`` s, where a float steps by
0.24 µs), also near 0, before the epoch and just below ``2**33`` s (the year 2242, where
floats step by 0.95 µs, the coarsest at which distinct microseconds stay distinct floats).
Sizes, hops, offsets and gaps are whole microseconds too.

The reference recomputes every window in plain Python with :class:`~fractions.Fraction`
on those decimals, in seconds: no float, no integer time unit. Its windows are the
definitions, on the event times as given:

* tumbling and hopping: ``[offset + k * hop, offset + k * hop + size)`` holds ``t`` when
  ``start <= t < end``;
* sliding: for each event time ``t`` of a key, the key's events ``t'`` with
  ``t - size < t' <= t``. On microsecond times, that is the half-open
  ``[t - size + 1 µs, t + 1 µs)``, which is what the output shows as its bounds;
* session: a key's events in time order, each less than ``gap`` after the one before,
  form one session ``[first, last + gap)``.

Compared: every window handed out (key and bounds), which events it holds (their ids), and
its count, mean and max.
"""

from __future__ import annotations

import math
from collections import defaultdict
from fractions import Fraction
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from headrace.record import Record
from headrace.windows.aggregators import Aggregator, Count, LastN, Max, Mean
from headrace.windows.assigners import Assigner, Hopping, Session, Sliding, Tumbling
from headrace.windows.operator import WindowOperator, WindowResult

US = 10**6
EPOCH_US = 1_700_000_000 * US  # today's epoch, where a float's step is 0.24 us
LATE_US = 8_589_934_000 * US  # just below 2**33 s, where it is 0.95 us
MAX_EVENTS = 14
FEATURES: dict[str, tuple[str | None, Aggregator[Any]]] = {
    "n": (None, Count()),
    "mean": ("x", Mean()),
    "max": ("x", Max()),
    "ids": ("i", LastN(MAX_EVENTS)),
}

Event = tuple[str, int, int]  # key, event time (integer microseconds), x
# (key, start, end) -> count, mean, max, the ids of the events in it (their index)
Windows = dict[tuple[str, float, float], tuple[int, float, int, list[int]]]


def seconds(us: int) -> float:
    """The float a decimal timestamp of ``us`` microseconds parses to (int / int is
    correctly rounded, as JSON and ``datetime.timestamp`` are)."""
    return us / US


def operator(assigner: Assigner, **kw: Any) -> WindowOperator:
    return WindowOperator(assigner, FEATURES, "k", **kw)


def rec(key: str, t: float, x: int = 0, offset: int = 0) -> Record:
    return Record(
        key=None,
        value={"k": key, "x": x, "i": offset},
        event_time=t,
        topic="in",
        partition=0,
        offset=offset,
    )


def run(assigner: Assigner, events: list[Event]) -> Windows:
    """Every window the operator hands out, all events on time (a day of lateness)."""
    op = operator(assigner, allowed_lateness=86_400)
    records = [rec(k, seconds(u), x, i) for i, (k, u, x) in enumerate(events)]
    closed, rejected = op.add(records, now=0)
    assert rejected == []
    results: list[WindowResult] = closed + op.flush()
    out = {(r.key, r.window.start, r.window.end): result(r) for r in results}
    assert len(out) == len(results)  # no window handed out twice
    return out


def result(r: WindowResult) -> tuple[int, float, int, list[int]]:
    f = r.features
    return r.count, f["mean"], f["max"], sorted(f["ids"])


# -- the reference: exact arithmetic on the decimal event times, in seconds ------------------


def exact(us: int) -> Fraction:
    return Fraction(us, US)


def reference(assigner: Assigner, spec: tuple[int, ...], events: list[Event]) -> Windows:
    """Which windows each event lands in, and each window's count, mean, max and ids.
    ``spec`` is the assigner's configuration in microseconds (size, hop, offset; or gap)."""
    members: dict[tuple[str, Fraction, Fraction], list[tuple[int, int]]] = defaultdict(list)
    by_key: dict[str, list[tuple[Fraction, int, int]]] = defaultdict(list)
    for i, (key, u, x) in enumerate(events):
        by_key[key].append((exact(u), x, i))
    for key, evs in by_key.items():
        if isinstance(assigner, Tumbling | Hopping):
            size, hop, offset = (exact(v) for v in spec)
            for t, x, i in evs:
                j = math.floor((t - offset) / hop)  # the latest start at or before t
                while offset + j * hop + size > t:  # every start whose window holds t
                    start = offset + j * hop
                    assert start <= t < start + size
                    members[key, start, start + size].append((x, i))
                    j -= 1
        elif isinstance(assigner, Sliding):
            (size,) = (exact(v) for v in spec)
            for t in {t for t, _, _ in evs}:  # one window per event time: (t - size, t]
                inside = [(x, i) for t2, x, i in evs if t - size < t2 <= t]
                members[key, t - size + exact(1), t + exact(1)] = inside
        else:
            assert isinstance(assigner, Session)
            (gap,) = (exact(v) for v in spec)
            ordered = sorted(evs)
            run: list[tuple[Fraction, int, int]] = []
            for e in ordered:
                if run and not e[0] - run[-1][0] < gap:  # a gap or more: a new session
                    members[key, run[0][0], run[-1][0] + gap] = [(x, i) for _, x, i in run]
                    run = []
                run.append(e)
            members[key, run[0][0], run[-1][0] + gap] = [(x, i) for _, x, i in run]
    return {
        (key, float(start), float(end)): (
            len(xs),
            float(Fraction(sum(x for x, _ in xs), len(xs))),
            max(x for x, _ in xs),
            sorted(i for _, i in xs),
        )
        for (key, start, end), xs in members.items()
    }


def assert_same(got: Windows, expected: Windows) -> None:
    assert got.keys() == expected.keys()
    for w, (count, mean, top, ids) in expected.items():
        assert (got[w][0], got[w][2], got[w][3]) == (count, top, ids), (w, got[w], expected[w])
        assert got[w][1] == pytest.approx(mean, rel=1e-12), (w, got[w], expected[w])


# -- concrete cases --------------------------------------------------------------------------


def windows_of(op: WindowOperator, *events: tuple[float, int]) -> list[tuple[float, float, int]]:
    closed, rejected = op.add([rec("a", t, x, i) for i, (t, x) in enumerate(events)], now=0)
    assert rejected == []
    return [(r.window.start, r.window.end, r.count) for r in closed + op.flush()]


def test_an_event_0_3_ms_before_a_window_end_lands_in_that_window() -> None:
    op = operator(Tumbling(1))
    base = 1_700_000_000
    closed, rejected = op.add([rec("a", base + 0.5, 1), rec("a", base + 0.9997, 5)], now=0)
    assert (closed, rejected) == ([], [])  # the watermark (0.3 ms before the end) is not at it
    closed, rejected = op.add([rec("a", base + 0.25, 3), rec("a", base + 1.0, 100)], now=0)
    assert rejected == []  # the window is still open: 0.25 s is on time
    assert [(r.window.start, r.window.end, result(r)[:3]) for r in closed] == [
        (base, base + 1.0, (3, 3.0, 5))
    ]
    (last,) = op.flush()
    assert (last.window.start, result(last)[:3]) == (base + 1.0, (1, 100.0, 100))


def test_an_event_one_microsecond_before_a_window_end_lands_in_that_window() -> None:
    op = operator(Tumbling(10))
    assert windows_of(op, (1_700_000_009.999999, 1), (1_700_000_010.0, 2)) == [
        (1_700_000_000.0, 1_700_000_010.0, 1),
        (1_700_000_010.0, 1_700_000_020.0, 1),
    ]


def test_a_session_takes_an_event_less_than_the_gap_after_its_last() -> None:
    # 130.0001 - 100.0009 is 29.9992 s: one session, though the times' milliseconds
    # (100000 and 130000) are a whole gap apart.
    op = operator(Session(30))
    assert windows_of(op, (100.0009, 1), (130.0001, 2)) == [(100.0009, 160.0001, 2)]


def test_a_session_ends_a_gap_after_its_last_event_to_the_microsecond() -> None:
    op = operator(Session(30))
    assert windows_of(op, (100.000001, 1), (130.000001, 2), (130.000002, 3)) == [
        (100.000001, 130.000001, 1),  # exactly a gap: touching windows do not merge
        (130.000001, 160.000002, 2),
    ]
    op = operator(Session(30))
    assert windows_of(op, (100.000001, 1), (130.0, 2)) == [(100.000001, 160.0, 2)]


def test_a_sliding_window_holds_the_events_less_than_a_size_before_its_own() -> None:
    op = operator(Sliding(10))
    # The window of 110.0004 is (100.0004, 110.0004]: it holds 100.0005, not 100.0004.
    got = windows_of(op, (100.0004, 1), (100.0005, 2), (110.0004, 3))
    assert got == [
        (90.000401, 100.000401, 1),
        (90.000501, 100.000501, 2),
        (100.000401, 110.000401, 2),
    ]


def test_window_bounds_show_as_the_seconds_they_are() -> None:
    op = operator(Tumbling(10))
    assert windows_of(op, (12.5, 1)) == [(10.0, 20.0, 1)]  # not 10.000000000000002
    op = operator(Hopping(0.3, 0.1))
    assert [w[:2] for w in windows_of(op, (0.1 + 0.2, 1))] == [
        (0.1, 0.4),
        (0.2, 0.5),
        (0.3, 0.6),
    ]


def test_event_us_is_the_microsecond_whose_bound_is_at_or_before_the_time() -> None:
    from headrace.windows.window import event_us

    # 0.3 is a hair below 3/10 and 0.7 - 0.4 below 0.3: the first is the bound of 300,000
    # us (what a window starting there shows as its start), the second is before it.
    assert [event_us(t) for t in (0.3, 0.1 + 0.2, 0.7 - 0.4, -0.0000004, 1.0, 1)] == [
        300_000,
        300_000,
        299_999,
        -1,
        US,
        US,
    ]
    assert event_us(1.000001) == 1_000_001  # 1.000001 * 1e6 is 1000000.9999999999
    assert event_us(seconds(EPOCH_US + 999_999)) == EPOCH_US + 999_999  # 1 us before 1 s
    assert event_us(1_700_000_000.9999997) == EPOCH_US + 999_999  # never rounded up


@given(st.integers(-(2**33) * US + 1, 2**33 * US - 1))
def test_event_us_gives_back_every_microsecond_bound(us: int) -> None:
    from headrace.windows.window import event_us

    assert event_us(us / US) == us
    below = math.nextafter(us / US, -math.inf)
    assert event_us(below) == us - 1


@given(st.floats(-2.3e12, 2.3e12, allow_nan=False) | st.floats(-1e-3, 1e-3))
@example(2.0**33)
@example(-(2.0**33))
@example(2.0**33 - 2**-20)
@example(2.0**40 + 2**-12)  # floats step by 244 us here
def test_event_us_places_any_float_between_two_bounds(t: float) -> None:
    from headrace.windows.window import event_us

    u = event_us(t)
    assert u / US <= t < (u + 1) / US


@pytest.mark.parametrize("t", [2.4e12, -1e15, 1.7e15, 1e300])
def test_event_us_refuses_times_out_of_range(t: float) -> None:
    from headrace.windows.window import event_us

    with pytest.raises(OverflowError):
        event_us(t)


# -- the property ----------------------------------------------------------------------------

# Microseconds around a bound: just before, exactly at, just after; around the millisecond
# (where flooring to whole ms moved an event across a bound), and anywhere near.
NEAR = st.one_of(
    st.sampled_from([-1, 0, 1]),
    st.sampled_from([-1001, -1000, -999, -501, -500, -499, -2, 2, 499, 500, 501, 999, 1000]),
    st.integers(-1500, 1500),
)


@st.composite
def duration_us(draw: st.DrawFn) -> int:
    return draw(
        st.sampled_from([1, 2, 999, 1000, 1001, 300_000, 1_000_000, 2_500_000, 30_000_000])
        | st.integers(1, 3000)
        | st.integers(1, 3_000_000)
    )


@st.composite
def assigners(draw: st.DrawFn, kind: str) -> tuple[Assigner, tuple[int, ...]]:
    """An assigner and its configuration in integer microseconds (what the reference uses;
    the assigner gets it as float seconds, as configuration does)."""
    size = draw(duration_us())
    if kind == "tumbling":
        offset = draw(st.integers(0, size - 1))
        return Tumbling(seconds(size), seconds(offset)), (size, size, offset)
    if kind == "hopping":
        hop = draw(st.integers(max(1, size // 6), size))
        offset = draw(st.integers(0, hop - 1))
        return Hopping(seconds(size), seconds(hop), seconds(offset)), (size, hop, offset)
    if kind == "sliding":
        return Sliding(seconds(size)), (size,)
    return Session(seconds(size)), (size,)


@st.composite
def events_near_bounds(draw: st.DrawFn, kind: str, spec: tuple[int, ...]) -> list[Event]:
    """Events a few microseconds either side of window bounds, in any order."""
    events: list[tuple[str, int]] = []
    base = draw(st.sampled_from([EPOCH_US, LATE_US, 0, -7 * US, 3_600 * US]))
    base += draw(st.integers(0, US - 1))  # not on a whole second, nor a whole ms
    n = draw(st.integers(1, MAX_EVENTS))
    if kind in ("tumbling", "hopping"):
        size, hop, offset = spec
        first = base - (base - offset) % hop  # a window start
        for _ in range(n):
            bound = first + draw(st.integers(0, 4)) * hop
            if draw(st.booleans()):
                bound += size  # a window's end
            events.append((draw(st.sampled_from("ab")), bound + draw(NEAR)))
    else:
        # Each event a window size (or session gap) give or take a few us after another,
        # or next to it: where the windows the events define start and end.
        (span,) = spec
        u = base
        for _ in range(n):
            events.append((draw(st.sampled_from("ab")), u))
            u = draw(st.sampled_from([e[1] for e in events]))
            u += draw(st.sampled_from([0, span, 2 * span, -span])) + draw(NEAR)
    xs = draw(st.lists(st.integers(-1000, 1000), min_size=n, max_size=n))
    return draw(st.permutations([(k, u, x) for (k, u), x in zip(events, xs, strict=True)]))


KINDS = ["tumbling", "hopping", "sliding", "session"]


@pytest.mark.parametrize("kind", KINDS)
@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_windows_at_bounds_equal_an_exact_recomputation(kind: str, data: st.DataObject) -> None:
    assigner, spec = data.draw(assigners(kind))
    events = data.draw(events_near_bounds(kind, spec))
    assert_same(run(assigner, events), reference(assigner, spec, events))


@pytest.mark.parametrize(
    ("assigner", "spec", "times"),
    [
        # 29.9992 s apart, 30 s gap: one session (the ms of the two are 30 s apart)
        (Session(30), (30 * US,), [100_000_900, 130_000_100]),
        (Session(30), (30 * US,), [100_000_001, 130_000_001, 130_000_000]),
        (Session(0.001), (1000,), [5_000_999, 5_001_998, 5_002_998]),
        # the window of 110.0004 holds 100.0005 and not 100.0004
        (Sliding(10), (10 * US,), [100_000_400, 100_000_500, 110_000_400]),
        (Sliding(0.001), (1000,), [7_000_999, 7_001_998, 7_001_999]),
        (Hopping(0.002, 0.001), (2000, 1000, 0), [9_001_999, 9_002_000, 9_000_000]),
        (Tumbling(0.001), (1000, 1000, 0), [-1, 0, 999, 1000]),
    ],
)
def test_the_cases_exact_arithmetic_decides_at_the_microsecond(
    assigner: Assigner, spec: tuple[int, ...], times: list[int]
) -> None:
    for base in (0, EPOCH_US, LATE_US):
        events = [("a", base + u, i) for i, u in enumerate(times)]
        assert_same(run(assigner, events), reference(assigner, spec, events))


@settings(max_examples=200, deadline=None)
@given(
    size=duration_us(),
    lateness=st.sampled_from([0, 1, 300_000]) | st.integers(0, 2_000_000),
    grace=st.sampled_from([0, 1]) | st.integers(0, 1_000_000),
    ahead=NEAR,
    behind=NEAR,
    base=st.sampled_from([EPOCH_US, LATE_US, -7 * US]),
)
@example(size=US, lateness=0, grace=0, ahead=-300, behind=-500, base=EPOCH_US)
@example(
    size=US, lateness=0, grace=0, ahead=0, behind=-1, base=EPOCH_US
)  # the watermark at the end
@example(
    size=US, lateness=0, grace=0, ahead=0, behind=0, base=EPOCH_US
)  # an event at the watermark
def test_an_event_is_late_exactly_when_its_window_closed(
    size: int, lateness: int, grace: int, ahead: int, behind: int, base: int
) -> None:
    """After an event ``ahead`` us from a window's end (plus lateness and grace) moves the
    watermark, one ``behind`` us from that end is late iff the watermark, exactly, is at or
    past the end plus the grace."""
    end = base - base % size + size  # a tumbling window's end (us)
    op = operator(Tumbling(seconds(size)), allowed_lateness=seconds(lateness), grace=seconds(grace))
    first = end + lateness + grace + ahead
    op.add([rec("a", seconds(first))], now=0)
    later = end + behind
    _, rejected = op.add([rec("a", seconds(later))], now=0)
    s, lat, gr = exact(size), exact(lateness), exact(grace)
    watermark = exact(max(first, later)) - lat  # the later event may move it too
    own_end = math.floor(exact(later) / s) * s + s  # end of the later event's window
    assert bool(rejected) == (watermark >= own_end + gr)


@settings(max_examples=150, deadline=None)
@given(
    gap=duration_us(),
    lateness=st.sampled_from([0, 1]) | st.integers(0, 2_000_000),
    ahead=NEAR,
    behind=NEAR,
)
def test_a_session_event_is_late_exactly_when_its_own_session_would_have_closed(
    gap: int, lateness: int, ahead: int, behind: int
) -> None:
    """With nothing else open for the key, an event is late iff the watermark is at or past
    the end of the session it would open, ``t + gap``, exactly."""
    t = EPOCH_US + 123_457
    op = operator(Session(seconds(gap)), allowed_lateness=seconds(lateness))
    first = t + gap + lateness + ahead
    op.add([rec("other", seconds(first))], now=0)
    later = t + behind
    _, rejected = op.add([rec("a", seconds(later))], now=0)
    watermark = exact(max(first, later)) - exact(lateness)
    assert bool(rejected) == (watermark >= exact(later) + exact(gap))
