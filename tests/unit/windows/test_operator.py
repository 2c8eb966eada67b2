"""The window operator: closing by watermark, silent keys, late and invalid records,
snapshots, and the property that streaming equals a batch recomputation."""

from __future__ import annotations

import gc
import math
from collections import defaultdict
from collections.abc import Iterator, Sequence
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from headrace.record import FailedRecord, Record
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
from headrace.windows.assigners import Assigner, Hopping, Session, Sliding, Tumbling
from headrace.windows.features import Features
from headrace.windows.operator import POSITION_KEY, WindowOperator, WindowResult
from headrace.windows.store import NEVER
from headrace.windows.window import Window

US = 10**6


def rec(key: Any, t: float, partition: int = 0, offset: int = 0, **fields: Any) -> Record:
    return Record(
        key=None,
        value={"k": key, **fields},
        event_time=t,
        topic="in",
        partition=partition,
        offset=offset,
    )


def counting(assigner: Assigner, **kw: Any) -> WindowOperator:
    return WindowOperator(assigner, {"n": (None, Count()), "x": ("x", Sum())}, "k", **kw)


def summary(results: Sequence[WindowResult]) -> list[tuple[Any, float, float, int]]:
    return [(r.key, r.window.start, r.window.end, r.count) for r in results]


# -- closing ------------------------------------------------------------------------------


def test_windows_close_when_the_watermark_passes_their_end() -> None:
    op = counting(Tumbling(10))
    closed, _ = op.add([rec("a", 1), rec("b", 5), rec("a", 9.999)], now=0)
    assert closed == [] and op.live_states == 2
    closed, _ = op.add([rec("b", 10.0)], now=0)
    assert summary(closed) == [("a", 0.0, 10.0, 2), ("b", 0.0, 10.0, 1)]
    assert closed[0].features == {"n": 2, "x": 0.0}
    assert op.live_states == 1 and op.closed_count == 2
    assert op.watermark == 10.0


def test_lateness_and_grace_hold_windows_open() -> None:
    op = counting(Tumbling(10), allowed_lateness=2, grace=3)
    assert op.add([rec("a", 1), rec("a", 14.999)], now=0)[0] == []  # 12.999 < 10 + 3
    closed, _ = op.add([rec("a", 15.0)], now=0)  # watermark 13 = end + grace
    assert summary(closed) == [("a", 0.0, 10.0, 1)]


def test_a_key_that_falls_silent_is_scored_when_other_keys_move_event_time() -> None:
    op = counting(Tumbling(10))
    op.add([rec("quiet", 3), rec("busy", 4)], now=0)
    closed, _ = op.add([rec("busy", t) for t in (11, 15, 21)], now=0)
    assert ("quiet", 0.0, 10.0, 1) in summary(closed)


def test_a_key_alone_on_an_idle_partition_is_scored_once_the_partition_idles_out() -> None:
    op = counting(Tumbling(10), idle_timeout=30)
    op.assign_partitions([0, 1])
    op.add([rec("quiet", 3, partition=0), rec("busy", 4, partition=1)], now=100)
    closed, _ = op.add([rec("busy", 25, partition=1)], now=110)
    assert closed == []  # partition 0 (at 3 s) holds the watermark back
    assert op.advance(now=129) == []
    closed = op.advance(now=131)  # partition 0 quiet for 31 s > 30 s
    assert summary(closed) == [("quiet", 0.0, 10.0, 1), ("busy", 0.0, 10.0, 1)]
    assert op.watermark == 25.0


def test_a_quiet_stream_closes_what_its_partitions_have_passed() -> None:
    op = counting(Tumbling(10), idle_timeout=5)
    op.assign_partitions([0, 1])
    op.add([rec("a", 3, partition=0), rec("b", 12, partition=1)], now=0)
    assert summary(op.advance(now=6)) == [("a", 0.0, 10.0, 1)]  # the window [10, 20) waits
    assert op.live_states == 1


def test_an_assigned_partition_that_never_delivers_holds_windows_until_it_idles_out() -> None:
    op = counting(Tumbling(10), idle_timeout=10)
    op.assign_partitions([0, 1])
    assert op.add([rec("a", 3), rec("a", 30)], now=0) == ([], [])
    assert op.watermark is None
    assert summary(op.advance(now=11)) == [("a", 0.0, 10.0, 1)]


def test_results_from_several_partitions_come_out_by_window_end() -> None:
    op = counting(Session(5))
    op.assign_partitions([0, 1])
    op.add([rec("a", 0, partition=0), rec("b", 1, partition=1), rec("a", 3, partition=0)], now=0)
    closed, _ = op.add([rec("x", 100, partition=0), rec("y", 100, partition=1)], now=0)
    assert [(r.key, r.window.end, r.partition) for r in closed] == [("b", 6.0, 1), ("a", 8.0, 0)]


def test_to_dict_carries_key_bounds_count_and_features() -> None:
    r = WindowResult("a", Window(0, 10_000_000), 2, {"n": 2}, 3)
    assert r.to_dict() == {
        "key": "a",
        "window": {"start": 0.0, "end": 10.0},
        "count": 2,
        "features": {"n": 2},
        "partition": 3,
    }


# -- kinds of windows ----------------------------------------------------------------------


def test_hopping_windows_each_get_the_event() -> None:
    op = counting(Hopping(10, 5))
    closed = op.add([rec("a", 7, x=1), rec("a", 12, x=2)], now=0)[0] + op.flush()
    assert [(r.window.start, r.count, r.features["x"]) for r in closed] == [
        (0.0, 1, 1.0),
        (5.0, 2, 3.0),
        (10.0, 1, 2.0),
    ]


