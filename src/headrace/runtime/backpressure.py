"""Backpressure: when the engine stops reading, and why.

One object owns the in-flight bounds (:class:`FlowControl`), each partition's share of them
(:class:`PartitionShares`, for sources that pause partitions one by one) and the set of
reasons reading is paused now ("in-flight", "model-down", ...). Reading runs while that set
is empty.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from prometheus_client import Gauge

from headrace.connectors.base import PartitionedSource, PartitionKey, Source
from headrace.observe.metrics import PipelineMetrics
from headrace.record import Record
from headrace.runtime.flow import FlowControl, PartitionShares

log = logging.getLogger("headrace")


class Backpressure:
    """Pauses and resumes the source.

    A source that must keep polling (a Kafka consumer) is told to stop fetching with
    ``set_paused`` and goes on being iterated; the others are simply not iterated until
    :meth:`resumed`. ``fair_shares``: give each partition its share of the bound (a source
    that pauses partitions one by one, reading events, not windows).
    """

    def __init__(
        self,
        flow: FlowControl,
        source: Source,
        metrics: PipelineMetrics,
        *,
        resume_at: float,
        fair_shares: bool,
    ) -> None:
        self.flow = flow
        # Only a source that keeps polling is told to pause; the others are not iterated.
        self.polled = source if isinstance(source, PartitionedSource) else None
        self.metrics = metrics
        polling = self.polling = self.polled is not None
        self.shares = PartitionShares(flow.max_records, resume_at)
        self.fair_shares = fair_shares and polling
        self.held: set[PartitionKey] = set()  # partitions paused for holding their share
        self.reasons: set[str] = set()
        self._resumed = asyncio.Event()
        self._resumed.set()
        # Read when scraped: setting them as records come and go cost two locked sets per
        # chunk and per batch. (Each worker of a group has its own registry.)
        metrics.in_flight.set_function(lambda: flow.count)
        metrics.in_flight_bytes.set_function(lambda: flow.bytes)
        self._paused_gauges: dict[str, Gauge] = {}

    @property
    def paused(self) -> bool:
        return bool(self.reasons)

    async def resumed(self) -> None:
        """Return once reading may go on (at once for a source that keeps polling)."""
        if not self.polling:
            await self._resumed.wait()

    def admit(self, chunk: Sequence[Record], size: int) -> None:
        """Records read, ``size`` their bytes; pauses the partitions now over their share."""
        self.flow.admit(len(chunk), size)
        if self.fair_shares:
            assert self.polled is not None
            self.shares.admit(chunk)
            full = self.shares.full(len(self.polled.assigned())) - self.held
            if full:
                self.held |= full
                self.polled.pause_partitions(full, True)

    def admit_windows(self, n: int) -> None:
        """``n`` closed windows on their way to the model."""
        self.flow.admit(n, 0)
        self.check()

    def check(self) -> None:
        """Pause if in-flight is at its bound."""
        if self.flow.over_high:
            self.pause("in-flight", True)

    def release(self, records: Sequence[Record], size: int) -> None:
        """Records that reached a terminal state."""
        flow = self.flow
        flow.release(len(records), size)
        if "in-flight" in self.reasons and (
            # Hysteresis is for sources whose pause costs something (a Kafka consumer
            # drops what it prefetched): the others resume as soon as there is room,
            # which keeps the records they read close to when they are scored.
            flow.below_low if self.polling else not flow.over_high
        ):
            self.pause("in-flight", False)
        if self.fair_shares:
            assert self.polled is not None
            self.shares.release(records)
            if self.held:
                free = self.shares.drained(self.held, len(self.polled.assigned()))
                if free:
                    self.held -= free
                    self.polled.pause_partitions(free, False)

    def forget(self, key: PartitionKey) -> None:
        """A partition left this worker."""
        self.held.discard(key)
        if self.fair_shares:
            self.shares.forget(key)

    def pause(self, reason: str, on: bool) -> None:
        """Add (or remove) a reason to pause; reading pauses while any holds."""
        reasons = self.reasons
        was = bool(reasons)
        if on == (reason in reasons):
            return
        if on:
            reasons.add(reason)
        else:
            reasons.discard(reason)
        gauge = self._paused_gauges.get(reason)
        if gauge is None:
            gauge = self._paused_gauges[reason] = self.metrics.source_paused.labels(reason)
        gauge.set(1 if on else 0)
        now = bool(reasons)
        if now == was:
            # Already paused for another reason: say so, the reason matters to whoever reads.
            state = "also" if on else "no longer"
            log.info("reading stays paused: %s %s (%s)", state, reason, ", ".join(sorted(reasons)))
            return
        # A plain source pauses and resumes with every batch under load: not worth a line.
        quiet = reason == "in-flight" and not self.polling
        (log.debug if quiet else log.info)(
            "%s reading: %s", "pausing" if now else "resuming", reason
        )
        if now:
            self._resumed.clear()
        else:
            self._resumed.set()
        if self.polled is not None:
            self.polled.set_paused(now)
