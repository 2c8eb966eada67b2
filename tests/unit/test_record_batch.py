"""RecordBatch: records kept as columns, sliced, joined and batched without building a
record, and the same records as a list when a part asks for them."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from itertools import pairwise
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from headrace import RecordBatch, SensorEvents
from headrace.batch import Batches, columns_of, event_times_of, join, parts_of
from headrace.record import Record
from headrace.runtime.batcher import Batcher
from headrace.runtime.offsets import OffsetTracker, runs


def xs(batch: RecordBatch) -> list[dict[str, Any]]:
    return [{"x": x} for x in batch.columns["x"].tolist()]


def make(lo: int, hi: int, *, partition: int = 0) -> RecordBatch:
    n = hi - lo
    return RecordBatch(
        topic="t",
        partition=partition,
        offsets=range(lo, hi),
        keys=[f"k{o % 3}" for o in range(lo, hi)],
        event_times=np.arange(lo, hi, dtype=np.float64),
        columns={"x": np.arange(lo, hi, dtype=np.float64) / 2, "v": np.ones((n, 2))},
        values_from=xs,
    )


def described(records: Sequence[Record]) -> list[tuple[Any, ...]]:
    return [(r.topic, r.partition, r.offset, r.key, r.event_time, r.value) for r in records]


def plain(lo: int, hi: int) -> list[tuple[Any, ...]]:
    return [("t", 0, o, f"k{o % 3}", float(o), {"x": o / 2}) for o in range(lo, hi)]


def test_records_are_built_once_and_only_when_asked_for() -> None:
    b = make(5, 9)
    part = b[1:3]
    assert not b.materialized and not part.materialized
    assert described(part) == plain(6, 8)
    assert not b.materialized  # the part built its own records
    assert described(b) == plain(5, 9)
    assert b[0] is b[0] and list(b)[2] is b[2]
    assert b[1:3][0] is b[1]  # a part of a built batch holds the same objects


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"offsets": range(0, 6, 2)}, "consecutive"),
        ({"keys": ["a"]}, "needs 3 keys"),
        ({"columns": {"x": np.zeros(2)}}, "column 'x' has 2 rows for 3 offsets"),
    ],
)
def test_a_batch_whose_columns_do_not_line_up_is_refused(
    kwargs: dict[str, Any], message: str
) -> None:
    args: dict[str, Any] = {
        "topic": "t",
        "partition": 0,
        "offsets": range(3),
        "keys": ["a", "b", "c"],
        "event_times": np.zeros(3),
        "columns": {},
        "values_from": xs,
    }
    with pytest.raises(ValueError, match=message):
        RecordBatch(**(args | kwargs))


@given(cuts=st.lists(st.integers(0, 40), max_size=6), built=st.lists(st.booleans(), max_size=7))
def test_slices_joined_are_the_batch(cuts: list[int], built: list[bool]) -> None:
    """Cut anywhere, some parts' records built and some not, the parts join into one batch
    with the same records, offsets and columns; its bookkeeping is one run."""
    whole = make(100, 140)
    bounds = [0, *sorted(cuts), 40]
    parts: list[Sequence[Record]] = [whole[a:b] for a, b in pairwise(bounds)]
    for part, build in zip(parts, built, strict=False):
        if build and len(part):
            part[0]
    joined = join(parts)
    assert isinstance(joined, RecordBatch)
    assert joined.offsets == range(100, 140)
    assert np.array_equal(joined.columns["v"], whole.columns["v"])
    assert described(joined) == plain(100, 140)
    assert runs(joined) == runs(list(joined)) == [("t", 0, 100, 140)]


def test_parts_that_do_not_follow_each_other_join_as_batches_of_columns() -> None:
    """Batches of several partitions (or with a gap) stay columns, in parts: their
    columns, event times and offset runs are read without building a record."""
    for parts in ([make(0, 2), make(3, 5)], [make(0, 2), make(2, 4, partition=1)]):
        joined = join(parts)
        assert isinstance(joined, Batches) and not joined.materialized
        assert list(parts_of(joined) or ()) == parts
        columns = columns_of(joined)
        assert columns is not None
        assert columns["x"].tolist() == [x for p in parts for x in p.columns["x"].tolist()]
        assert event_times_of(joined).tolist() == [t for p in parts for t in p.event_times]
        assert runs(joined) == [r for p in parts for r in runs(p)]
        assert not joined.materialized
        assert [r.offset for r in joined] == [r.offset for p in parts for r in p]


def test_a_piece_of_records_joins_the_rest_as_a_list() -> None:
    parts = [make(0, 2), list(make(2, 4, partition=1))]
    joined = join(parts)
    assert isinstance(joined, list)
    assert [r.offset for r in joined] == [0, 1, 2, 3]


@settings(max_examples=40, deadline=None)
@given(
    chunks=st.lists(st.integers(1, 40), min_size=1, max_size=10),
    max_size=st.integers(1, 64),
)
def test_the_engines_batcher_keeps_a_source_batch_as_columns(
    chunks: list[int], max_size: int
) -> None:
    """Chunks of one partition, batched: every batch is a RecordBatch of at most
    ``max_size`` that builds no record, and the batches, in order, are the input."""
    got: list[Sequence[Record]] = []

    async def handle(batch: Sequence[Record]) -> None:
        got.append(batch)

    async def main() -> None:
        batcher = Batcher(handle, max_size=max_size, max_wait=0.001, join=join)
        runner = asyncio.create_task(batcher.run())
        lo = 0
        for n in chunks:
            batcher.put(make(lo, lo + n))
            lo += n
            await asyncio.sleep(0)
        batcher.close()
        await runner

    asyncio.run(main())
    assert all(isinstance(b, RecordBatch) and not b.materialized for b in got)
    assert all(1 <= len(b) <= max_size for b in got)
    batches: list[RecordBatch] = got  # type: ignore[assignment]  # checked above
    assert [o for b in batches for o in b.offsets] == list(range(sum(chunks)))
    tracker = OffsetTracker()
    tracker.track(make(0, sum(chunks)))
    for b in reversed(batches):
        tracker.done(b)
    assert tracker.positions() == {("t", 0): sum(chunks)}


def test_the_generators_batches_hold_the_events_it_makes() -> None:
    """A batch's records are the events ``SensorEvents.make`` gives for the same seed, and
    its columns the same numbers."""
    batch, anomalies = SensorEvents(entities=7, anomaly_rate=0.2, seed=3).batch(
        topic="g", partition=0, start_id=10, n=50, ts=99.0
    )
    events, same = SensorEvents(entities=7, anomaly_rate=0.2, seed=3).make(
        start_id=10, n=50, ts=99.0
    )
    assert anomalies == same
    assert [r.value for r in batch] == events
    assert [r.key for r in batch] == [e["entity_id"] for e in events]
    assert [r.offset for r in batch] == [e["id"] for e in events]
    assert batch.columns["features"].tolist() == [e["features"] for e in events]


def test_values_that_do_not_match_the_records_are_refused_with_where() -> None:
    b = RecordBatch(
        topic="t",
        partition=2,
        offsets=range(5, 8),
        keys=["a", "b", "c"],
        event_times=np.zeros(3),
        columns={},
        values_from=lambda b: [1, 2],
    )
    with pytest.raises(ValueError, match=r"gave 2 values for the 3 records of t\[2\] offsets 5..7"):
        b[0]