def test_sliding_windows_end_at_each_event() -> None:
    op = counting(Sliding(3))
    closed = op.add([rec("a", t, x=t) for t in (1, 2, 5, 5, 8)], now=0)[0] + op.flush()
    assert [(r.window.end, r.count, r.features["x"]) for r in closed] == [
        (1.000001, 1, 1.0),  # (-2, 1]
        (2.000001, 2, 3.0),  # (-1, 2]
        (5.000001, 2, 10.0),  # (2, 5]: the two events at 5 share one window
        (8.000001, 1, 8.0),  # (5, 8]: an event exactly size before is out
    ]
    assert op.live_states == 0


def test_sliding_windows_close_one_by_one_and_panes_expire() -> None:
    op = counting(Sliding(3))
    assert op.add([rec("a", 1)], now=0)[0] == []
    assert [r.window.end for r in op.add([rec("a", 2)], now=0)[0]] == [1.000001]
    closed, _ = op.add([rec("a", 3.5)], now=0)
    assert [(r.window.end, r.count) for r in closed] == [(2.000001, 2)]
    assert op.live_states == 3  # the pane at 1 s is still in the window ending at 3.5 s
    closed, _ = op.add([rec("b", 4.5)], now=0)
    assert [(r.window.end, r.count) for r in closed] == [(3.500001, 3)]  # (0.5 s, 3.5 s]
    assert op.live_states == 3  # the pane at 1 s went (no window can reach it), b's came


def test_an_event_between_two_sessions_joins_them() -> None:
    op = counting(Session(6), allowed_lateness=20)
    op.add([rec("a", 0, x=1), rec("a", 10, x=2)], now=0)
    assert op.live_states == 2
    op.add([rec("a", 5, x=4)], now=0)  # less than 6 s from both
    assert op.live_states == 1
    (r,) = op.flush()
    assert (r.window.start, r.window.end, r.count, r.features["x"]) == (0.0, 16.0, 3, 7.0)


def test_an_event_exactly_a_gap_after_the_last_starts_a_new_session() -> None:
    op = counting(Session(5), allowed_lateness=10)
    op.add([rec("a", 0), rec("a", 5), rec("b", 0), rec("b", 4.999999)], now=0)
    assert summary(op.flush()) == [
        ("a", 0.0, 5.0, 1),
        ("b", 0.0, 9.999999, 2),
        ("a", 5.0, 10.0, 1),
    ]


# -- late and invalid records --------------------------------------------------------------


def test_late_records_come_back_with_the_reason_and_are_counted() -> None:
    op = counting(Tumbling(10), allowed_lateness=1, grace=2)
    op.add([rec("a", 1), rec("a", 13)], now=0)  # watermark 12 = end + grace: [0, 10) closed
    closed, rejected = op.add([rec("a", 9.5, offset=7), rec("a", 11.0)], now=0)
    assert closed == []
    assert [(r.record.offset, r.reason) for r in rejected] == [(7, "late")]
    assert "event time 9.5 is behind the watermark 12.0" in rejected[0].detail
    assert op.late_count == 1
    failed = rejected[0].to_failed()
    assert isinstance(failed, FailedRecord)
    assert (failed.stage, failed.error_type) == ("window", "late")


def test_within_the_grace_a_record_behind_the_watermark_still_counts() -> None:
    op = counting(Tumbling(10), grace=5)
    op.add([rec("a", 1), rec("a", 13)], now=0)
    _, rejected = op.add([rec("a", 2)], now=0)
    assert rejected == []
    assert summary(op.flush())[0] == ("a", 0.0, 10.0, 2)


def test_a_hopping_record_late_for_some_windows_goes_to_the_open_ones() -> None:
    op = counting(Hopping(10, 5))
    op.add([rec("a", 1), rec("b", 11)], now=0)  # watermark 11: [0, 10) closed
    _, rejected = op.add([rec("a", 7)], now=0)  # in [0, 10) and [5, 15)
    assert rejected == []
    assert ("a", 5.0, 15.0, 1) in summary(op.flush())


@pytest.mark.parametrize(
    ("assigner", "late_at"),
    [(Session(5), 4.0), (Sliding(10), 19.999999), (Hopping(10, 5), 9.999999)],
)
def test_every_kind_of_window_reports_late_records(assigner: Assigner, late_at: float) -> None:
    op = counting(assigner)
    op.add([rec("a", 20)], now=0)
    _, rejected = op.add([rec("a", late_at)], now=0)
    assert [r.reason for r in rejected] == ["late"]


def test_records_after_a_flush_are_late() -> None:
    op = counting(Tumbling(10))
    op.add([rec("a", 1)], now=0)
    assert len(op.flush()) == 1
    assert [r.reason for r in op.add([rec("a", 100)], now=0)[1]] == ["late"]


