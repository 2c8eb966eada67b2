"""A built-in source of synthetic IoT sensor events, for demos, tests and benchmarks."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator
from typing import Any

import numpy as np

from headrace.batch import RecordBatch
from headrace.connectors.base import DecodedSource

PRIORITIES = ("high", "normal", "low")
TYPES = ("reading", "reading", "reading", "reading", "heartbeat", "alarm")
N_FEATURES = 8


class SensorEvents:
    """Seeded synthetic sensor events in the reference shape.

    Each event is ``{"id", "entity_id", "ts", "value", "features": [8 floats], "priority",
    "type"}``. Every entity has its own baseline; a fraction ``anomaly_rate`` of events is
    pushed far from it (the injected anomalies a model should flag).

    >>> gen = SensorEvents(entities=3, seed=1)
    >>> events, anomalies = gen.make(start_id=0, n=2, ts=100.0)
    >>> sorted(events[0])
    ['entity_id', 'features', 'id', 'priority', 'ts', 'type', 'value']
    """

    def __init__(self, *, entities: int = 100, anomaly_rate: float = 0.01, seed: int = 0) -> None:
        if entities < 1:
            raise ValueError(f"entities must be at least 1, got {entities}")
        if not 0.0 <= anomaly_rate <= 1.0:
            raise ValueError(f"anomaly_rate must be between 0 and 1, got {anomaly_rate}")
        self.entities = entities
        self.anomaly_rate = anomaly_rate
        self._rng = np.random.default_rng(seed)
        self._baseline = self._rng.normal(0.0, 0.5, size=(entities, N_FEATURES))
        self._names = np.array([f"sensor-{i:05d}" for i in range(entities)], dtype=object)

    def features(self, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Entity indices, feature rows and the anomaly mask for ``n`` events."""
        rng = self._rng
        ent = rng.integers(0, self.entities, size=n)
        feats = self._baseline[ent]
        feats += rng.standard_normal(size=(n, N_FEATURES))  # normal(0, 1)'s draws
        anomalous = rng.random(n) < self.anomaly_rate
        k = int(np.count_nonzero(anomalous))
        if k:
            # rng.choice([-1.0, 1.0], size=...) draws exactly these integers (the same
            # stream; a test holds it), without choice's 14 us of argument handling.
            signs = _SIGNS[rng.integers(0, 2, size=(k, N_FEATURES))]
            feats[anomalous] += signs * rng.uniform(4.0, 7.0, size=(k, N_FEATURES))
        return ent, feats, anomalous

    def make(self, *, start_id: int, n: int, ts: float) -> tuple[list[dict[str, Any]], int]:
        """``n`` events stamped ``ts``, and how many of them are injected anomalies."""
        batch, anomalies = self.batch(topic="generator", partition=0, start_id=start_id, n=n, ts=ts)
        return event_values(batch), anomalies

    def batch(
        self, *, topic: str, partition: int, start_id: int, n: int, ts: float
    ) -> tuple[RecordBatch, int]:
        """``n`` events stamped ``ts`` as a :class:`RecordBatch` at offsets ``start_id ..``
        (an event's id is its offset), and how many of them are injected anomalies: its
        columns are the events' fields, its records built only if asked for."""
        ent, feats, anomalous = self.features(n)
        rng = self._rng
        value = feats.sum(axis=1).round(4)
        # rng.choice(3, size=n, p=PRIORITY_WEIGHTS), the same draws at a third of the cost.
        prio = _PRIORITY_CDF.searchsorted(rng.random(n), side="right")
        kinds = rng.integers(0, len(TYPES), size=n)
        batch = RecordBatch(
            topic=topic,
            partition=partition,
            offsets=range(start_id, start_id + n),
            keys=self._names[ent].tolist(),
            event_times=np.full(n, ts, dtype=np.float64),
            columns={
                "value": value,
                "features": feats.round(5),
                "priority": _PRIORITIES[prio],
                "type": _TYPES[kinds],
            },
            values_from=event_values,
        )
        return batch, int(anomalous.sum())


