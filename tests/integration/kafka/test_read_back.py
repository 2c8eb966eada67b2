"""After a crash, a worker reads back what was written and not committed, and does not
write it again (headrace.connectors.kafka.recovery), on a real broker and a real worker.

The crash is staged, so the test knows exactly what was written: offsets are committed
for the group and outputs placed in the output topic as a worker that died would have
left them (a run of written records at the committed offset, a hole, more written after
it; and outputs of another group, which must not count).
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import msgspec
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from kafka_helpers import TansuBroker
from workers import (
    TopicReader,
    Worker,
    committed,
    kafka_pipeline,
    metrics_port,
    models_env,
    wait_until,
    worker_metrics,
)

N = 3000
GROUP = "scorers"


def _stage_crash(
    tansu: TansuBroker, events: list[dict[str, object]], *, after: int = 0
) -> dict[int, int]:
    """Commit partition 0 at 500 and partition 1 at 300 for the group; put outputs in
    ``predictions`` for partition 0's offsets 500..899 except 650 (this group's) and for
    partition 1's 300..399 (another group's); then ``after`` outputs of this group for
    partitions nobody recovers (what the group's other workers wrote meanwhile). Returns
    each partition's end."""
    ends: dict[int, int] = defaultdict(int)
    by_position = {}
    for e in events:
        by_position[(e["partition"], e["offset"])] = e
        ends[e["partition"]] = max(ends[e["partition"]], e["offset"] + 1)
    assert ends[0] > 1000 and ends[1] > 500
    c = Consumer(tansu.client_config(**{"group.id": GROUP, "enable.auto.commit": False}))
    c.commit(offsets=[TopicPartition("events", 0, 500), TopicPartition("events", 1, 300)])
    c.close()
    p = Producer(tansu.client_config(**{"linger.ms": 5}))
    written = [(0, o, GROUP) for o in range(500, 900) if o != 650]
    written += [(1, o, "another-group") for o in range(300, 400)]
    for partition, offset, group in written:
        e = by_position[(partition, offset)]
        out = {
            "key": e["key"],
            "input": msgspec.json.decode(e["value"]),
            "prediction": 0.0,
            "source": {"topic": "events", "partition": partition, "offset": offset},
        }
        p.produce(
            "predictions",
            msgspec.json.encode(out),
            e["key"],
            headers=[("headrace-group", group.encode())],
        )
    for i in range(after):
        out = {"prediction": 0.0, "source": {"topic": "events", "partition": 9, "offset": i}}
        p.produce(
            "predictions",
            msgspec.json.encode(out),
            str(i),
            headers=[("headrace-group", b"scorers")],
        )
        if i % 1000 == 0:
            p.poll(0)
    assert p.flush(10) == 0
    return dict(ends)


@pytest.mark.parametrize(
    ("after", "read_back"),
    [(0, 4096), (3000, 500)],
    ids=["at-the-end", "behind-other-workers-outputs"],
)
def test_a_restart_passes_over_records_whose_outputs_were_written(
    tansu: TansuBroker, tmp_path: Path, after: int, read_back: int
) -> None:
    """The worker starts partition 0 past the written run (500..649, committed at once),
    passes over 651..899 when it reads them and writes 650, the hole; partition 1's
    outputs by another group do not count. Nothing is missing, nothing written twice, and
    every partition is committed to its end. Behind 3,000 outputs the group's other
    workers wrote later, with windows of 500 records per output partition, the read goes
    back window by window until it finds them."""
    from workers import reference_events

    tansu.create_topic("events", 2)
    tansu.create_topic("predictions", 2)
    tansu.produce_json("events", reference_events(N), key_field="entity_id")
    ends = _stage_crash(tansu, tansu.consume_all("events", N), after=after)
    staged = 399 + 100 + after
    config = kafka_pipeline(
        tmp_path / "p.yaml",
        tansu.bootstrap,
        sinks="  - type: kafka\n    topic: predictions",
        group=GROUP,
        extra="metrics:\n  port: 0\n",
        runtime={"read_back": read_back},
    )
    log = tmp_path / "worker.log"
    worker = Worker(config, models_env(tmp_path), log).start()
    expected = (ends[0] - 500 - 399) + (ends[1] - 300)
    reader = TopicReader(tansu.bootstrap, "predictions", 2)
    try:
        wait_until(lambda: reader.read() >= staged + expected, 90, "outputs", (worker,))
        wait_until(
            lambda: committed(tansu.bootstrap, GROUP, "events", 2) == ends, 30, "commits", (worker,)
        )
        assert worker_metrics(metrics_port(worker))["headrace_records_read_back_total"] == 399
        assert worker.terminate() == 0, worker.tail()
    finally:
        worker.stop()
        reader.read()
        reader.close()
    scored: dict[int, list[int]] = defaultdict(list)
    for value in reader.values:
        out = msgspec.json.decode(value)
        if "model" in out:  # the worker's, not the staged ones
            scored[out["source"]["partition"]].append(out["source"]["offset"])
    assert sorted(scored[0]) == [650, *range(900, ends[0])]
    assert sorted(scored[1]) == list(range(300, ends[1]))
    text = log.read_text()
    assert "outputs read back from predictions" in text
    assert "events[0] committed 500: 399 already written (starts at 650, 249 more" in text
    assert "events[1]" not in text.split("outputs read back")[1].splitlines()[0]


def test_read_back_off_writes_them_again(tansu: TansuBroker, tmp_path: Path) -> None:
    """``runtime.read_back: 0`` reads nothing back: every record past the commit is
    written again, as before."""
    from workers import reference_events

    tansu.create_topic("events", 2)
    tansu.create_topic("predictions", 2)
    tansu.produce_json("events", reference_events(N), key_field="entity_id")
    ends = _stage_crash(tansu, tansu.consume_all("events", N))
    config = kafka_pipeline(
        tmp_path / "p.yaml",
        tansu.bootstrap,
        sinks="  - type: kafka\n    topic: predictions",
        group=GROUP,
        runtime={"read_back": 0},
    )
    worker = Worker(config, models_env(tmp_path), tmp_path / "worker.log").start()
    expected = 499 + (ends[0] - 500) + (ends[1] - 300)
    reader = TopicReader(tansu.bootstrap, "predictions", 2)
    try:
        wait_until(lambda: reader.read() >= expected, 90, "outputs", (worker,))
        assert worker.terminate() == 0, worker.tail()
    finally:
        worker.stop()
        reader.read()
        reader.close()
    assert len(reader.values) == expected
