"""Gauges that are read from the source, not counted: lag and paused partitions."""

from __future__ import annotations

import asyncio
import logging

from headrace.connectors.base import PartitionedSource
from headrace.observe.metrics import PipelineMetrics

log = logging.getLogger("headrace")


async def watch_lag(source: PartitionedSource, metrics: PipelineMetrics, interval: float) -> None:
    """Every ``interval`` seconds, until cancelled: per partition, records not yet read and
    the age of the last one read; and how many partitions are paused."""
    while True:
        await asyncio.sleep(interval)
        try:
            lag = await source.lag()
        except Exception as exc:  # lag is for watching; never stop the pipeline for it
            log.debug("reading lag failed: %s", exc)
            continue
        for (topic, partition), (records, seconds) in lag.items():
            metrics.lag_records.labels(topic, str(partition)).set(records)
            metrics.lag_seconds.labels(topic, str(partition)).set(seconds)
        metrics.paused_partitions.set(len(source.paused_partitions()))
