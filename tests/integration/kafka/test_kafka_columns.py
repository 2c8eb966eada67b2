"""Kafka in, Kafka out with the chunks kept as columns: no record is built on the way, and
the outputs are the ones the record-by-record path writes."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pytest

from headrace.batch import RecordBatch
from headrace.builder import PipelineBuilder
from headrace.connectors.kafka import KafkaProducer, KafkaSink, KafkaSource
from headrace.models.base import CallableModel
from headrace.models.featurizer import Featurizer
from headrace.runtime.column_decode import ColumnDecoder
from headrace.runtime.decode import JsonDecoder
from kafka_helpers import TansuBroker
from workers import TopicReader, reference_events

CONSUMER = {"session.timeout.ms": 6000, "fetch.wait.max.ms": 10, "auto.offset.reset": "earliest"}


def _score(x: np.ndarray) -> list[float]:
    return x.sum(axis=1).tolist()


def _run(
    tansu: TansuBroker, topic: str, out: str, n: int, *, dead: str | None = None
) -> tuple[list[dict[str, Any]], int, Any]:
    """Score ``topic`` into ``out`` in process until ``n`` outputs (and dead letters) are
    read; returns the outputs, how many batches built their records, and the engine."""
    producer = KafkaProducer({"bootstrap.servers": tansu.bootstrap, "linger.ms": 5})
    source = KafkaSource(
        [topic], group_id=f"g-{topic}", settings={"bootstrap.servers": tansu.bootstrap, **CONSUMER}
    )
    builder = (
        PipelineBuilder("columns")
        .source(source, decoder=JsonDecoder(key_field="entity_id", time_field="ts"))
        .model(
            CallableModel(_score, name="sum", version="1"), featurizer=Featurizer(vector="features")
        )
        .sink(KafkaSink(out, producer=producer))
        .batching(max_size=128, max_wait=0.005)
    )
    if dead is not None:
        builder = builder.dead_letter(KafkaSink(dead, producer=producer, name="dead"))
    engine = builder.build()
    reader = TopicReader(tansu.bootstrap, out, 2)
    dead_reader = TopicReader(tansu.bootstrap, dead, 2) if dead is not None else None

    async def main() -> None:
        task = asyncio.create_task(engine.run())
        try:
            for _ in range(600):  # at least 60 s: each read waits up to 50 ms
                got = await asyncio.to_thread(reader.read)
                if dead_reader is not None:
                    got += await asyncio.to_thread(dead_reader.read)
                if got >= n or task.done():
                    break
                await asyncio.sleep(0.05)
        finally:
            engine.stop()
            await task

    built = 0
    original = RecordBatch.records

    def counting(self: RecordBatch) -> Any:
        nonlocal built
        if self._records is None:
            built += 1
        return original(self)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(RecordBatch, "records", counting)
        try:
            asyncio.run(main())
        finally:
            reader.read()
            reader.close()
            if dead_reader is not None:
                dead_reader.close()
    return [msgspec.json.decode(v) for v in reader.values], built, engine


def test_a_kafka_chunk_is_scored_and_written_as_columns_without_a_record(
    tansu: TansuBroker, tmp_path: Path
) -> None:
    """Declared features, inputs written as read: the source hands over batches of bytes,
    the decoder fills only the columns the model reads, and the sink writes from them —
    no batch builds its records, and every output has the documented shape with the
    input's bytes as they were."""
    n = 3000
    tansu.create_topic("events", 2)
    tansu.create_topic("predictions", 2)
    events = reference_events(n)
    tansu.produce_json("events", events, key_field="entity_id")
    outputs, built, engine = _run(tansu, "events", "predictions", n)
    assert isinstance(engine._decode.__self__, ColumnDecoder)
    assert built == 0, f"{built} batches built their records"
    assert sorted(o["input"]["id"] for o in outputs) == list(range(n))
    by_id = {e["id"]: e for e in events}
    for o in outputs:
        e = by_id[o["input"]["id"]]
        assert o["input"] == e and o["key"] == e["entity_id"] and o["event_time"] == e["ts"]
        expected = float(np.asarray(e["features"], dtype=np.float32).sum(dtype=np.float32))
        assert o["prediction"] == pytest.approx(expected, rel=1e-5)
        assert set(o) == {
            "key",
            "input",
            "prediction",
            "model",
            "source",
            "event_time",
            "processed_at",
        }
    assert engine.stats.records_out == n


def test_a_chunk_with_a_bad_event_falls_back_record_by_record(
    tansu: TansuBroker, tmp_path: Path
) -> None:
    """Events the schema does not take (not JSON, a boolean feature, an ISO time, a
    missing feature) go the record-by-record way: the bad ones are dead-lettered as
    before, the others scored, booleans counting as 0 and 1."""
    tansu.create_topic("mixed", 1)
    tansu.create_topic("mixed-out", 1)
    tansu.create_topic("mixed-dead", 1)
    good = reference_events(40)
    bad_values: list[bytes] = [
        b"not json",
        msgspec.json.encode({"entity_id": "x", "ts": 1.0}),  # no features
    ]
    odd = [
        {**good[0], "id": 1000, "features": [True, False, 1, 2, 3, 4, 5, 6]},
        {**good[1], "id": 1001, "ts": "2026-12-06T12:00:00+00:00"},
    ]
    values = [msgspec.json.encode(e) for e in good[:20]] + bad_values
    values += [msgspec.json.encode(e) for e in [*odd, *good[20:]]]
    tansu.produce_json("mixed", values)
    outputs, _, _ = _run(tansu, "mixed", "mixed-out", len(values), dead="mixed-dead")
    ids = sorted(o["input"]["id"] for o in outputs)
    assert ids == sorted([e["id"] for e in good] + [1000, 1001])
    by_id = {o["input"]["id"]: o for o in outputs}
    assert by_id[1000]["prediction"] == pytest.approx(22.0)
    assert by_id[1001]["event_time"] == dt.datetime(2026, 12, 6, 12, tzinfo=dt.UTC).timestamp()
