"""The live progress line and the end-of-run summary, for people at a terminal."""

from __future__ import annotations

import asyncio
import contextlib
import math
import time

from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.text import Text

from headrace.observe.stats import EngineStats, RunSummary


def _ms(seconds: float) -> str:
    """A latency or a run's length in the unit a person reads best (replayed history can be
    days old; a run over a small file takes milliseconds).

    >>> _ms(0.0032), _ms(3.456), _ms(600.0)
    ('3.2 ms', '3.46 s', '10.0 min')
    """
    if math.isnan(seconds):
        return "-"
    if abs(seconds) < 1:
        return f"{seconds * 1000:.1f} ms"
    for unit, size in (("d", 86400.0), ("h", 3600.0), ("min", 60.0)):
        if abs(seconds) >= 2 * size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.2f} s"


class LiveLine:
    """Redraws one line with throughput, latency, batch size and alerts from a running
    pipeline's ``stats`` (``engine.stats``). ``alerts`` names the sink whose writes count
    as alerts. Off a terminal (a CI log, a pipe) it prints a plain line every
    ``plain_every`` seconds instead."""

    def __init__(
        self,
        stats: EngineStats,
        console: Console,
        *,
        alerts: str = "alerts",
        every: float = 0.25,
        plain_every: float = 2.0,
    ) -> None:
        self.stats = stats
        self.console = console
        self.alerts = alerts
        self.every = every if console.is_terminal else plain_every
        self._task: asyncio.Task[None] | None = None
        self._last = (time.monotonic(), 0)

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def render(self) -> Text:
        s = self.stats
        now = time.monotonic()
        then, before = self._last
        rate = (s.records_out - before) / (now - then) if now > then else 0.0
        self._last = (now, s.records_out)
        line = (
            f"{s.records_out:>10,} scored  {rate:>9,.0f} rec/s  "
            f"latency p50 {_ms(s.latency.percentile(50))}  p99 {_ms(s.latency.percentile(99))}  "
            f"batch {s.mean_batch_size:5.1f}  alerts {s.written.get(self.alerts, 0):,}"
        )
        if s.records_failed:
            line += f"  dead letters {s.records_failed:,}"
        return Text(line)

    async def _loop(self) -> None:
        if not self.console.is_terminal:
            while True:
                await asyncio.sleep(self.every)
                self.console.print(self.render())
        with Live(self.render(), console=self.console, auto_refresh=False) as live:
            try:
                while True:
                    await asyncio.sleep(self.every)
                    live.update(self.render(), refresh=True)
            finally:
                live.update(self.render(), refresh=True)


def summary_table(summary: RunSummary, *, title: str = "Summary") -> Table:
    """The end-of-run figures as a table."""
    table = Table(title=title, show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value", justify="right")
    rows = [
        ("records read", f"{summary.records_in:,}"),
        ("records scored", f"{summary.records_out:,}"),
        ("dead letters", f"{summary.records_failed:,}"),
        ("shed", f"{summary.records_shed:,}"),
        ("peak in flight", f"{summary.peak_in_flight:,} records"),
        # The throughput is records scored over this: both from the same measurement.
        ("elapsed", _ms(summary.elapsed)),
        ("throughput", f"{summary.records_per_second:,.0f} records/s"),
        ("latency p50", _ms(summary.latency_p50)),
        ("latency p99", _ms(summary.latency_p99)),
        ("mean batch size", f"{summary.mean_batch_size:.1f}"),
        ("batches", f"{summary.batches:,}"),
    ]
    rows += [(f"written to {name}", f"{n:,}") for name, n in summary.written.items()]
    if summary.stopped:
        rows.append(("stopped", "by request (graceful)"))
    for what, value in rows:
        table.add_row(what, value)
    return table
