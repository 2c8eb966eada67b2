"""OffsetTracker: which source positions are safe to commit when records finish out of order."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from headrace.record import Record
from headrace.runtime.offsets import OffsetTracker, OffsetTrackerError

Key = tuple[str, int]


def rec(offset: int, partition: int = 0, topic: str = "t") -> Record:
    """A record at ``topic[partition]@offset``; only its position matters here."""
    return Record(
        key=None, value=None, event_time=0.0, topic=topic, partition=partition, offset=offset
    )


def recs(offsets: list[int], partition: int = 0, topic: str = "t") -> list[Record]:
    return [rec(o, partition, topic) for o in offsets]


@st.composite
def read_orders(draw: st.DrawFn) -> list[Record]:
    """Records of 1-4 partitions, offsets increasing (with gaps) within each partition,
    partitions interleaved the way a consumer reading several of them would see them."""
    keys = draw(
        st.lists(
            st.tuples(st.sampled_from(["a", "b"]), st.integers(0, 3)),
            min_size=1,
            max_size=4,
            unique=True,
        )
    )
    offsets: dict[Key, list[int]] = {}
    for key in keys:
        start = draw(st.integers(0, 10**6))
        steps = draw(st.lists(st.integers(1, 4), max_size=20))
        offsets[key] = list(itertools.accumulate([start, *steps]))
    slots = draw(st.permutations([key for key in keys for _ in offsets[key]]))
    cursors = dict.fromkeys(keys, 0)
    order = []
    for key in slots:
        order.append(rec(offsets[key][cursors[key]], key[1], key[0]))
        cursors[key] += 1
    return order


class Model:
    """What the commit positions must be, computed the obvious way."""

    def __init__(self) -> None:
        self.tracked: dict[Key, list[int]] = {}
        self.finished: set[tuple[Key, int]] = set()

    def track(self, records: list[Record]) -> None:
        for r in records:
            self.tracked.setdefault((r.topic, r.partition), []).append(r.offset)

    def done(self, records: list[Record]) -> None:
        self.finished.update(((r.topic, r.partition), r.offset) for r in records)

    def unfinished(self, key: Key) -> list[int]:
        return [o for o in self.tracked[key] if (key, o) not in self.finished]

    def positions(self) -> dict[Key, int]:
        expected = {}
        for key, offsets in self.tracked.items():
            unfinished = self.unfinished(key)
            expected[key] = min(unfinished) if unfinished else offsets[-1] + 1
        return expected


@settings(max_examples=100, deadline=None)
@given(order=read_orders(), data=st.data())
def test_positions_follow_the_smallest_unfinished_offset(
    order: list[Record], data: st.DataObject
) -> None:
    """Tracking in read chunks and finishing in random order and chunks, after every step
    and for every partition: the position never passes an unfinished record, equals the
    smallest unfinished offset (or last tracked + 1 when all are done), never moves back;
    take_committable() returns exactly the positions that moved since it was last called."""
    tracker = OffsetTracker()
    model = Model()
    committed: dict[Key, int] = {}
    previous: dict[Key, int] = {}
    read = 0
    unfinished: list[Record] = []

    while read < len(order) or unfinished:
        if read < len(order) and (not unfinished or data.draw(st.booleans())):
            size = data.draw(st.integers(1, len(order) - read))
            chunk = order[read : read + size]
            read += size
            tracker.track(chunk)
            model.track(chunk)
            unfinished.extend(chunk)
        else:
            shuffled = data.draw(st.permutations(unfinished))
            size = data.draw(st.integers(1, len(shuffled)))
            chunk, unfinished = shuffled[:size], shuffled[size:]
            tracker.done(chunk)
            model.done(chunk)

        positions = tracker.positions()
        assert positions == model.positions()
        for key, position in positions.items():
            pending = model.unfinished(key)
            if pending:
                assert position <= min(pending)
            else:
                assert position == model.tracked[key][-1] + 1
            assert position >= previous.get(key, position), f"{key} moved backwards"
        previous = positions
        assert tracker.in_flight() == len(unfinished)

        if data.draw(st.booleans()):
            moved = {k: p for k, p in positions.items() if committed.get(k) != p}
            assert tracker.take_committable() == moved
            committed.update(moved)

    assert tracker.take_committable() == {
        k: p for k, p in tracker.positions().items() if committed.get(k) != p
    }
    assert tracker.take_committable() == {}
    assert tracker.positions() == {k: offs[-1] + 1 for k, offs in model.tracked.items()}


def test_batch_spanning_partitions_advances_every_partition() -> None:
    """Regression: the seed checkpointed only the partition of a batch's last event, so the
    other partitions in the batch were never committed and re-read after a restart."""
    tracker = OffsetTracker()
    batch = [rec(10, 0), rec(20, 1, "u"), rec(11, 0), rec(5, 2), rec(21, 1, "u")]
    tracker.track(batch)
    tracker.done(batch)
    expected = {("t", 0): 12, ("u", 1): 22, ("t", 2): 6}
    assert tracker.positions() == expected
    assert tracker.take_committable() == expected


def test_out_of_order_completion_holds_the_position() -> None:
    """A finished record behind an unfinished one is not committable yet."""
    tracker = OffsetTracker()
    records = recs([0, 1, 2, 3])
    tracker.track(records)
    tracker.done([records[3], records[1]])
    assert tracker.positions() == {("t", 0): 0}
    tracker.done([records[0]])
    assert tracker.positions() == {("t", 0): 2}
    tracker.done([records[2]])
    assert tracker.positions() == {("t", 0): 4}


def test_take_committable_reports_only_changes() -> None:
    """A commit sends only partitions whose position moved since the last commit."""
    tracker = OffsetTracker()
    a, b = recs([0, 1], 0), recs([0, 1], 1)
    tracker.track(a + b)
    assert tracker.take_committable() == {("t", 0): 0, ("t", 1): 0}
    assert tracker.take_committable() == {}
    tracker.done([a[0]])
    assert tracker.take_committable() == {("t", 0): 1}
    tracker.done([b[1]])  # out of order: partition 1 does not move
    assert tracker.take_committable() == {}


@pytest.mark.parametrize("second", [[5], [4], [3]])
def test_tracking_a_non_increasing_offset_raises(second: list[int]) -> None:
    """Offsets must increase within a partition, across calls as within one call."""
    tracker = OffsetTracker()
    tracker.track(recs([3, 5]))
    with pytest.raises(OffsetTrackerError):
        tracker.track(recs(second))
    with pytest.raises(OffsetTrackerError):
        OffsetTracker().track(recs([7, *second]))


def test_same_offset_in_another_partition_is_fine() -> None:
    """Offsets are per partition: equal offsets in different partitions are not a rewind."""
    tracker = OffsetTracker()
    tracker.track([rec(5, 0), rec(5, 1), rec(5, 0, "u")])
    assert tracker.in_flight() == 3


def test_done_for_an_untracked_partition_raises() -> None:
    """Finishing a record of a partition that was never tracked is a bug upstream."""
    tracker = OffsetTracker()
    tracker.track(recs([0, 1], partition=0))
    with pytest.raises(OffsetTrackerError):
        tracker.done([rec(0, partition=1)])
    with pytest.raises(OffsetTrackerError):
        tracker.done([rec(0, partition=0, topic="other")])


@pytest.mark.parametrize("offset", [9, 13, 99])
def test_done_outside_the_in_flight_range_raises(offset: int) -> None:
    """Finishing an offset below the position (already finished) or above the last tracked
    one is a bug upstream and must not move the position."""
    tracker = OffsetTracker()
    records = recs([10, 11, 12])
    tracker.track(records)
    with pytest.raises(OffsetTrackerError):
        tracker.done([rec(offset)])
    assert tracker.positions() == {("t", 0): 10}


def test_finishing_an_offset_twice_raises_once_it_is_committable() -> None:
    """A record finished twice after the position passed it is reported, not ignored."""
    tracker = OffsetTracker()
    records = recs([0, 1])
    tracker.track(records)
    tracker.done([records[0]])
    with pytest.raises(OffsetTrackerError):
        tracker.done([records[0]])


def test_done_for_an_untracked_offset_inside_a_gap_is_rejected() -> None:
    """Offsets 0 and 5 are tracked; 3 never was (a gap, as compaction or transaction
    markers leave in Kafka). done(3) is rejected and the in-flight count stays right."""
    tracker = OffsetTracker()
    tracker.track(recs([0, 5]))
    with pytest.raises(OffsetTrackerError, match="not in flight"):
        tracker.done([rec(3)])
    assert tracker.in_flight() == 2


def test_forget_drops_a_partition_and_allows_a_rewind() -> None:
    """A revoked or rewound partition disappears from positions and commits; tracking it
    again may start below where it was, and its new position is committable again."""
    tracker = OffsetTracker()
    tracker.track(recs([0, 1, 2], 0) + recs([7], 1))
    tracker.done(recs([0, 1, 2], 0))
    assert tracker.take_committable() == {("t", 0): 3, ("t", 1): 7}

    tracker.forget("t", 0)
    assert tracker.positions() == {("t", 1): 7}
    assert tracker.take_committable() == {}  # nothing to commit for a revoked partition
    assert tracker.in_flight() == 1
    with pytest.raises(OffsetTrackerError):
        tracker.done([rec(2, 0)])
    tracker.forget("t", 9)  # an unknown partition is not an error

    tracker.track(recs([1, 2], 0))  # rewound below the old position
    assert tracker.positions() == {("t", 1): 7, ("t", 0): 1}
    assert tracker.take_committable() == {("t", 0): 1}


def test_in_flight_counts_tracked_unfinished_records() -> None:
    """in_flight() counts tracked, unfinished records across partitions."""
    tracker = OffsetTracker()
    assert tracker.in_flight() == 0
    a, b = recs([0, 1, 2], 0), recs([4, 8], 1)
    tracker.track(a + b)
    assert tracker.in_flight() == 5
    tracker.done([a[2], b[0]])  # one out of order, one in order
    assert tracker.in_flight() == 3
    tracker.done([a[0], a[1], b[1]])
    assert tracker.in_flight() == 0


def test_position_jumps_a_gap_once_everything_before_it_finished() -> None:
    """With gapped offsets (compacted topics), a finished partition's position is the last
    tracked offset + 1, and a later record past a gap becomes the new position."""
    tracker = OffsetTracker()
    tracker.track(recs([3, 8]))
    tracker.done(recs([3, 8]))
    assert tracker.positions() == {("t", 0): 9}
    tracker.track(recs([15]))
    assert tracker.positions() == {("t", 0): 15}
    tracker.done(recs([15]))
    assert tracker.positions() == {("t", 0): 16}


@settings(max_examples=100, deadline=None)
@given(order=read_orders(), data=st.data())
def test_finishing_a_record_twice_or_one_never_read_raises_and_changes_nothing(
    order: list[Record], data: st.DataObject
) -> None:
    """The tracker keeps runs of consecutive offsets, not one entry per record: finishing
    an offset it no longer holds (finished before, in order or out of it) or never held
    (a gap, beyond the last read) is refused, whatever runs surround it, and leaves the
    positions and the in-flight count as they were."""
    tracker = OffsetTracker()
    tracker.track(order)
    finished = data.draw(st.lists(st.sampled_from(order), unique_by=id))
    tracker.done(finished)
    held = {(r.topic, r.partition, r.offset) for r in order}
    done = {(r.topic, r.partition, r.offset) for r in finished}
    r = data.draw(st.sampled_from(order))
    key = (r.topic, r.partition)
    offset = data.draw(
        st.sampled_from(sorted(o for (t, p, o) in done if (t, p) == key))
        if any((t, p) == key for (t, p, _) in done) and data.draw(st.booleans())
        else st.integers(r.offset - 3, r.offset + 30).filter(
            lambda o: (key[0], key[1], o) not in held
        )
    )
    before = tracker.positions(), tracker.in_flight()
    with pytest.raises(OffsetTrackerError, match=r"not in flight|never tracked"):
        tracker.done([rec(offset, key[1], key[0])])
    assert (tracker.positions(), tracker.in_flight()) == before
    tracker.done([x for x in order if (x.topic, x.partition, x.offset) not in done])
    assert tracker.in_flight() == 0
