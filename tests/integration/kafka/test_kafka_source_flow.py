"""The Kafka source under flow control, against a real broker: pausing stops fetching
while the consumer keeps polling, partitions pause one by one, and lag is read from the
broker while a partition is paused (its cached high watermark would stand still)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from headrace.connectors.kafka import KafkaSource
from headrace.record import Record
from kafka_helpers import TansuBroker
from workers import reference_events

pytestmark = pytest.mark.kafka


async def until(condition: Any, timeout: float, what: str) -> None:  # noqa: ASYNC109
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def source(tansu: TansuBroker, topic: str) -> KafkaSource:
    return KafkaSource(
        [topic],
        group_id=f"flow-{topic}",
        settings=tansu.client_config(
            **{"session.timeout.ms": 6000, "fetch.wait.max.ms": 10, "fetch.queue.backoff.ms": 10}
        ),
        max_records=100,
        poll_timeout=0.05,
    )


async def drain(chunks: AsyncIterator[list[Record]], into: list[Record]) -> None:
    async for chunk in chunks:
        into.extend(chunk)


async def test_paused_partitions_stop_fetching_and_lag_grows(tansu: TansuBroker) -> None:
    topic = tansu.create_topic("flow-lag", 2)
    tansu.produce_json(topic, reference_events(200), partition=0)
    tansu.produce_json(topic, reference_events(200), partition=1)
    src = source(tansu, topic)
    await src.open()
    got: list[Record] = []
    reader = asyncio.create_task(drain(src.chunks(), got))
    try:
        await until(lambda: len(got) >= 400, 30, "the first 400 records")
        assert sorted(src.assigned()) == [(topic, 0), (topic, 1)]

        # Hold partition 0 only: partition 1 keeps flowing.
        src.pause_partitions([(topic, 0)], True)
        await until(lambda: src.paused_partitions() == [(topic, 0)], 10, "partition 0 paused")
        for _ in range(3):  # three record batches: Tansu leaves the last out of the watermark
            tansu.produce_json(topic, reference_events(100), partition=0)
        tansu.produce_json(topic, reference_events(300), partition=1)
        await until(lambda: sum(r.partition == 1 for r in got) >= 500, 30, "partition 1 read")
        assert sum(r.partition == 0 for r in got) == 200

        # Lag counts what waits in the paused partition, asked of the broker (a cached
        # watermark would stand still): at least the first two of the three batches.
        lag = await src.lag()
        assert lag[(topic, 0)][0] >= 200
        assert lag[(topic, 0)][1] > 0  # seconds since the last record read was produced

        # Everything paused, then resumed: nothing is read while paused, all of it after.
        src.set_paused(True)
        await until(lambda: len(src.paused_partitions()) == 2, 10, "both paused")
        for _ in range(2):
            tansu.produce_json(topic, reference_events(50), partition=1)
        before = len(got)
        lag = await src.lag()
        assert lag[(topic, 1)][0] >= 50 and len(got) == before
        src.set_paused(False)
        src.pause_partitions([(topic, 0)], False)
        await until(lambda: len(got) >= 1100, 30, "all 1100 records")
        assert src.paused_partitions() == []
        offsets = sorted((r.partition, r.offset) for r in got)
        assert offsets == [(0, o) for o in range(500)] + [(1, o) for o in range(600)]
    finally:
        reader.cancel()
        with pytest.raises(asyncio.CancelledError):
            await reader
        await src.close()
