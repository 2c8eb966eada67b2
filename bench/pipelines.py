"""What the Kafka benchmarks share: their pipelines' YAML, and a paced input producer."""

from __future__ import annotations

import threading
import time
from typing import Any

import msgspec
from confluent_kafka import Producer

from headrace.connectors.generator import PRIORITIES, SensorEvents

TICK = 0.01  # the paced producer produces what is due every 10 ms


def kafka_source(bootstrap: str, topic: str, group: str) -> str:
    """The ``kafka`` and ``source`` sections every Kafka benchmark uses: the settings that
    suit the local Tansu broker (short idle fetches, a fast group join, batching
    producers), the reference events keyed by entity with their own event time. Ends
    without a newline, so that more ``source`` keys can follow."""
    return f"""\
kafka:
  bootstrap_servers: {bootstrap}
  consumer:
    session.timeout.ms: 6000
    fetch.wait.max.ms: 10
  producer:
    linger.ms: 5
source:
  type: kafka
  topics: [{topic}]
  group_id: {group}
  key_field: entity_id
  time_field: ts"""


class PacedProducer(threading.Thread):
    """Reference events at ``rate``/s for ``seconds`` in a thread, ids from 0, ``ts`` when
    produced, keyed by entity; keeps each one's ts and priority lane, and how many were
    handed to the producer so far. What is due is produced every ``TICK`` s, at most
    ``chunk`` at a time, with ``linger_ms`` (Tansu's CPU grows with the number of record
    batches: at 2,000/s over 4 partitions, 5 ms would make batches of 2 or 3 records)."""

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        rate: float,
        seconds: float,
        *,
        entities: int,
        linger_ms: int,
        chunk: int,
    ) -> None:
        super().__init__(name="paced-producer", daemon=True)
        self.bootstrap, self.topic, self.rate, self.seconds = bootstrap, topic, rate, seconds
        self.entities, self.linger_ms, self.chunk = entities, linger_ms, chunk
        self.produced = 0
        self.ts: list[float] = []
        self.priority: list[int] = []
        self.failed = 0
        self.started_at = 0.0  # wall clock
        self.elapsed = 0.0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._run()
        except BaseException as exc:
            self.error = exc

    def _run(self) -> None:
        def delivered(err: Any, _msg: Any) -> None:
            if err is not None:
                self.failed += 1

        producer = Producer(
            {
                "bootstrap.servers": self.bootstrap,
                "linger.ms": self.linger_ms,
                "delivery.report.only.error": True,
                "on_delivery": delivered,
            }
        )
        gen = SensorEvents(entities=self.entities, seed=5)
        encode = msgspec.json.Encoder().encode
        lane = {p: i for i, p in enumerate(PRIORITIES)}
        rate, topic = self.rate, self.topic
        start = time.monotonic()
        self.started_at = time.time()
        deadline = start + self.seconds
        tick = start
        while True:
            # Every TICK, what is due since the last one: one record per wake-up would
            # cost this process most of a core.
            tick += TICK
            now = time.monotonic()
            if tick > now:
                producer.poll(tick - now)
                now = time.monotonic()
            if now >= deadline:
                break
            due = int((now - start) * rate) - self.produced
            if due <= 0:
                continue
            events, _ = gen.make(start_id=self.produced, n=min(due, self.chunk), ts=time.time())
            for e in events:
                while True:
                    try:
                        producer.produce(topic, encode(e), e["entity_id"])
                        break
                    except BufferError:
                        producer.poll(0.05)
            self.ts.extend(e["ts"] for e in events)
            self.priority.extend(lane[e["priority"]] for e in events)
            self.produced += len(events)
            producer.poll(0)
        self.elapsed = time.monotonic() - start
        self.failed += producer.flush(30)
