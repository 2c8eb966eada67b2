"""Fakes for live model updates: `from version_helpers import FakeSource, VersionModel`.

A :class:`FakeSource` is an in-memory model registry behind one alias: versions map to the
functions that score a batch (or to the exception their load raises), the alias is moved
with :meth:`FakeSource.point`, and everything the manager asks of it is recorded.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

from headrace import CallableModel
from headrace.record import Record
from helpers import ListSource


def digest(name: str, version: str) -> str:
    """A stand-in sha256 of a version's artifact (64 hex digits, distinct per version)."""
    return hashlib.sha256(f"{name}/{version}".encode()).hexdigest()


class VersionModel(CallableModel):
    """A CallableModel with the registry's ``sha256``, which counts its ``close()`` calls."""

    def __init__(self, fn: Callable[[Any], Any], *, name: str, version: str) -> None:
        super().__init__(fn, name=name, version=version)
        self.sha256 = digest(name, version)
        self.closed = 0

    def close(self) -> None:
        self.closed += 1


Spec = Callable[[Any], Any] | BaseException


class FakeSource:
    """A ModelSource in memory. ``versions`` maps a version to the batch function of its
    model, or to the exception ``load`` raises for it (a version that must not serve)."""

    def __init__(self, versions: Mapping[str, Spec], latest: str, *, name: str = "m") -> None:
        self.name = name
        self.versions = dict(versions)
        self.current = latest
        self.history: list[str] = []
        self.loads: list[str] = []
        self.models: dict[str, VersionModel] = {}
        self.rolled_back: list[str] = []
        self.rolled_back_to: list[str | None] = []
        self.rolled = threading.Event()
        self.polls = 0
        self.fail_latest: list[BaseException] = []
        self._lock = threading.Lock()

    def describe(self) -> str:
        return f"fake:{self.name}@production"

    def __str__(self) -> str:
        return self.describe()

    def point(self, version: str) -> None:
        """Move the alias (a promotion)."""
        with self._lock:
            self.history.append(self.current)
            self.current = version

    def latest(self) -> str:
        with self._lock:
            self.polls += 1
            if self.fail_latest:
                raise self.fail_latest.pop(0)
            return self.current

    def load(self, version: str) -> VersionModel:
        with self._lock:
            self.loads.append(version)
        spec = self.versions[version]
        if isinstance(spec, BaseException):
            raise spec
        model = VersionModel(spec, name=self.name, version=version)
        self.models[version] = model
        return model

    def roll_back(self, bad_version: str, to: str | None = None) -> None:
        with self._lock:
            self.rolled_back.append(bad_version)
            self.rolled_back_to.append(to)
            if self.current == bad_version and to is not None:
                self.current = to
            elif self.current == bad_version and self.history:
                self.current = self.history.pop()
        self.rolled.set()


class FeedSource(ListSource):
    """A ListSource fed while the engine runs: :meth:`put` a chunk, :meth:`end` to finish."""

    def __init__(self) -> None:
        super().__init__([])
        self._queue: asyncio.Queue[list[Record] | None] = asyncio.Queue()

    def put(self, chunk: list[Record]) -> None:
        self._queue.put_nowait(chunk)

    def end(self) -> None:
        self._queue.put_nowait(None)

    async def chunks(self) -> AsyncIterator[list[Record]]:
        while (chunk := await self._queue.get()) is not None:
            yield chunk


def make_records(
    start: int, n: int, *, partitions: int = 1, keys: int | None = None, topic: str = "t"
) -> list[Record]:
    """Records with ids ``start .. start+n-1``; id ``i`` is in partition ``i % partitions``
    at offset ``i // partitions`` (so batches made by separate calls line up), keyed
    ``k<i % keys>`` (``k<i>`` without ``keys``), with value ``{"id", "key", "x"}``."""
    out = []
    for i in range(start, start + n):
        key = f"k{i % keys if keys else i}"
        value = {"id": i, "key": key, "x": float(i)}
        out.append(
            Record(
                key=key,
                value=value,
                event_time=time.time(),
                topic=topic,
                partition=i % partitions,
                offset=i // partitions,
            )
        )
    return out
