"""Kafka in, Kafka out, through a real Kafka-protocol broker (Tansu) and a real worker."""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path

import msgspec

from kafka_helpers import TansuBroker
from workers import (
    TopicReader,
    Worker,
    committed,
    kafka_pipeline,
    models_env,
    reference_events,
    wait_until,
)

KAFKA_SINK = "  - type: kafka\n    topic: predictions"


def test_50k_records_4_partitions_arrive_once_in_key_order(
    tansu: TansuBroker, tmp_path: Path
) -> None:
    """Every input is scored exactly once in a clean run; per key, outputs keep input
    order; every partition's offset is committed to its end (the seed committed only the
    last event's partition)."""
    n = 50_000
    tansu.create_topic("events", 4)
    tansu.create_topic("predictions", 4)
    tansu.produce_json("events", reference_events(n), key_field="entity_id")
    config = kafka_pipeline(tmp_path / "p.yaml", tansu.bootstrap, sinks=KAFKA_SINK)
    worker = Worker(config, models_env(tmp_path), tmp_path / "worker.log").start()
    reader = TopicReader(tansu.bootstrap, "predictions", 4)
    try:
        wait_until(lambda: reader.read() >= n, 120, f"{n} outputs", (worker,))
        assert worker.terminate() == 0, worker.tail()
    finally:
        worker.stop()
        reader.read()
        reader.close()
    ids = reader.ids()
    assert len(ids) == n and set(ids) == set(range(n))

    by_key: dict[str, list[int]] = defaultdict(list)
    for key, value in zip(reader.keys, reader.values, strict=True):
        out = msgspec.json.decode(value)
        assert key == out["key"] == out["input"]["entity_id"]
        assert out["model"] == {"name": "feature-sum", "version": "1"}
        assert out["source"]["topic"] == "events"
        by_key[key].append(out["input"]["id"])
    for key, seen in by_key.items():
        assert seen == sorted(seen), f"outputs for {key} out of order"

    per_partition = Counter(msgspec.json.decode(v)["source"]["partition"] for v in reader.values)
    assert committed(tansu.bootstrap, "scorers", "events", 4) == dict(per_partition)
