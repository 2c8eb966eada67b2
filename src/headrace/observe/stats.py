"""In-process counters a running pipeline keeps for its live line and summary."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np


class LatencyWindow:
    """The most recent ``size`` latencies, for percentiles over a sliding window.

    >>> w = LatencyWindow(size=4)
    >>> w.add(np.array([1.0, 2.0, 3.0, 4.0, 5.0]))
    >>> float(w.percentile(50))
    3.5
    """

    def __init__(self, size: int = 20_000) -> None:
        self._buf = np.zeros(size)
        self._next = 0
        self._filled = 0

    def add(self, values: np.ndarray) -> None:
        size = len(self._buf)
        values = values[-size:]
        n = len(values)
        end = self._next + n
        if end <= size:
            self._buf[self._next : end] = values
        else:
            first = size - self._next
            self._buf[self._next :] = values[:first]
            self._buf[: n - first] = values[first:]
        self._next = end % size
        self._filled = min(size, self._filled + n)

    def percentile(self, q: float) -> float:
        if not self._filled:
            return float("nan")
        return float(np.percentile(self._buf[: self._filled], q))


@dataclass
class EngineStats:
    """Totals since the pipeline started. Updated once per batch, never per record."""

    records_in: int = 0
    records_out: int = 0
    records_failed: int = 0
    records_shed: int = 0
    batches: int = 0
    batched_records: int = 0
    inference_seconds: float = 0.0
    started_at: float = field(default_factory=time.monotonic)
    latency: LatencyWindow = field(default_factory=LatencyWindow)
    written: dict[str, int] = field(default_factory=dict)

    @property
    def mean_batch_size(self) -> float:
        return self.batched_records / self.batches if self.batches else 0.0

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started_at