@pytest.mark.parametrize(
    ("record", "detail", "reason"),
    [
        (
            Record(key=None, value="text", event_time=1.0, topic="in", partition=0, offset=0),
            "the record value is a string, not an object",
            "not-an-object",
        ),
        (
            Record(key=None, value={"x": 1}, event_time=1.0, topic="in", partition=0, offset=0),
            "no key field 'k'",
            "missing-field",
        ),
        (
            Record(key=None, value={"k": ["a"]}, event_time=1.0, topic="in", partition=0, offset=0),
            "the key ['a'] is an array",
            "wrong-type",
        ),
        (
            Record(
                key=None,
                value={"k": "a", "x": "1"},
                event_time=1.0,
                topic="in",
                partition=0,
                offset=0,
            ),
            "holds '1', not a number",
            "wrong-type",
        ),
        (
            Record(
                key=None, value={"k": "a"}, event_time=math.nan, topic="in", partition=0, offset=0
            ),
            "event_time holds nan",
            "wrong-type",
        ),
        (
            Record(
                key=None, value={"k": "a"}, event_time=math.inf, topic="in", partition=0, offset=0
            ),
            "event_time holds inf",
            "wrong-type",
        ),
        # A microsecond timestamp read as seconds: beyond the year 75,000.
        (
            Record(
                key=None, value={"k": "a"}, event_time=1.7e15, topic="in", partition=0, offset=0
            ),
            "out of range",
            "invalid-time",
        ),
        (
            Record(
                key=None, value={"k": "a"}, event_time=-1e300, topic="in", partition=0, offset=0
            ),
            "out of range",
            "invalid-time",
        ),
    ],
)
def test_records_that_cannot_be_placed_are_invalid(
    record: Record, detail: str, reason: str
) -> None:
    op = counting(Tumbling(10))
    _, rejected = op.add([record], now=0)
    assert [r.reason for r in rejected] == [reason]
    assert rejected[0].to_failed().error_type == reason
    assert detail in rejected[0].detail
    assert op.invalid_count == 1 and op.live_states == 0


@pytest.mark.parametrize("t", [None, "12", True, math.nan])
def test_a_time_field_must_hold_seconds(t: Any) -> None:
    op = WindowOperator(Tumbling(10), {"n": (None, Count())}, "k", time_source="ts")
    _, rejected = op.add([rec("a", 0, ts=t)], now=0)
    assert "field 'ts' holds" in rejected[0].detail


@pytest.mark.parametrize("t", [10**400, -(10**20), 2.4e12])
def test_a_time_out_of_range_is_an_invalid_time(t: float) -> None:
    op = WindowOperator(Tumbling(10), {"n": (None, Count())}, "k", time_source="ts")
    _, rejected = op.add([rec("a", 0, ts=t)], now=0)
    assert [r.reason for r in rejected] == ["invalid-time"]
    assert "out of range for seconds since the epoch" in rejected[0].detail
    assert op.invalid_count == 1 and op.live_states == 0 and op.watermark is None


def test_time_and_key_can_come_from_the_value_or_the_record() -> None:
    by_field = WindowOperator(Tumbling(10), {"n": (None, Count())}, "k", time_source="ts")
    by_field.add([rec("a", 999.0, ts=15)], now=0)
    assert summary(by_field.flush()) == [("a", 10.0, 20.0, 1)]
    by_record = WindowOperator(Tumbling(10), {"n": (None, Count())})
    by_record.add(
        [
            Record(
                key=b"entity-1", value={"v": 1}, event_time=3.0, topic="in", partition=0, offset=0
            )
        ],
        now=0,
    )
    assert summary(by_record.flush()) == [(b"entity-1", 0.0, 10.0, 1)]


def test_an_invalid_record_changes_no_state() -> None:
    op = WindowOperator(
        Tumbling(10), {"n": (None, Count()), "s": ("x", Sum()), "m": ("y", Max())}, "k"
    )
    op.add([rec("a", 1, x=1, y=1)], now=0)
    _, rejected = op.add([rec("a", 2, x=5, y="oops")], now=0)
    assert rejected and op.flush()[0].features == {"n": 1, "s": 1.0, "m": 1}


# -- user-defined aggregators ---------------------------------------------------------------


class Range:
    """Largest minus smallest: a user-defined aggregator, by the protocol alone."""

    numeric = True

    def init(self) -> list[float] | None:
        return None

    def add(self, state: list[float] | None, value: float, at: int) -> list[float]:
        return [value, value] if state is None else [min(state[0], value), max(state[1], value)]

    def merge(self, a: list[float] | None, b: list[float] | None) -> list[float] | None:
        if a is None or b is None:
            return a if b is None else list(b)
        return [min(a[0], b[0]), max(a[1], b[1])]

    def result(self, state: list[float] | None) -> float | None:
        return None if state is None else state[1] - state[0]

    def dump(self, state: list[float] | None) -> Any:
        return state

    def load(self, data: Any) -> list[float] | None:
        return data


def test_a_user_defined_aggregator_merges_snapshots_and_is_type_checked() -> None:
    def make() -> WindowOperator:
        return WindowOperator(Session(5), {"range": ("x", Range())}, "k", allowed_lateness=10)

    a = make()
    a.add([rec("k", 0, x=3), rec("k", 8, x=10)], now=0)  # two sessions
    b = make()
    b.restore(0, a.snapshot(0))
    _, rejected = b.add([rec("k", 4, x=-1), rec("k", 5, x="high")], now=0)  # joins them
    assert [r.reason for r in rejected] == ["wrong-type"]
    assert [(r.window.end, r.features) for r in b.flush()] == [(13.0, {"range": 11})]


# -- snapshots -----------------------------------------------------------------------------


