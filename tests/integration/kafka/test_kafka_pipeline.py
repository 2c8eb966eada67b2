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
        assert out["model"] == {"name": "feature-sum", "version": "1", "sha256": None}
        assert out["source"]["topic"] == "events"
        by_key[key].append(out["input"]["id"])
    for key, seen in by_key.items():
        assert seen == sorted(seen), f"outputs for {key} out of order"

    per_partition = Counter(msgspec.json.decode(v)["source"]["partition"] for v in reader.values)
    assert committed(tansu.bootstrap, "scorers", "events", 4) == dict(per_partition)


def test_malformed_input_is_dead_lettered_to_kafka_and_the_audit_holds(
    tansu: TansuBroker, tmp_path: Path
) -> None:
    """5% malformed records (bad JSON, bad UTF-8, wrong types, deep nesting, NaN) go to
    the dead-letter topic with their original bytes and their position in headers; the
    audit accounts for every input."""
    from headrace.tools.audit import audit
    from headrace.tools.loadgen import produce_events

    n = 4000
    for topic in ("events", "predictions", "dead-letters"):
        tansu.create_topic(topic, 4)
    summary = produce_events(tansu.bootstrap, "events", count=n, malformed=0.05, progress=False)
    assert summary.malformed == 200
    config = kafka_pipeline(
        tmp_path / "p.yaml",
        tansu.bootstrap,
        sinks=KAFKA_SINK,
        extra="dead_letter:\n  type: kafka\n  topic: dead-letters",
    )
    worker = Worker(config, models_env(tmp_path), tmp_path / "worker.log").start()
    dead = TopicReader(tansu.bootstrap, "dead-letters", 4)
    outputs = TopicReader(tansu.bootstrap, "predictions", 4)
    try:
        wait_until(lambda: dead.read() >= 200, 90, "dead letters", (worker,))
        wait_until(lambda: outputs.read() >= n - 200, 90, "outputs", (worker,))
        report = audit(
            tansu.bootstrap,
            "events",
            output_topic="predictions",
            dead_letter_topic="dead-letters",
            idle_timeout=0.5,
        )
        assert worker.terminate() == 0, worker.tail()
    finally:
        worker.stop()
        dead.close()
        outputs.close()
    assert report.holds("exactly-once"), report
    assert report.dead_letter_count == 200
    assert report.output_count == n - 200
