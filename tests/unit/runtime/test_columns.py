"""The engine on a source that delivers RecordBatches: scored from the columns, with the
same outputs, dead letters and commits as from records, and no record built where no part
asks for one."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import numpy as np
import pytest

from headrace import (
    CallableModel,
    EngineSettings,
    Featurizer,
    NullSink,
    Pipeline,
    PipelineError,
    Priorities,
    RecordBatch,
    ScoredBatch,
    SensorEvents,
)
from headrace.connectors.base import DecodedSource, Source
from headrace.record import Record
from headrace.windows import Count, Sum, Tumbling, WindowOperator
from helpers import MemorySink

WEIGHTS = np.linspace(-1.0, 1.0, 8).astype(np.float32)


def logistic(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-(x @ WEIGHTS)))


class Batches(DecodedSource):
    """Delivers SensorEvents batches (``as_records``: the same records, as lists);
    remembers what was committed."""

    def __init__(self, n: int, chunk: int, *, as_records: bool = False, nan_at: int = -1):
        events = SensorEvents(entities=20, anomaly_rate=0.1, seed=5)
        self.batches: list[RecordBatch] = []
        for lo in range(0, n, chunk):
            b, _ = events.batch(topic="s", partition=0, start_id=lo, n=min(chunk, n - lo), ts=1.0)
            if lo <= nan_at < lo + len(b):
                b.columns["features"][nan_at - lo, 3] = np.nan
            self.batches.append(b)
        self.as_records = as_records
        self.committed: dict[tuple[str, int], int] = {}

    async def chunks(self) -> AsyncIterator[Sequence[Record]]:
        for b in self.batches:
            yield list(b) if self.as_records else b

    async def commit(self, positions: Mapping[tuple[str, int], int]) -> None:
        self.committed.update(positions)


class Watching(NullSink):
    """Notes whether each batch reached it as columns with no record built."""

    def __init__(self) -> None:
        super().__init__()
        self.unbuilt: list[bool] = []

    async def write(self, batch: ScoredBatch) -> None:
        records = batch.records
        self.unbuilt.append(isinstance(records, RecordBatch) and not records.materialized)


def run(source: Source, *sinks: Any, dead: MemorySink | None = None) -> None:
    pipeline = (
        Pipeline("columns")
        .source(source)
        .model(
            CallableModel(logistic, name="lr", version="1"),
            featurizer=Featurizer(vector="features"),
        )
        .settings(EngineSettings(max_batch_size=64, max_wait=0.002))
    )
    for sink in sinks:
        pipeline = pipeline.sink(sink)
    if dead is not None:
        pipeline = pipeline.dead_letter(dead)
    pipeline.run(install_signal_handlers=False)


def without_processed_at(sink: MemorySink) -> list[dict[str, Any]]:
    return [{k: v for k, v in o.items() if k != "processed_at"} for o in sink.outputs]


def test_columns_and_records_give_the_same_outputs_and_commits() -> None:
    as_columns, as_records = Batches(1000, 300), Batches(1000, 300, as_records=True)
    a, b = MemorySink(), MemorySink()
    run(as_columns, a)
    run(as_records, b)
    assert len(a.outputs) == 1000
    assert without_processed_at(a) == without_processed_at(b)
    assert as_columns.committed == as_records.committed == {("s", 0): 1000}


def test_a_sink_that_does_not_ask_for_records_gets_none_built() -> None:
    sink = Watching()
    run(Batches(1000, 300), sink)
    assert sink.unbuilt and all(sink.unbuilt)


def test_a_non_finite_feature_is_dead_lettered_as_from_records() -> None:
    """A NaN in the feature column: the rest of the batch is scored, that record
    dead-lettered with the error the records' path gives it."""
    got = []
    for as_records in (False, True):
        source, sink, dead = (
            Batches(200, 100, as_records=as_records, nan_at=150),
            MemorySink(),
            MemorySink(),
        )
        run(source, sink, dead=dead)
        assert len(sink.outputs) == 199
        assert source.committed == {("s", 0): 200}
        [failure] = dead.failures
        got.append((failure.record.offset, failure.error_type, failure.error))
    assert got[0] == got[1]
    assert got[0][0] == 150 and "features[3]" in got[0][2]


class BytesSource(Source):
    """A source of bytes (not a DecodedSource) that delivers a RecordBatch by mistake."""

    name = "mistaken"

    async def chunks(self) -> AsyncIterator[Sequence[Record]]:
        yield Batches(10, 10).batches[0]


def test_a_batch_from_a_source_of_bytes_is_refused_with_what_to_do() -> None:
    sink = MemorySink()
    with pytest.raises(
        PipelineError, match=r"source 'mistaken' delivered a RecordBatch.*DecodedSource"
    ):
        run(BytesSource(), sink)
    assert sink.outputs == []


def total_of(xs: list[dict[str, Any]]) -> list[float]:
    return [float(x["total"]) for x in xs]


def windowed_outputs(source: Batches) -> list[tuple[Any, ...]]:
    sink = MemorySink()
    operator = WindowOperator(
        Tumbling(1.0),
        {"n": (None, Count()), "total": ("value", Sum())},
        key_field="entity_id",
        time_source="id",  # the event's id as its time: many windows per key
    )
    (
        Pipeline("windows")
        .source(source)
        .model(CallableModel(total_of, name="total", version="1"))
        .sink(sink)
        .windows(operator)
        .settings(EngineSettings(max_wait=0.002, window_tick=0.01))
        .run(install_signal_handlers=False)
    )
    return sorted(
        (o["key"], o["window"]["start"], o["count"], round(o["prediction"], 6))
        for o in sink.outputs
    )


def test_windows_over_batches_are_the_windows_over_records() -> None:
    got = windowed_outputs(Batches(600, 250))
    assert got == windowed_outputs(Batches(600, 250, as_records=True))
    assert sum(count for _, _, count, _ in got) == 600


def test_priority_lanes_over_batches_score_every_record_once() -> None:
    source, sink = Batches(1000, 300), MemorySink()
    (
        Pipeline("lanes")
        .source(source)
        .model(
            CallableModel(logistic, name="lr", version="1"),
            featurizer=Featurizer(vector="features"),
        )
        .sink(sink)
        .priorities(Priorities("priority"))
        .settings(EngineSettings(max_batch_size=64, max_wait=0.002))
        .run(install_signal_handlers=False)
    )
    assert sorted(o["source"]["offset"] for o in sink.outputs) == list(range(1000))
    assert source.committed == {("s", 0): 1000}
