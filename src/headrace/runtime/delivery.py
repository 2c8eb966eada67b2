"""Delivery guarantees: how finished positions and outputs are made durable together."""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from headrace.connectors.base import (
    AcknowledgingSink,
    PartitionedSource,
    PartitionKey,
    Sink,
    Source,
)

if TYPE_CHECKING:
    from headrace.connectors.kafka import KafkaProducer, KafkaSource
    from headrace.connectors.postgres import PostgresSink

log = logging.getLogger("headrace")


class Delivery(ABC):
    """Commits positions whose records reached a terminal state."""

    #: Whether records written to sinks that acknowledge are finished only once they did.
    acknowledged: bool = False

    #: Whether a commit must hold back writes: outputs and positions go in one transaction,
    #: so no output may join it unless its position does too.
    exactly_once: bool = False
    name: str = "at-least-once"

    @abstractmethod
    async def commit(
        self, positions: Mapping[PartitionKey, int], sinks: Sequence[Sink], source: Source
    ) -> None: ...

    async def start_positions(
        self, partitions: Sequence[PartitionKey]
    ) -> Mapping[PartitionKey, int] | None:
        """Where newly assigned partitions start, if this delivery keeps positions itself."""
        return None

    def release(self, partitions: Sequence[PartitionKey]) -> None:  # noqa: B027 - optional
        """``partitions`` left this worker (after their last commit, or given up)."""


class AtLeastOnce(Delivery):
    """Flush every sink, then commit to the source. A crash re-reads what was written since
    the last commit: nothing is lost, and duplicates are bounded by what was written and
    not committed. ``acknowledged``: records are finished only once the sinks that
    acknowledge (:class:`AcknowledgingSink`) have them durable, so those need no flush,
    only a check that none of their writes failed."""

    def __init__(self, *, acknowledged: bool = False) -> None:
        self.acknowledged = acknowledged

    async def commit(
        self, positions: Mapping[PartitionKey, int], sinks: Sequence[Sink], source: Source
    ) -> None:
        for sink in sinks:
            if self.acknowledged and isinstance(sink, AcknowledgingSink):
                sink.check()
            else:
                await sink.flush()
        await source.commit(positions)


class KafkaTransactions(Delivery):
    """Kafka to Kafka: outputs and consumed offsets commit in one Kafka transaction."""

    exactly_once = True
    name = "exactly-once (Kafka transactions)"

    def __init__(self, producer: KafkaProducer, source: KafkaSource) -> None:
        self.producer = producer
        self.source = source

    async def commit(
        self, positions: Mapping[PartitionKey, int], sinks: Sequence[Sink], source: Source
    ) -> None:
        await self.producer.commit_transaction(positions, self.source)


class PostgresTransactions(Delivery):
    """Kafka to PostgreSQL: consumed offsets are stored in the same database transaction as
    the outputs, and partitions start from the stored offsets when assigned. Assigning
    claims a partition in the database (a new epoch), and a transaction commits only if
    its partitions' epochs are still this worker's: a worker that lost its partitions
    while paused cannot commit outputs for them afterwards."""

    exactly_once = True
    name = "exactly-once (PostgreSQL transactions)"

    def __init__(self, sink: PostgresSink) -> None:
        self.sink = sink

    async def commit(
        self, positions: Mapping[PartitionKey, int], sinks: Sequence[Sink], source: Source
    ) -> None:
        await self.sink.commit_transaction(positions)
        # Also to Kafka, without waiting, for lag monitoring only: the database's copy is
        # the truth, and waiting could block on a rebalance in progress.
        if isinstance(source, PartitionedSource):
            source.commit_soon(positions)

    async def start_positions(
        self, partitions: Sequence[PartitionKey]
    ) -> Mapping[PartitionKey, int] | None:
        return await self.sink.claim(partitions)

    def release(self, partitions: Sequence[PartitionKey]) -> None:
        self.sink.release(partitions)


def chosen_delivery(delivery: Delivery | None, commit_as_acknowledged: bool) -> Delivery:
    """The delivery a run uses: the spec's, or at-least-once, which commits positions as
    their outputs are acknowledged unless ``commit_as_acknowledged`` is off."""
    if delivery is None or type(delivery) is AtLeastOnce:
        return AtLeastOnce(acknowledged=commit_as_acknowledged)
    return delivery