_PRIORITIES = np.array(PRIORITIES, dtype=object)
PRIORITY_WEIGHTS = (0.1, 0.7, 0.2)
# As Generator.choice computes it from p.
_PRIORITY_CDF = np.cumsum(PRIORITY_WEIGHTS)
_PRIORITY_CDF /= _PRIORITY_CDF[-1]
_SIGNS = np.array([-1.0, 1.0])
_TYPES = np.array(TYPES, dtype=object)


def event_values(batch: RecordBatch) -> list[dict[str, Any]]:
    """The events of a :meth:`SensorEvents.batch`, as their JSON objects."""
    c = batch.columns
    return [
        {
            "id": i,
            "entity_id": k,
            "ts": t,
            "value": v,
            "features": f,
            "priority": p,
            "type": y,
        }
        for i, k, t, v, f, p, y in zip(
            batch.offsets,
            batch.keys,
            batch.event_times.tolist(),
            c["value"].tolist(),
            c["features"].tolist(),
            c["priority"].tolist(),
            c["type"].tolist(),
            strict=True,
        )
    ]


def planned_events(rate: float, count: int | None, seconds: float | None) -> int | None:
    """How many events a run paced at ``rate`` per second emits: ``rate * seconds``
    (rounded to a whole number), or ``count`` if that is fewer; ``None`` when neither
    bounds the run (or when it is unpaced, ``rate`` 0, and ``seconds`` is a time limit).

    Event ``i`` (from 0) is due ``i / rate`` seconds after the start, so the events of
    ``seconds`` seconds are the ``rate * seconds`` due before it ends.

    >>> planned_events(2000, None, 0.5), planned_events(100, 20, 1.0), planned_events(0, None, 1.0)
    (1000, 20, None)
    """
    planned = None if seconds is None or not rate else round(rate * seconds)
    if count is None:
        return planned
    return count if planned is None else min(count, planned)


class GeneratorSource(DecodedSource):
    """Emits :class:`SensorEvents` at ``rate`` events per second (0: as fast as possible),
    for ``count`` events or ``seconds`` seconds, or until stopped.

    Paced (``rate`` above 0), ``seconds`` means exactly ``rate * seconds`` events (rounded
    to a whole number; fewer if ``count`` says so): event ``i`` is due ``i / rate`` seconds
    after the start. A source held back by flow control catches up on the events that fell
    due meanwhile, so it may end after ``seconds``, never with fewer events. Unpaced,
    ``seconds`` is a time limit.

    Record positions are ``(topic, 0, id)``; event time is the wall-clock time of emission.
    Each chunk is a :class:`RecordBatch`: the engine scores it from its columns.
    """

    def __init__(
        self,
        *,
        rate: float = 1000.0,
        count: int | None = None,
        seconds: float | None = None,
        entities: int = 100,
        anomaly_rate: float = 0.01,
        seed: int = 0,
        chunk_size: int = 512,
        topic: str = "generator",
        name: str = "generator",
    ) -> None:
        if rate < 0:
            raise ValueError(f"rate must not be negative, got {rate}")
        self.events = SensorEvents(entities=entities, anomaly_rate=anomaly_rate, seed=seed)
        self.rate = rate
        self.count = count
        self.seconds = seconds
        self.chunk_size = chunk_size
        self.topic = topic
        self.name = name
        self.emitted = 0
        self.anomalies = 0

    async def chunks(self) -> AsyncIterator[RecordBatch]:
        start = time.monotonic()
        rate = self.rate
        total = planned_events(rate, self.count, self.seconds)
        # Unpaced, `seconds` is a time limit; paced, it was turned into `total`.
        deadline = start + self.seconds if self.seconds is not None and not rate else None
        topic = self.topic
        while total is None or self.emitted < total:
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                return
            n = self.chunk_size
            if rate:
                # Events 0 .. due-1 are due by now (event i at start + i / rate).
                due = math.floor((now - start) * rate) + 1 - self.emitted
                if due <= 0:
                    await asyncio.sleep(max(start + self.emitted / rate - now, 0.0))
                    continue
                n = min(n, due)
            if total is not None:
                n = min(n, total - self.emitted)
            batch, anomalies = self.events.batch(
                topic=topic, partition=0, start_id=self.emitted, n=n, ts=time.time()
            )
            self.anomalies += anomalies
            self.emitted += n
            yield batch
            if not self.rate:
                # Unpaced: let the rest of the pipeline run between chunks.
                await asyncio.sleep(0)
