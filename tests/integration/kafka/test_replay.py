"""Replay against a real broker (Tansu) and real workers: a new group that starts at a
timestamp, an existing group that is moved only when asked, and dead letters replayed
with their original bytes, scored again and accounted for by the audit."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
from confluent_kafka import Producer
from typer.testing import CliRunner

from headrace.cli import app
from headrace.connectors.kafka.start import checked_offsets
from kafka_helpers import TansuBroker
from workers import (
    POISON,
    TopicReader,
    Worker,
    committed,
    kafka_pipeline,
    models_env,
    reference_events,
    wait_until,
)

SINK = "  - type: kafka\n    topic: predictions"
DEAD_LETTERS = "dead_letter:\n  type: kafka\n  topic: dead-letters\n"
BASE_MS = 1_790_000_000_000  # the Kafka timestamp of event 0; event i is i seconds later


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat().replace("+00:00", "Z")


def produce_timed(tansu: TansuBroker, topic: str, events: list[dict[str, Any]]) -> None:
    """Event i to partition i % 2, with the Kafka timestamp BASE_MS + i seconds."""
    producer = Producer(tansu.client_config(**{"linger.ms": 5}))
    for i, e in enumerate(events):
        producer.produce(
            topic,
            msgspec.json.encode(e),
            str(e["entity_id"]),
            partition=i % 2,
            timestamp=BASE_MS + i * 1000,
        )
    assert producer.flush(30) == 0


def log_has(worker: Worker, pattern: str) -> bool:
    return re.search(pattern, worker.log.read_text(errors="replace")) is not None


def test_a_timestamp_past_the_last_record_is_the_end(tansu: TansuBroker) -> None:
    """The check of the broker's answer (Tansu answers offset 0 for any time) finds the
    first record at or after the time, or the end; no group is joined."""
    tansu.create_topic("events", 2)
    produce_timed(tansu, "events", reference_events(40))
    settings = {"bootstrap.servers": tansu.bootstrap, "fetch.wait.max.ms": 10}
    keys = {("events", 0): 0, ("events", 1): 0}
    assert checked_offsets(settings, keys, BASE_MS + 21_000) == {
        ("events", 0): 11,  # event 22
        ("events", 1): 10,  # event 21
    }
    assert checked_offsets(settings, keys, BASE_MS + 3_600_000) == {
        ("events", 0): 20,
        ("events", 1): 20,
    }


def test_the_plan_keeps_commits_and_the_engines_positions_and_resets_once(
    tansu: TansuBroker,
) -> None:
    """Every kind of partition in one assignment, decided by a consumer that joins no
    group (commits and lookups need none)."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    from headrace.connectors.kafka.start import Start, plan, summary

    tansu.create_topic("events", 4)
    produce_timed(tansu, "events", reference_events(8))  # partitions 0 and 1: 4 each
    settings = {"bootstrap.servers": tansu.bootstrap, "group.id": "g", "fetch.wait.max.ms": 10}
    consumer = Consumer({**settings, "enable.auto.commit": False})
    try:
        consumer.commit(
            offsets=[TopicPartition("events", 0, 3), TopicPartition("events", 3, 0)],
            asynchronous=False,
        )
        keys = [("events", p) for p in range(4)]
        engine = {("events", 2): 1}
        kept = plan(
            consumer, keys, Start("earliest"), engine=engine, reset_before=set(), settings=settings
        )
        line = summary("kafka", Start("earliest"), kept)
        assert line == (
            "kafka source kafka: start earliest: events[0] committed 3, kept, "
            "events[1] no commit -> beginning, events[2] at 1, kept by the pipeline's own "
            "store, events[3] committed 0, kept; the start was ignored for partitions with "
            "committed offsets (headrace run --reset-offsets moves them)"
        )
        reset = Start(datetime.fromtimestamp((BASE_MS + 2_000) / 1000, UTC), reset=True)
        moved = plan(
            consumer, keys, reset, engine=engine, reset_before={("events", 3)}, settings=settings
        )
        assert [(d.how, d.committed, d.to) for d in moved] == [
            ("reset", 3, 1),  # event 2, the first at or after the time in partition 0
            ("new", None, 1),  # event 3
            ("engine", None, 1),
            ("kept-reset-before", 0, None),
        ]
        assert OFFSET_BEGINNING in [d.to for d in kept]
    finally:
        consumer.close()