def test_snapshot_and_restore_carry_state_and_watermark_position() -> None:
    a = counting(Tumbling(10), allowed_lateness=2)
    a.add([rec("k1", 3, x=1), rec("k2", 11, x=2)], now=0)
    data = a.snapshot(0)
    b = counting(Tumbling(10), allowed_lateness=2)
    b.restore(0, data)
    assert b.live_states == a.live_states == 2
    assert b.watermark is None  # until the next call: other partitions may be restored yet
    assert b.add([rec("k1", 5, x=10)], now=0) == a.add([rec("k1", 5, x=10)], now=0)
    assert b.watermark == a.watermark == 9.0
    assert b.add([rec("k1", 13, x=1)], now=0) == a.add([rec("k1", 13, x=1)], now=0)
    assert b.flush() == a.flush()


def test_a_restored_sliding_window_that_had_closed_is_not_handed_out_again() -> None:
    a = counting(Sliding(10))
    closed = a.add([rec("k", 1), rec("k", 2)], now=0)[0]
    assert summary(closed) == [("k", -8.999999, 1.000001, 1)]
    b = counting(Sliding(10))
    b.restore(0, a.snapshot(0))  # the pane at 1 s stays: the window ending at 2 s needs it
    assert summary(b.add([rec("k", 3)], now=0)[0]) == [("k", -7.999999, 2.000001, 2)]


def test_a_restored_partition_keeps_refusing_what_it_had_closed() -> None:
    a = counting(Tumbling(10), idle_timeout=5)
    a.assign_partitions([0, 1])
    a.add([rec("k", 3, partition=0), rec("k", 50, partition=1)], now=0)
    closed, _ = a.add([rec("k", 51, partition=1)], now=10)  # partition 0 idled out
    assert ("k", 0.0, 10.0, 1) in summary(closed)
    b = counting(Tumbling(10), idle_timeout=5)
    b.restore(0, a.snapshot(0))  # alone, partition 0's own watermark (3 s) would take it
    _, rejected = b.add([rec("k", 8, partition=0)], now=20)
    assert [r.reason for r in rejected] == ["late"]


def test_restore_refuses_snapshots_of_other_windows_or_features() -> None:
    op = counting(Tumbling(10))
    op.add([rec("a", 1)], now=0)
    data = op.snapshot(0)
    with pytest.raises(ValueError, match="the state holds fixed windows, this operator session"):
        counting(Session(5)).restore(0, data)
    other = WindowOperator(Tumbling(10), {"n": (None, Count())}, "k")
    with pytest.raises(ValueError, match=r"the state's features \['n', 'x'\] differ from \['n'\]"):
        other.restore(0, data)
    with pytest.raises(KeyError):
        op.snapshot(9)


def test_revoke_hands_the_partition_over() -> None:
    op = counting(Tumbling(10))
    op.assign_partitions([0, 1])
    op.add([rec("a", 1, partition=1)], now=0)
    data = op.revoke(1)
    assert op.partitions == [0] and op.live_states == 0
    other = counting(Tumbling(10))
    other.restore(1, data)
    assert summary(other.flush()) == [("a", 0.0, 10.0, 1)]


# -- memory --------------------------------------------------------------------------------


def long_run(assigner: Assigner, seconds: int, keys: int = 30) -> tuple[int, int, int]:
    """Feed ``keys`` keys an event a second each (bursts of 10 s, quiet for 10 s, so that
    sessions end) for ``seconds`` of event time, a little out of order; the most live
    states and scheduled timers seen, and the windows closed."""
    op = counting(assigner, allowed_lateness=2)
    most_live = most_timers = closed = 0
    for s in range(seconds):
        if s % 20 >= 10:
            batch = [rec(f"k{k}", s + 0.5, x=1) for k in range(0, keys, 10)]  # a few keys
        else:
            batch = [
                rec(f"k{k}", s + (k % 7) / 10 - (0.9 if k % 3 else 0), x=1) for k in range(keys)
            ]
        out, rejected = op.add(batch, now=0)
        assert rejected == []
        closed += len(out)
        most_live = max(most_live, op.live_states)
        store: Any = op._stores[0]
        timers = sum(
            len(v) for k, v in vars(store).items() if k in ("schedule", "closing", "expiring")
        )
        most_timers = max(most_timers, timers)
    return most_live, most_timers, closed


@pytest.mark.parametrize(
    "assigner", [Tumbling(10), Hopping(10, 2), Sliding(5), Session(3)], ids=repr
)
def test_live_state_stays_flat_as_windows_close(assigner: Assigner) -> None:
    short = long_run(assigner, 100)
    long = long_run(assigner, 400)
    assert long[2] > 3 * short[2]  # many more windows closed...
    assert long[0] == short[0]  # ...with no more state live at any time
    assert long[1] == short[1]  # ...nor timers waiting
    assert short[0] <= 30 * 20  # bounded by keys x windows (or panes) open per key


# -- streaming equals batch ----------------------------------------------------------------

FEATURES = Features(
    {
        "n": (None, Count()),
        "n_x": ("x", Count()),
        "sum": ("x", Sum()),
        "mean": ("x", Mean()),
        "min": ("x", Min()),
        "max": ("x", Max()),
        "std": ("x", Std()),
        "pstd": ("x", Std(ddof=0)),
        "first": ("x", First()),
        "last": ("x", Last()),
        "distinct": ("kind", DistinctCount(exact_up_to=3, precision=4)),
        "kinds": ("kind", CountsByType(max_types=2)),
        "vocab": ("kind", CountsByType(types=["a", "b"])),
        "recent": ("kind", LastN(3)),
    }
)

