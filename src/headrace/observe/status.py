"""The dashboard's figures over time: a status sampled once a second, its totals turned
into rates, and a few minutes of history for the charts.

Pure apart from the sampling loop: the clock comes in with each status (its ``time``), so
the arithmetic is tested without waiting.

>>> board = StatusBoard(keep=3)
>>> def status(t, n_in, n_out, batches, lag):
...     return {"time": t, "latency": {"p50": None, "p99": None}, "in_flight": {"records": 0},
...             "totals": {"in": n_in, "out": n_out, "batches": batches,
...                        "batched_records": n_out},
...             "lag": [{"records": lag, "seconds": 0.5}]}
>>> _ = board.add(status(10.0, 0, 0, 0, 0))
>>> _ = board.add(status(12.0, 100, 80, 4, 7))
>>> point = board.history()[-1]
>>> point["in_rate"], point["out_rate"], point["batch"], point["lag_records"]
(50.0, 40.0, 20.0, 7)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable
from typing import Any

log = logging.getLogger("headrace")

#: Five minutes of history at one status a second.
HISTORY = 300


class StatusBoard:
    """Keeps the latest status and ``keep`` points of history; :meth:`run` samples
    ``status()`` every ``every`` seconds and wakes whoever :meth:`wait`\\ s for the next."""

    def __init__(
        self,
        status: Callable[[], dict[str, Any]] | None = None,
        *,
        every: float = 1.0,
        keep: int = HISTORY,
    ) -> None:
        self.status = status
        self.every = every
        self.points: deque[dict[str, Any]] = deque(maxlen=keep)
        self.latest: dict[str, Any] | None = None
        self._changed = asyncio.Condition() if status is not None else None

    def add(self, status: dict[str, Any]) -> dict[str, Any]:
        """Take a status; returns it with ``rates`` (per second since the one before)."""
        before = self.latest
        totals = status["totals"]
        rates = {"in": 0.0, "out": 0.0, "batch": 0.0}
        if before is not None:
            dt = status["time"] - before["time"]
            was = before["totals"]
            if dt > 0:
                # Never below zero: the totals start again when a run starts.
                rates["in"] = max(0.0, (totals["in"] - was["in"]) / dt)
                rates["out"] = max(0.0, (totals["out"] - was["out"]) / dt)
            batches = totals["batches"] - was["batches"]
            if batches > 0:
                rates["batch"] = (totals["batched_records"] - was["batched_records"]) / batches
        lag = status["lag"]
        point = {
            "time": status["time"],
            "in_rate": rates["in"],
            "out_rate": rates["out"],
            "batch": rates["batch"],
            "p50": status["latency"]["p50"],
            "p99": status["latency"]["p99"],
            "in_flight": status["in_flight"]["records"],
            "lag_records": sum(p["records"] for p in lag),
            "lag_seconds": max((p["seconds"] for p in lag), default=0.0),
        }
        self.points.append(point)
        status = {**status, "rates": rates, "point": point}
        self.latest = status
        return status

    def history(self) -> list[dict[str, Any]]:
        return list(self.points)

    def current(self) -> dict[str, Any]:
        """The latest status (sampled now if none was yet)."""
        if self.latest is None:
            assert self.status is not None
            self.add(self.status())
        assert self.latest is not None
        return self.latest

    async def run(self) -> None:
        """Sample until cancelled; a failing sample is logged and skipped (the dashboard
        must never take the pipeline down)."""
        assert self.status is not None and self._changed is not None
        while True:
            try:
                self.add(self.status())
            except Exception as exc:
                log.debug("sampling the status failed: %s", exc)
            async with self._changed:
                self._changed.notify_all()
            await asyncio.sleep(self.every)

    async def wait(self) -> dict[str, Any]:
        """The next status sampled."""
        assert self._changed is not None
        async with self._changed:
            await self._changed.wait()
        return self.current()

    @contextlib.asynccontextmanager
    async def running(self) -> Any:
        task = asyncio.create_task(self.run(), name="headrace-status")
        try:
            yield self
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
