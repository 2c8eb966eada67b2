"""The ceiling's count of records written and not committed: never below the truth."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from headrace.record import Record
from headrace.runtime.uncommitted import Uncommitted


def record(partition: int, offset: int) -> Record:
    return Record(
        key=None, value=None, event_time=0.0, topic="t", partition=partition, offset=offset
    )


# Per partition: consecutive offsets cut into batches, written in an order that may put a
# later batch first (a higher priority's batch overtaking), with commits confirmed between
# writes at positions below which everything was written (what the offset tracker allows).
@st.composite
def runs(draw: st.DrawFn) -> list[tuple[str, int, list[int]]]:
    steps: list[tuple[str, int, list[int]]] = []
    for partition in range(draw(st.integers(1, 3))):
        start = draw(st.integers(0, 1000))
        sizes = draw(st.lists(st.integers(1, 20), min_size=1, max_size=8))
        batches, at = [], start
        for size in sizes:
            batches.append(list(range(at, at + size)))
            at += size
        order = draw(st.permutations(batches))
        steps += [("write", partition, b) for b in order]
    return draw(st.permutations(steps))


@given(runs(), st.data())
def test_the_count_never_falls_below_what_a_crash_would_write_again(
    steps: list[tuple[str, int, list[int]]], data: st.DataObject
) -> None:
    u = Uncommitted(limit=None)
    written: dict[int, set[int]] = {}
    confirmed: dict[int, int] = {}
    for _, partition, offsets in steps:
        u.written([record(partition, o) for o in offsets])
        done = written.setdefault(partition, set())
        done |= set(offsets)
        # A commit may be confirmed at any position up to the first gap.
        first = min(done) if partition not in confirmed else confirmed[partition]
        top = first
        while top in done:
            top += 1
        if data.draw(st.booleans()):
            at = data.draw(st.integers(first, top))
            confirmed[partition] = max(confirmed.get(partition, at), at)
            u.confirmed({("t", partition): at})
        truth = sum(
            sum(1 for o in offs if o >= confirmed.get(p, min(offs))) for p, offs in written.items()
        )
        assert u.count() >= truth


def test_room_is_refused_over_the_limit_but_never_to_a_batch_alone() -> None:
    u = Uncommitted(limit=10)
    assert u.room(50), "nothing uncommitted: even a batch over the limit goes, alone"
    u.written([record(0, o) for o in range(8)])
    assert u.room(2) and not u.room(3)
    u.confirmed({("t", 0): 8})
    assert u.count() == 0 and u.room(10)


def test_partitions_that_moved_away_are_not_counted() -> None:
    u = Uncommitted(limit=10)
    u.written([record(0, 0), record(1, 0)])
    u.forget([("t", 1)])
    assert u.count() == 1
