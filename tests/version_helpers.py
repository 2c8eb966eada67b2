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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

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


@dataclass(frozen=True)
class Linear:
    """``features . w + b`` (``relu`` of it, with ``relu``): what a version computes."""

    w: list[float]
    b: float
    relu: bool = False

    def __call__(self, x: Any) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32).reshape(-1, len(self.w))
        y = x @ np.asarray(self.w, dtype=np.float32) + np.float32(self.b)
        return np.maximum(y, 0) if self.relu else y

    def onnx(self, path: Path) -> Path:
        """The same function as an ONNX graph (MatMul, Add, optionally Relu)."""
        from onnx import TensorProto, checker, helper, numpy_helper

        w = np.asarray(self.w, dtype=np.float32).reshape(len(self.w), 1)
        top = "lin" if self.relu else "y"
        nodes = [
            helper.make_node("MatMul", ["x", "w"], ["xw"]),
            helper.make_node("Add", ["xw", "b"], [top]),
        ]
        if self.relu:
            nodes.append(helper.make_node("Relu", ["lin"], ["y"]))
        graph = helper.make_graph(
            nodes,
            "linear",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, len(self.w)])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 1])],
            [
                numpy_helper.from_array(w, "w"),
                numpy_helper.from_array(np.asarray([self.b], np.float32), "b"),
            ],
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8  # what opset 17 needs; newer IRs may outrun onnxruntime
        checker.check_model(model)
        path.write_bytes(model.SerializeToString())
        return path