def test_a_new_group_starts_at_the_timestamp_and_a_committed_one_moves_only_when_asked(
    tansu: TansuBroker, tmp_path: Path
) -> None:
    n = 40
    tansu.create_topic("events", 2)
    tansu.create_topic("predictions", 2)
    produce_timed(tansu, "events", reference_events(n))
    env = models_env(tmp_path)

    def config(at_ms: int) -> Path:
        start = {"start": f'{{timestamp: "{iso(at_ms)}"}}'}
        return kafka_pipeline(tmp_path / "p.yaml", tansu.bootstrap, sinks=SINK, source=start)

    reader = TopicReader(tansu.bootstrap, "predictions", 2)
    workers: list[Worker] = []
    try:
        # A new group: events 20..39 (offsets 10..19 of each partition), nothing before.
        first = Worker(config(BASE_MS + 20_000), env, tmp_path / "w1.log").start()
        workers.append(first)
        wait_until(lambda: reader.read() >= 20, 60, "20 outputs", (first,))
        assert log_has(first, r"events\[0\] no commit -> 10, events\[1\] no commit -> 10")
        assert first.terminate() == 0, first.tail()
        reader.read()
        assert sorted(reader.ids()) == list(range(20, n))
        assert committed(tansu.bootstrap, "scorers", "events", 2) == {0: 20, 1: 20}

        # Committed offsets win over an earlier timestamp: nothing is read again.
        second = Worker(config(BASE_MS + 10_000), env, tmp_path / "w2.log").start()
        workers.append(second)
        wait_until(
            lambda: log_has(second, r"the start was ignored for partitions with committed"),
            60,
            "the line that says the start was ignored",
            (second,),
        )
        assert log_has(second, r"events\[0\] committed 20, kept, events\[1\] committed 20, kept")
        assert second.terminate() == 0, second.tail()
        reader.read()
        assert len(reader.values) == 20

        # --reset-offsets moves them: events 30..39 are scored again, and only those.
        third = Worker(
            config(BASE_MS + 30_000), env, tmp_path / "w3.log", args=["--reset-offsets"]
        ).start()
        workers.append(third)
        wait_until(lambda: reader.read() >= 30, 60, "10 more outputs", (third,))
        assert log_has(
            third, r"events\[0\] committed 20 -> 15 \(reset\), events\[1\] committed 20 -> 15"
        )
        assert third.terminate() == 0, third.tail()
        reader.read()
        assert sorted(reader.ids()[20:]) == list(range(30, n))
        assert committed(tansu.bootstrap, "scorers", "events", 2) == {0: 20, 1: 20}
    finally:
        for w in workers:
            w.stop()
        reader.close()


