"""In-process counters a running pipeline keeps for its live line and summary."""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

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
    # Dead letters by (stage, error type), and the latest outputs an alert sink (a sink with
    # a filter) took: for the dashboard and /api/status.
    failed_by: dict[tuple[str, str], int] = field(default_factory=dict)
    recent_alerts: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=20))

    @property
    def mean_batch_size(self) -> float:
        return self.batched_records / self.batches if self.batches else 0.0

    def restart(self) -> None:
        """Count from zero again, from now (a run starts), keeping the sinks' names."""
        fresh = EngineStats(written=dict.fromkeys(self.written, 0))
        self.__dict__.update(fresh.__dict__)

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started_at

    def summary(
        self, *, committed: dict[tuple[str, int], int], stopped: bool, peaks: tuple[int, int]
    ) -> RunSummary:
        """What the run did so far: these totals, the positions committed, whether it was
        stopped, and the peaks in flight (records, bytes)."""
        return RunSummary(
            records_in=self.records_in,
            records_out=self.records_out,
            records_failed=self.records_failed,
            batches=self.batches,
            mean_batch_size=self.mean_batch_size,
            elapsed=self.elapsed,
            latency_p50=self.latency.percentile(50),
            latency_p99=self.latency.percentile(99),
            written=dict(self.written),
            committed=dict(committed),
            stopped=stopped,
            records_shed=self.records_shed,
            peak_in_flight=peaks[0],
            peak_in_flight_bytes=peaks[1],
        )


@dataclass
class RunSummary:
    """What a run did, for the command line and for tests."""

    records_in: int
    records_out: int
    records_failed: int
    batches: int
    mean_batch_size: float
    elapsed: float
    latency_p50: float
    latency_p99: float
    written: dict[str, int]
    committed: dict[tuple[str, int], int] = field(default_factory=dict)
    stopped: bool = False
    records_shed: int = 0
    peak_in_flight: int = 0
    peak_in_flight_bytes: int = 0

    @property
    def records_per_second(self) -> float:
        return self.records_out / self.elapsed if self.elapsed > 0 else 0.0