Event = tuple[int, Any, int, dict[str, Any]]  # partition, key, event time (us), value


KINDS = ["tumbling", "hopping", "sliding", "session"]


@st.composite
def assigners(draw: st.DrawFn, kind: str) -> Assigner:
    size = draw(st.integers(1, 40)) * 100_000  # us, 0.1 s to 4 s
    if kind == "tumbling":
        return Tumbling(size / US)
    if kind == "hopping":
        # At most 8 windows per event: more only slows the test down.
        hop = draw(st.integers(max(1, size // 800_000), size // 100_000)) * 100_000
        return Hopping(size / US, hop / US)
    if kind == "sliding":
        return Sliding(size / US)
    return Session(size / US)


@st.composite
def streams(draw: st.DrawFn) -> tuple[list[Event], int]:
    """Events of 1-3 partitions, each partition in event-time order and then shuffled
    within ``lateness`` us (each event delayed by up to that much), partitions
    interleaved at random; and the lateness. Times step by whole ms or any us."""
    lateness = draw(st.integers(0, 3000).map(lambda ms: ms * 1000) | st.integers(0, 3_000_000))
    value = st.fixed_dictionaries(
        {},
        optional={
            "x": st.one_of(st.integers(-50, 50), st.floats(-100, 100, allow_nan=False)),
            "kind": st.sampled_from("abcde"),
        },
    )
    per_partition: list[list[Event]] = []
    for p in range(draw(st.integers(1, 3))):
        t = draw(st.integers(0, 5_000_000))
        delayed = []
        for i in range(draw(st.integers(0, 40))):
            t += draw(st.integers(0, 1500).map(lambda ms: ms * 1000) | st.integers(0, 1_500_000))
            delay = draw(st.integers(0, lateness))
            event = (p, draw(st.sampled_from("uvw")), t, draw(value))
            delayed.append((t + delay, i, event))
        per_partition.append([e for _, _, e in sorted(delayed)])
    order = draw(st.permutations([p for p, events in enumerate(per_partition) for _ in events]))
    cursors = [iter(events) for events in per_partition]
    return [next(cursors[p]) for p in order], lateness


def batch(assigner: Assigner, events: list[Event]) -> dict[Any, tuple[int, dict[str, Any]]]:
    """Every window's count and features, computed from the whole input at once: per
    partition and key, the events in event-time order (ties in arrival order)."""
    by_key: dict[tuple[int, Any], list[tuple[int, dict[str, Any]]]] = defaultdict(list)
    for p, key, t, value in events:
        by_key[p, key].append((t, value))
    out = {}
    for (p, key), evs in by_key.items():
        evs.sort(key=lambda e: e[0])
        windows: dict[Window, list[tuple[int, dict[str, Any]]]] = defaultdict(list)
        if isinstance(assigner, Session):
            run: list[tuple[int, dict[str, Any]]] = []
            for e in evs:
                if run and e[0] - run[-1][0] >= assigner.gap_us:
                    windows[Window(run[0][0], run[-1][0] + assigner.gap_us)] = run
                    run = []
                run.append(e)
            if run:
                windows[Window(run[0][0], run[-1][0] + assigner.gap_us)] = run
        elif isinstance(assigner, Sliding):
            for t in sorted({t for t, _ in evs}):
                w = assigner.window_at(t)
                windows[w] = [e for e in evs if w.contains(e[0])]
        else:
            for e in evs:
                for w in assigner.assign(e[0]):
                    windows[w].append(e)
        for w, members in windows.items():
            states = FEATURES.init()
            for t, value in members:
                extracted = FEATURES.extract(value)
                assert isinstance(extracted, list), extracted
                FEATURES.add(states, extracted, t)
            out[p, key, w] = (len(members), FEATURES.result(states))
    return out


def same(a: Any, b: Any) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return bool(a == pytest.approx(b, rel=1e-9, abs=1e-9))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def batches(events: list[Event], sizes: list[int]) -> Iterator[list[Record]]:
    records = [
        Record(
            key=None,
            value={"k": key, **value},
            event_time=t / US,
            topic="in",
            partition=p,
            offset=i,
        )
        for i, (p, key, t, value) in enumerate(events)
    ]
    i = 0
    for size in [*sizes, len(records)]:
        if i >= len(records):
            return
        yield records[i : i + size]
        i += size


def operator(assigner: Assigner, lateness: int, grace: int) -> WindowOperator:
    op = WindowOperator(assigner, FEATURES, "k", allowed_lateness=lateness / US, grace=grace / US)
    op.assign_partitions(range(3))
    return op


@pytest.mark.parametrize("kind", KINDS)
@settings(max_examples=20, deadline=None)
@given(data=st.data())
def test_streaming_results_equal_a_batch_recomputation(kind: str, data: st.DataObject) -> None:
    assigner = data.draw(assigners(kind))
    events, lateness = data.draw(streams())
    grace = data.draw(st.integers(0, 2_000_000))
    sizes = data.draw(st.lists(st.integers(1, 10), max_size=20))
    op = operator(assigner, lateness, grace)
    results: list[WindowResult] = []
    for records in batches(events, sizes):
        closed, rejected = op.add(records, now=0)
        assert rejected == []  # disorder within the allowed lateness is never late
        results += closed
    results += op.flush()
    assert op.live_states == 0
    got = {(r.partition, r.key, r.window): (r.count, r.features) for r in results}
    assert len(got) == len(results)  # each window handed out once
    expected = batch(assigner, events)
    assert got.keys() == expected.keys()
    for k, v in expected.items():
        assert same(got[k], v), (k, got[k], v)


@pytest.mark.parametrize("kind", KINDS)
@settings(max_examples=15, deadline=None)
@given(data=st.data())
def test_restoring_snapshots_and_continuing_equals_never_stopping(
    kind: str, data: st.DataObject
) -> None:
    assigner = data.draw(assigners(kind))
    events, lateness = data.draw(streams())
    grace = data.draw(st.integers(0, 2_000_000))
    sizes = data.draw(st.lists(st.integers(1, 10), max_size=20))
    crashes = data.draw(st.lists(st.booleans(), min_size=1, max_size=10))
    straight = operator(assigner, lateness, grace)
    current = operator(assigner, lateness, grace)
    for i, records in enumerate(batches(events, sizes)):
        if crashes[i % len(crashes)]:  # a fresh operator restores every partition
            fresh = WindowOperator(
                assigner, FEATURES, "k", allowed_lateness=lateness / US, grace=grace / US
            )
            for p in current.partitions:
                fresh.restore(p, current.snapshot(p))
            current = fresh
        assert current.add(records, now=0) == straight.add(records, now=0)
    assert current.flush() == straight.flush()


@pytest.mark.parametrize("kind", KINDS)
@settings(max_examples=8, deadline=None)
@given(data=st.data())
def test_a_rebalance_mid_stream_changes_no_result(kind: str, data: st.DataObject) -> None:
    assigner = data.draw(assigners(kind))
    events, lateness = data.draw(streams())
    sizes = data.draw(st.lists(st.integers(1, 10), max_size=20))
    cut = data.draw(st.integers(0, 20))
    chunks = list(batches(events, sizes))
    cut %= max(1, len(chunks))
    one = operator(assigner, lateness, 0)
    results_one: list[WindowResult] = []
    first, second = operator(assigner, lateness, 0), None
    results_two: list[WindowResult] = []
    for i, records in enumerate(chunks):
        if i == cut:  # partition 2 moves to another worker
            second = WindowOperator(assigner, FEATURES, "k", allowed_lateness=lateness / US)
            second.restore(2, first.revoke(2))
        results_one += one.add(records, now=0)[0]
        if second is None:
            results_two += first.add(records, now=0)[0]
        else:
            for op, part in (
                (first, [r for r in records if r.partition != 2]),
                (second, [r for r in records if r.partition == 2]),
            ):
                closed, rejected = op.add(part, now=0)
                assert rejected == []
                results_two += closed
    results_one += one.flush()
    results_two += first.flush() + (second.flush() if second else [])

    def key(r: WindowResult) -> tuple[Any, ...]:
        return (r.partition, r.key, r.window)

    assert sorted(results_one, key=key) == sorted(results_two, key=key)


# -- changelog records ---------------------------------------------------------------------


def compact(log: list[tuple[bytes, bytes | None]]) -> list[tuple[bytes, bytes | None]]:
    """What a compacted topic keeps: the latest record of each key, tombstones dropped."""
    latest: dict[bytes, bytes | None] = {}
    for k, v in log:
        latest.pop(k, None)  # a compacted topic orders by the latest write
        latest[k] = v
    return [(k, v) for k, v in latest.items() if v is not None]


def test_changes_need_tracking() -> None:
    op = counting(Tumbling(10))
    op.add([rec("a", 1)], now=0)
    with pytest.raises(RuntimeError, match="does not track changes"):
        op.changes(0)


def test_changes_carry_touched_windows_tombstones_and_the_position() -> None:
    op = counting(Tumbling(10), track_changes=True)
    op.add([rec("a", 1, x=1), rec("b", 2, x=2)], now=0)
    first = op.changes(0)
    assert len(first) == 3 and first[-1][0] == POSITION_KEY
    assert all(v is not None for _, v in first)
    assert op.changes(0) == [first[-1]]  # nothing touched since: only the position
    op.add([rec("a", 12, x=3)], now=0)  # closes both windows of [0, 10), opens one
    second = op.changes(0)
    assert sorted(v is None for _, v in second[:-1]) == [False, True, True]
    restored = counting(Tumbling(10), track_changes=True)
    restored.restore_changes(0, first + second)
    assert restored.live_states == 1
    assert summary(restored.flush()) == [("a", 10.0, 20.0, 1)]


def test_restoring_from_an_empty_changelog_gives_an_empty_partition() -> None:
    op = counting(Tumbling(10))
    op.restore_changes(4, [])
    assert op.partitions == [4] and op.live_states == 0
    with pytest.raises(ValueError, match="no partition position"):
        op.restore_changes(5, [(b"\x93\xa1a\x00\x01", b"\x90")])


def by_window(results: Sequence[WindowResult]) -> list[WindowResult]:
    # Within one end, the order of keys restored from a changelog is the topic's.
    return sorted(results, key=lambda r: (r.window.end_us, r.partition, r.key, r.window))


@pytest.mark.parametrize("kind", KINDS)
@settings(max_examples=12, deadline=None)
@given(data=st.data())
def test_restoring_from_changelog_records_equals_never_stopping(
    kind: str, data: st.DataObject
) -> None:
    assigner = data.draw(assigners(kind))
    events, lateness = data.draw(streams())
    grace = data.draw(st.integers(0, 2_000_000))
    sizes = data.draw(st.lists(st.integers(1, 10), max_size=20))
    plan = data.draw(st.lists(st.sampled_from(["go", "flush", "crash"]), min_size=1))
    compacted = data.draw(st.booleans())

    def make() -> WindowOperator:
        return WindowOperator(
            assigner,
            FEATURES,
            "k",
            allowed_lateness=lateness / US,
            grace=grace / US,
            track_changes=True,
        )

    straight = operator(assigner, lateness, grace)
    current = make()
    current.assign_partitions(range(3))
    logs: dict[int, list[tuple[bytes, bytes | None]]] = {p: [] for p in range(3)}
    for i, records in enumerate(batches(events, sizes)):
        step = plan[i % len(plan)]
        if step != "go":  # a checkpoint: every partition's changes reach the changelog
            for p in current.partitions:
                logs[p] += current.changes(p)
                if compacted:
                    logs[p] = compact(logs[p])
                    assert len(logs[p]) == current.live_states_of(p) + 1  # bounded by live
        if step == "crash":  # right after the checkpoint: nothing is lost
            current = make()
            for p, log in logs.items():
                current.restore_changes(p, log)
        closed, rejected = current.add(records, now=0)
        expected_closed, expected_rejected = straight.add(records, now=0)
        assert by_window(closed) == by_window(expected_closed)
        assert rejected == expected_rejected
    assert by_window(current.flush()) == by_window(straight.flush())


def test_restoring_leaves_the_garbage_collector_as_it_found_it() -> None:
    op = counting(Tumbling(10), track_changes=True)
    op.add([rec("a", 1)], now=0)
    data, log = op.snapshot(0), op.changes(0)
    assert gc.isenabled()
    counting(Tumbling(10)).restore(0, data)
    counting(Tumbling(10)).restore_changes(0, log)
    assert gc.isenabled()
    gc.disable()
    try:
        counting(Tumbling(10)).restore(0, data)
        assert not gc.isenabled()
    finally:
        gc.enable()
    with pytest.raises(msgspec.DecodeError):
        counting(Tumbling(10)).restore(0, b"\x93garbage")
    assert gc.isenabled()


def test_a_partition_moved_here_behind_the_watermark_keeps_its_events_on_time() -> None:
    """A rebalance hands a worker that read ahead a partition restored at an earlier event
    time: its on-time records must not be late, its windows must not close early."""

    def make(track: bool = False) -> WindowOperator:
        return WindowOperator(
            Tumbling(10),
            {"n": (None, Count())},
            key_field="k",
            allowed_lateness=2,
            track_changes=track,
        )

    def rec(k: str, t: float, p: int, o: int) -> Record:
        return Record(key=None, value={"k": k}, event_time=t, topic="events", partition=p, offset=o)

    a = make(track=True)
    a.assign_partitions([1])
    a.add([rec("b", 50.0, 1, 0)], now=0.0)
    state = a.changes(1)
    b = make()
    b.assign_partitions([0])
    b.add([rec("a", 100.0, 0, 0)], now=0.0)
    b.restore_changes(1, state)
    closed, rejected = b.add([rec("b", 55.0, 1, 1)], now=0.0)
    assert (closed, rejected) == ([], [])
    closed, _ = b.add([rec("b", 63.0, 1, 2)], now=0.0)
    assert [(r.key, r.window.start, r.count) for r in closed] == [("b", 50.0, 2)]


# -- state written in version 1 (milliseconds) -------------------------------------------------

V1_FEATURES: dict[str, tuple[str | None, Aggregator[Any]]] = {
    "n": (None, Count()),
    "x": ("x", Sum()),
    "first": ("x", First()),
    "last": ("x", Last()),
    "recent": ("x", LastN(3)),
}
V1_CASES: dict[str, tuple[Assigner, list[tuple[str, float, int]], list[tuple[str, float, int]]]] = {
    # kind: the assigner, the events before the snapshot (whole ms), the events after
    "tumbling": (
        Tumbling(10),
        # b at 14 s closes [0, 10); a's First in [10, 20) is at 10.002 s
        [
            ("a", 3.001, 1),
            ("a", 4.25, 3),
            ("a", 4.25, 4),
            ("b", 11.5, 2),
            ("a", 12.0, 5),
            ("b", 14.0, 0),
            ("a", 10.002, 6),
        ],
        # earlier than a's First by half a ms, at the same ms, late, and closing the rest
        [("a", 10.0015, 7), ("a", 10.002, 8), ("a", 9.5, 9), ("b", 25.0, 0)],
    ),
    "sliding": (
        Sliding(2),
        [("a", 1.0, 1), ("a", 1.5, 2), ("a", 2.999, 3), ("b", 4.2, 4), ("b", 5.0, 5)],
        [("a", 2.9995, 6), ("a", 3.0, 7), ("b", 9.0, 0)],
    ),
    "session": (
        Session(1),
        [("a", 1.0, 1), ("a", 1.999, 2), ("a", 0.5, 3), ("b", 4.2, 4), ("b", 5.5, 5)],
        # a's session [0.5, 2.999) takes 2.9985 s (less than the gap after 1.999 s) and
        # 0.4995 s (its gap reaches past 0.5 s)
        [("a", 2.9985, 6), ("a", 0.4995, 7), ("b", 9.0, 0)],
    ),
}
# What version 1 of the operator (times in ms) wrote after the events before, with
# allowed_lateness=3: a snapshot, and (for sessions) the changelog records of every window
# and the partition's position.
V1_SNAPSHOTS = {
    "tumbling": "9601a5666978656495a16ea178a56669727374a46c617374a6726563656e74cd36b0cd2af8"
    "9295a162cd2710cd4e2002950292cb4000000000000000cb000000000000000092cd2cec0292cd36b000"
    "9292cd2cec0292cd36b00095a161cd2710cd4e2002950292cb4026000000000000cb0000000000000000"
    "92cd27120692cd2ee0059292cd27120692cd2ee005",
    "sliding": "9601a7736c6964696e6795a16ea178a56669727374a46c617374a6726563656e74cd1388cd07d0"
    "9594a161cd03e801950192cb3ff0000000000000cb000000000000000092cd03e80192cd03e8019192cd"
    "03e80194a161cd05dc01950192cb4000000000000000cb000000000000000092cd05dc0292cd05dc0291"
    "92cd05dc0294a161cd0bb701950192cb4008000000000000cb000000000000000092cd0bb70392cd0bb7"
    "039192cd0bb70394a162cd106801950192cb4010000000000000cb000000000000000092cd10680492cd"
    "1068049192cd10680494a162cd138801950192cb4014000000000000cb000000000000000092cd138805"
    "92cd1388059192cd138805",
    "session": "9601a773657373696f6e95a16ea178a56669727374a46c617374a6726563656e74cd157ccd09c4"
    "9395a161cd01f4cd0bb703950392cb4018000000000000cb000000000000000092cd01f40392cd07cf02"
    "9392cd01f40392cd03e80192cd07cf0295a162cd1068cd145001950192cb4010000000000000cb000000"
    "000000000092cd10680492cd1068049192cd10680495a162cd157ccd196401950192cb40140000000000"
    "00cb000000000000000092cd157c0592cd157c059192cd157c05",
}
V1_SESSION_CHANGELOG = [
    (
        "93a162cd1068cd1450",
        "95a162cd1068cd145001950192cb4010000000000000cb000000000000000092cd10680492cd106804"
        "9192cd106804",
    ),
    (
        "93a161cd01f4cd0bb7",
        "95a161cd01f4cd0bb703950392cb4018000000000000cb000000000000000092cd01f40392cd07cf02"
        "9392cd01f40392cd03e80192cd07cf02",
    ),
    (
        "93a162cd157ccd1964",
        "95a162cd157ccd196401950192cb4014000000000000cb000000000000000092cd157c0592cd157c05"
        "9192cd157c05",
    ),
    ("c0", "9501a773657373696f6e95a16ea178a56669727374a46c617374a6726563656e74cd157ccd09c4"),
]


def v1_operator(assigner: Assigner) -> WindowOperator:
    return WindowOperator(assigner, V1_FEATURES, "k", allowed_lateness=3, track_changes=True)


def v1_records(events: list[tuple[str, float, int]], first: int = 0) -> list[Record]:
    return [rec(k, t, offset=first + i, x=x) for i, (k, t, x) in enumerate(events)]


def assert_continues_like(restored: WindowOperator, straight: WindowOperator, kind: str) -> None:
    """``restored`` holds the same state as ``straight`` and goes on the same way."""
    _, before, after = V1_CASES[kind]
    assert restored.live_states == straight.live_states
    # The same state, in the new encoding: windows, panes, First/Last/LastN times in us
    # (the rows in any order: a changelog's is the order windows were last written).
    got, expected = (msgspec.msgpack.decode(op.snapshot(0)) for op in (restored, straight))
    assert got[:5] == expected[:5] and got[0] == 2
    assert sorted(got[5], key=repr) == sorted(expected[5], key=repr)
    records = v1_records(after, len(before))
    assert restored.add(records, now=0) == straight.add(records, now=0)
    assert restored.watermark == straight.watermark
    assert restored.flush() == straight.flush()


@pytest.mark.parametrize("kind", sorted(V1_CASES))
def test_a_version_1_snapshot_restores_in_microseconds(kind: str) -> None:
    assigner, before, _ = V1_CASES[kind]
    straight = v1_operator(assigner)
    straight.add(v1_records(before), now=0)
    restored = v1_operator(assigner)
    restored.restore(0, bytes.fromhex(V1_SNAPSHOTS[kind]))
    assert_continues_like(restored, straight, kind)


def test_version_1_changelog_records_restore_in_microseconds() -> None:
    assigner, before, _ = V1_CASES["session"]
    straight = v1_operator(assigner)
    straight.add(v1_records(before), now=0)
    straight.changes(0)
    restored = v1_operator(assigner)
    restored.restore_changes(
        0, [(bytes.fromhex(k), bytes.fromhex(v)) for k, v in V1_SESSION_CHANGELOG]
    )
    assert restored.changes(0) == [(POSITION_KEY, straight.changes(0)[-1][1])]  # version 2
    assert_continues_like(restored, straight, "session")


def test_version_1_state_that_never_closed_a_window_keeps_that_horizon() -> None:
    op = counting(Tumbling(10))
    op.restore(0, msgspec.msgpack.encode([1, "fixed", ["n", "x"], None, NEVER, []]))
    assert op._stores[0].horizon == NEVER and op.watermark is None
    op.restore(0, msgspec.msgpack.encode([1, "fixed", ["n", "x"], 5_000, NEVER, []]))
    assert op.advance(now=0) == [] and op.watermark == 5.0
    with pytest.raises(ValueError, match="window state version 3, expected 2"):
        op.restore(0, msgspec.msgpack.encode([3, "fixed", ["n", "x"], None, NEVER, []]))
