"""The two small protocols every connector follows."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Collection, Mapping, Sequence
from typing import Protocol

from headrace.record import FailedRecord, Record, ScoredBatch

PartitionKey = tuple[str, int]


class RebalanceListener(Protocol):
    """What a source that shares partitions with other workers tells the engine."""

    async def partitions_assigned(
        self, partitions: Sequence[PartitionKey]
    ) -> Mapping[PartitionKey, int] | None:
        """New partitions; returns positions to start from where the engine keeps them
        (exactly-once into a database), else ``None`` for the source's committed ones."""

    async def partitions_revoked(
        self, partitions: Sequence[PartitionKey]
    ) -> Mapping[PartitionKey, int]:
        """Partitions going to another worker: returns the positions to commit for them,
        once their records in flight are finished."""


class Source(ABC):
    """Reads records in chunks and commits the positions the engine says are finished.

    ``decoded`` is false for sources that deliver bytes (``Record.raw``) for the engine's
    decoder, true for sources that build values themselves.

    Flow control pauses a source in one of two ways. By default the engine just stops
    iterating :meth:`chunks` until it resumes: right for files, generators and MQTT (whose
    broker stops sending once enough messages wait unacknowledged). A source with
    ``keeps_polling`` must be polled to keep its place (a Kafka consumer that is not polled
    leaves its group): the engine calls :meth:`set_paused` and goes on iterating, and the
    source stops fetching while it goes on polling.
    """

    name: str = "source"
    decoded: bool = False
    keeps_polling: bool = False

    def bind(self, listener: RebalanceListener) -> None:  # noqa: B027 - optional hook
        """Called by the engine before :meth:`open`, for sources whose partitions move."""

    async def open(self) -> None:  # noqa: B027 - optional hook
        """Connect, restore positions. Called once before :meth:`chunks`."""

    @abstractmethod
    def chunks(self) -> AsyncIterator[list[Record]]:
        """Yield lists of records in read order; end when the source is exhausted."""

    async def commit(self, positions: Mapping[PartitionKey, int]) -> None:  # noqa: B027
        """Persist, per partition, the next position to read after a restart."""

    def set_paused(self, paused: bool) -> None:  # noqa: B027 - optional hook
        """Stop (or restart) fetching everything, for sources with ``keeps_polling``."""

    def pause_partitions(  # noqa: B027 - optional hook
        self, partitions: Collection[PartitionKey], paused: bool
    ) -> None:
        """Stop (or restart) fetching some partitions, for sources with ``keeps_polling``;
        :meth:`set_paused` overrides it while it holds."""

    def assigned(self) -> Sequence[PartitionKey]:
        """The partitions this worker reads now (empty where the source cannot tell)."""
        return []

    def paused_partitions(self) -> Sequence[PartitionKey]:
        """Partitions whose fetching is paused now."""
        return []

    async def lag(self) -> Mapping[PartitionKey, tuple[int, float]]:
        """Per partition: records not yet read, and the age in seconds of the last record
        read (0 when nothing is left to read). Empty where the source cannot tell."""
        return {}

    async def close(self) -> None:  # noqa: B027
        """Release resources. Called once, after the last commit."""


class Sink(ABC):
    """Writes scored batches. ``write`` returning means the batch was accepted;
    ``flush`` returning means everything accepted so far is durable, and only then does
    the engine commit source positions."""

    name: str = "sink"

    async def open(self) -> None:  # noqa: B027 - optional hook
        """Connect, create tables. Called once before the first write."""

    @abstractmethod
    async def write(self, batch: ScoredBatch) -> None:
        """Accept one batch of outputs."""

    async def write_failures(self, failures: Sequence[FailedRecord]) -> None:
        """Accept records that failed, when this sink is the dead-letter destination."""
        raise NotImplementedError(f"the {type(self).__name__} cannot hold dead letters")

    async def flush(self) -> None:  # noqa: B027
        """Make every accepted write durable."""

    async def close(self) -> None:  # noqa: B027
        """Flush and release resources."""
