"""Fakes and engine factories shared by the engine's test files, one per part of the
engine (``test_backpressure``, ``test_commits``, ``test_outputs``, ``test_stages``, ...):
``from unit.runtime.engine_helpers import make_engine``. Sources and sinks in memory,
models gated by the test."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

from headrace import CallableModel, EngineSettings, GeneratorSource
from headrace.connectors.base import DecodedSource, PartitionedSource, Sink, Source
from headrace.record import Record
from headrace.runtime.engine import Engine
from headrace.runtime.priority import Priorities, ShedPolicy
from headrace.runtime.scoring import FailurePolicy
from headrace.runtime.spec import PipelineSpec
from headrace.windows import Count, Max, Sum, Tumbling, WindowOperator
from headrace.windows.stage import WindowStage
from helpers import ListSource, MemorySink

FAST_FAILURES = FailurePolicy(backoff=0.001, max_backoff=0.005)


# -- an engine with a plain model ----------------------------------------------------------


def double(xs: list[dict[str, Any]]) -> list[float]:
    return [x["x"] * 2 for x in xs]


def engine(
    source: ListSource | GeneratorSource,
    sink: MemorySink,
    model: Any = None,
    *,
    dead_letter: MemorySink | None = None,
    **settings: Any,
) -> Engine:
    defaults: dict[str, Any] = {"max_batch_size": 16, "max_wait": 0.005, "commit_interval": 0.05}
    defaults.update(settings)
    return Engine(
        PipelineSpec(
            source=source,
            model=model or CallableModel(double, name="double", version="7"),
            sinks=[sink],
            dead_letter=dead_letter,
            settings=EngineSettings(**defaults),
        )
    )


# -- an engine under load: models gated by the test ---------------------------------------


class Gate:
    """A model whose calls each take a permit: with none given, every call blocks (in its
    executor thread) until the test opens the gate. Records the ids of each call."""

    def __init__(self, permits: int = 0) -> None:
        self._permits = threading.Semaphore(permits)
        self._lock = threading.Lock()
        self.calls: list[list[int]] = []

    def __call__(self, xs: list[dict[str, Any]]) -> list[float]:
        with self._lock:
            self.calls.append([x["id"] for x in xs])
        if not self._permits.acquire(timeout=10):
            raise RuntimeError("the test never opened the gate")
        return [float(x["id"]) for x in xs]

    def open(self, n: int = 10_000) -> None:
        self._permits.release(n)

    @property
    def scored_order(self) -> list[int]:
        with self._lock:
            return [i for call in self.calls for i in call]


class ScriptedSource(DecodedSource):
    """Yields a chunk per poll; ``wait_before`` holds chunk ``i`` back until its event is
    set. Paused, it fetches nothing but goes on being polled; ``calls`` records every
    :meth:`set_paused`."""

    def __init__(
        self, chunks: list[list[Record]], wait_before: Mapping[int, asyncio.Event] | None = None
    ) -> None:
        self._chunks = chunks
        self.wait_before = dict(wait_before or {})
        self.paused = False
        self.calls: list[bool] = []
        self.polls_while_paused = 0
        self.taken = 0
        self.commits: list[dict[tuple[str, int], int]] = []

    def set_paused(self, paused: bool) -> None:
        self.calls.append(paused)
        self.paused = paused

    async def chunks(self) -> AsyncIterator[list[Record]]:
        while self.taken < len(self._chunks):
            if self.paused:
                self.polls_while_paused += 1
                await asyncio.sleep(0.001)  # one empty poll
                continue
            gate = self.wait_before.get(self.taken)
            if gate is not None and not gate.is_set():
                await gate.wait()
                continue
            chunk = self._chunks[self.taken]
            self.taken += 1
            yield chunk
            await asyncio.sleep(0)  # a real poll awaits I/O

    async def commit(self, positions: Mapping[tuple[str, int], int]) -> None:
        self.commits.append(dict(positions))

    @property
    def committed(self) -> dict[tuple[str, int], int]:
        merged: dict[tuple[str, int], int] = {}
        for c in self.commits:
            merged.update(c)
        return merged


class PollingSource(ScriptedSource, PartitionedSource):
    """A source that must keep being polled (like Kafka): the engine pauses it by
    :meth:`set_paused`, and goes on polling it."""


class RawSource(Source):
    """Delivers bytes for the engine's decoder, like Kafka or MQTT; counts the chunks taken
    and records commits."""

    def __init__(self, chunks: list[list[Record]]) -> None:
        self._chunks = chunks
        self.taken = 0
        self.commits: list[dict[tuple[str, int], int]] = []

    async def chunks(self) -> AsyncIterator[list[Record]]:
        for chunk in self._chunks:
            self.taken += 1
            yield chunk

    async def commit(self, positions: Mapping[tuple[str, int], int]) -> None:
        self.commits.append(dict(positions))

    @property
    def committed(self) -> dict[tuple[str, int], int]:
        merged: dict[tuple[str, int], int] = {}
        for c in self.commits:
            merged.update(c)
        return merged


def raw_records(n: int, *, size: int | None = None, bad: Sequence[int] = ()) -> list[Record]:
    """``n`` records with JSON bytes and no value; padded to ``size`` bytes each if given;
    the offsets in ``bad`` hold bytes that are not JSON."""
    out: list[Record] = []
    for i in range(n):
        doc: dict[str, Any] = {"id": i, "x": float(i), "pad": ""}
        raw = json.dumps(doc).encode()
        if size is not None:
            doc["pad"] = "p" * (size - len(raw))
            raw = json.dumps(doc).encode()
            assert len(raw) == size
        if i in bad:
            raw = b"{not json" + raw
        out.append(
            Record(
                key=None,
                value=None,
                event_time=time.time(),
                topic="t",
                partition=0,
                offset=i,
                raw=raw,
            )
        )
    return out


def chunked(rs: list[Record], size: int) -> list[list[Record]]:
    return [rs[i : i + size] for i in range(0, len(rs), size)]


def make_engine(
    source: Source,
    model: Any,
    *,
    sink: MemorySink | None = None,
    dead_letter: MemorySink | None = None,
    priorities: Priorities | None = None,
    shedding: ShedPolicy | None = None,
    shed_sink: MemorySink | None = None,
    failures: FailurePolicy | None = FAST_FAILURES,
    **settings: Any,
) -> Engine:
    defaults: dict[str, Any] = {
        "max_batch_size": 10,
        "max_wait": 0.005,
        "max_concurrency": 1,
        "commit_interval": 0.02,
    }
    defaults.update(settings)
    return Engine(
        PipelineSpec(
            source=source,
            model=CallableModel(model, name="gated"),
            sinks=[sink if sink is not None else MemorySink()],
            dead_letter=dead_letter,
            priorities=priorities,
            shedding=shedding,
            shed_sink=shed_sink,
            failures=failures,
            settings=EngineSettings(**defaults),
        )
    )


def metric(eng: Engine, name: str, **labels: str) -> float:
    value = eng.metrics.registry.get_sample_value(name, labels or None)
    return 0.0 if value is None else value


# -- an engine with a windows stage ----------------------------------------------------


def total(values: list[Any]) -> list[float]:
    return [float(v["total"]) for v in values]


MODEL = CallableModel(total, name="sum", version="1")


def operator(**kw: Any) -> WindowOperator:
    return WindowOperator(
        Tumbling(10),
        {"n": (None, Count()), "total": ("amount", Sum()), "top": ("amount", Max())},
        key_field="user",
        time_source="ts",
        **kw,
    )


def events(n: int, *, partitions: int = 1, users: int = 5, start: int = 0) -> list[Record]:
    """Event time 1 s apart per partition, in order; amounts 1..n. Keyed like a Kafka
    topic: each user's events are in one partition."""
    out = []
    for i in range(start, start + n):
        p = i % partitions
        value = {"user": f"p{p}u{i % users}", "ts": float(i // partitions), "amount": i + 1}
        out.append(
            Record(
                key=None,
                value=value,
                event_time=0.0,
                topic="t",
                partition=p,
                offset=i // partitions,
            )
        )
    return out


def expected(records: list[Record]) -> dict[tuple[Any, float], tuple[int, float]]:
    """Batch recomputation: per (user, window start), the count and sum."""
    out: dict[tuple[Any, float], list[float]] = defaultdict(lambda: [0, 0.0])
    for r in records:
        v = r.value
        acc = out[(v["user"], v["ts"] // 10 * 10)]
        acc[0] += 1
        acc[1] += v["amount"]
    return {k: (int(c), s) for k, (c, s) in out.items()}


def got(sink: MemorySink) -> dict[tuple[Any, float], tuple[int, float]]:
    return {
        (o["key"], o["window"]["start"]): (o["count"], o["features"]["total"]) for o in sink.outputs
    }


def windowed_engine(
    source: Any, stage: WindowStage, sink: Sink, commit_interval: float = 0.05, **kw: Any
) -> Engine:
    settings = EngineSettings(max_wait=0.001, commit_interval=commit_interval, window_tick=0.01)
    return Engine(
        PipelineSpec(
            source=source, model=MODEL, sinks=[sink], windows=stage, settings=settings, **kw
        )
    )