def test_dead_letters_replayed_with_their_original_bytes_are_scored_and_accounted_for(
    tansu: TansuBroker, tmp_path: Path
) -> None:
    from headrace.tools.audit import audit

    for topic in ("events", "predictions", "dead-letters", "replay"):
        tansu.create_topic(topic, 2)
    events = reference_events(30)
    poison = {7, 19}
    for e in events:
        if e["id"] in poison:
            e["features"][0] = POISON
    tansu.produce_json("events", events, key_field="entity_id")
    tansu.produce_json("events", [b'{"id": ', b"not json", b'{"id": 1'])  # decode stage
    env = models_env(tmp_path)
    config = kafka_pipeline(
        tmp_path / "p.yaml",
        tansu.bootstrap,
        sinks=SINK,
        function="workermodels:poisoned",
        extra=DEAD_LETTERS + "failures:\n  retries: 0\n  backoff_ms: 5\n",
    )
    outputs = TopicReader(tansu.bootstrap, "predictions", 2)
    dead = TopicReader(tansu.bootstrap, "dead-letters", 2)
    replayed = TopicReader(tansu.bootstrap, "replay", 2)
    workers: list[Worker] = []
    try:
        first = Worker(config, env, tmp_path / "w1.log").start()
        workers.append(first)
        wait_until(lambda: dead.read() >= 5 and outputs.read() >= 28, 60, "outcomes", (first,))
        assert first.terminate() == 0, first.tail()

        runner = CliRunner()
        args = ["dead-letters", "replay", "-b", tansu.bootstrap, "--from", "dead-letters"]
        args += ["--to", "replay", "--stage", "model"]
        dry = runner.invoke(app, [*args, "--dry-run"])
        assert dry.exit_code == 0, dry.output
        assert re.search(r"model\s+│\s+model-error\s+│\s+2", dry.output), dry.output
        assert "2 selected (dry run: nothing produced), 3 left out by the filters" in dry.output
        done = runner.invoke(app, args)
        assert done.exit_code == 0, done.output
        assert "2 selected, 2 produced, 3 left out by the filters" in done.output

        # Exactly the two poisoned records' original bytes and keys, nothing from the dry run.
        wait_until(lambda: replayed.read() >= 2, 30, "the replayed records")
        originals = {
            r["value"]: r for r in tansu.consume_all("events", 33) if r["value"] in dead.values
        }
        model_dead = [
            (v, h)
            for v, h in zip(dead.values, dead.headers, strict=True)
            if h["headrace-stage"] == b"model"
        ]
        assert sorted(replayed.values) == sorted(v for v, _ in model_dead)
        for value, key, headers in zip(
            replayed.values, replayed.keys, replayed.headers, strict=True
        ):
            original = originals[value]
            assert msgspec.json.decode(value)["id"] in poison
            assert key == str(msgspec.json.decode(value)["entity_id"])
            assert headers["headrace-replayed-source"] == (
                f"events/{original['partition']}/{original['offset']}".encode()
            )
            assert headers["headrace-replayed-from"].startswith(b"dead-letters/")
            assert headers["headrace-replayed-stage"] == b"model"
            assert headers["headrace-replayed-error-type"] == b"model-error"

        # A second pipeline, with a model that does not fail, scores the replay topic.
        fixed = kafka_pipeline(
            tmp_path / "fixed.yaml",
            tansu.bootstrap,
            sinks=SINK,
            topic="replay",
            group="replayers",
            extra=DEAD_LETTERS,
        )
        second = Worker(fixed, env, tmp_path / "w2.log").start()
        workers.append(second)
        wait_until(lambda: outputs.read() >= 30, 60, "the replayed outputs", (second,))
        assert second.terminate() == 0, second.tail()
        assert sorted(outputs.ids()) == list(range(30))
    finally:
        for w in workers:
            w.stop()
        for r in (outputs, dead, replayed):
            r.close()

    audit_args = ["audit", "-b", tansu.bootstrap, "-i", "events", "--output-topic"]
    audit_args += ["predictions", "--dead-letter-topic", "dead-letters"]
    audit_args += ["--replay-topic", "replay", "--idle-timeout", "0.3"]
    audited = CliRunner().invoke(app, [*audit_args, "--expect", "exactly-once", "--json"])
    assert audited.exit_code == 0, audited.output
    report = msgspec.json.decode(audited.stdout.strip().splitlines()[-1])
    counts = [report[k] for k in ("input_count", "output_count", "dead_letter_count")]
    assert counts == [33, 30, 5]
    assert [report[k] for k in ("replayed", "replay_records", "dead_lettered")] == [2, 2, 3]
    # Without the replay topic, the replayed outputs match no input position.
    plain = audit(
        tansu.bootstrap,
        "events",
        output_topic="predictions",
        dead_letter_topic="dead-letters",
        idle_timeout=0.3,
    )
    assert (plain.unexpected, plain.missing) == (2, 0)
