"""What every connector follows: a source (plain, decoded or partitioned) or a sink."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from headrace import defaults
from headrace.errors import HeadraceError
from headrace.record import FailedRecord, Record, ScoredBatch

if TYPE_CHECKING:
    from headrace.observe.metrics import PipelineMetrics

PartitionKey = tuple[str, int]


class CommitRefused(HeadraceError):
    """The source refused a commit for a reason that passes: its consumer group is
    rebalancing (Kafka's ``ILLEGAL_GENERATION``, ``REBALANCE_IN_PROGRESS``,
    ``UNKNOWN_MEMBER_ID``). Nothing was committed; the next commit covers the positions,
    or, for a partition that moved, its next owner reads them again."""


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

    def positions_committed(
        self, positions: Mapping[PartitionKey, int], failed: Sequence[PartitionKey]
    ) -> None:
        """The broker confirmed ``positions``, and the commits of ``failed`` partitions
        failed or went unanswered (commits sent with
        :meth:`PartitionedSource.commit_soon`); called on the event loop."""

    def records_read_back(self, count: int) -> None:
        """``count`` records of newly assigned partitions will not be read: their outputs
        were found written (:meth:`PartitionedSource.read_back_outputs`); called on the
        event loop."""


class Source(ABC):
    """Reads records in chunks and commits the positions the engine says are finished.

    A plain source delivers bytes (``Record.raw``) for the engine's decoder; one that builds
    values itself is a :class:`DecodedSource`.

    Flow control pauses a source by not iterating :meth:`chunks` until it resumes: right
    for files, standard input, generators and MQTT (whose broker stops sending once enough
    messages wait unacknowledged). A source that must keep being polled is a
    :class:`PartitionedSource`, paused another way.
    """

    name: str = "source"
    #: How often the engine commits when the pipeline does not say
    #: (``EngineSettings.commit_interval`` left ``None``), in seconds; 0: as soon as
    #: anything finished, one commit at a time.
    commit_interval: float = defaults.COMMIT_INTERVAL

    async def open(self) -> None:  # noqa: B027 - optional hook
        """Connect, restore positions. Called once before :meth:`chunks`."""

    @abstractmethod
    def chunks(self) -> AsyncIterator[Sequence[Record]]:
        """Yield sequences of records in read order (lists, or
        :class:`~headrace.batch.RecordBatch` es); end when the source is exhausted."""

    def read_as_batches(self) -> bool:
        """Called by the engine before :meth:`open` when its decoder can turn a chunk of
        bytes into columns: a source that can deliver each partition's consecutive records
        as one :class:`~headrace.batch.RecordBatch` holding their bytes (``raws``), and
        their keys and times as read, does so from now on and returns ``True``."""
        return False

    async def commit(self, positions: Mapping[PartitionKey, int]) -> None:  # noqa: B027
        """Persist, per partition, the next position to read after a restart."""

    async def close(self) -> None:  # noqa: B027
        """Release resources. Called once, after the last commit."""


class DecodedSource(Source):
    """A source that builds its records' values itself (``Record.value`` set, ``raw`` left
    ``None``, like the generator): the engine does not decode them."""


class PartitionedSource(Source):
    """A source whose partitions are shared with other workers and move between them, and
    that must be polled to keep its place (a Kafka consumer that is not polled leaves its
    group).

    So flow control cannot pause it by not iterating: the engine calls :meth:`set_paused`
    and goes on iterating :meth:`chunks`, and the source stops fetching while it goes on
    polling. Under load the engine also holds single partitions
    (:meth:`pause_partitions`), so that each gets a fair share of what may be in flight.
    """

    def bind(self, listener: RebalanceListener) -> None:
        """Called by the engine before :meth:`open`: whom to tell when partitions move."""

    @abstractmethod
    def set_paused(self, paused: bool) -> None:
        """Stop (or restart) fetching everything, while still being polled."""

    def pause_partitions(self, partitions: Collection[PartitionKey], paused: bool) -> None:
        """Stop (or restart) fetching some partitions; :meth:`set_paused` overrides it
        while it holds."""

    def assigned(self) -> Sequence[PartitionKey]:
        """The partitions this worker reads now."""
        return []

    def read_back_outputs(
        self, topics: Sequence[tuple[str, str]], depth: int
    ) -> tuple[str, bytes] | None:
        """Every output goes to the Kafka ``topics`` (``(bootstrap servers, topic)``):
        on assignment, pass over records whose outputs are among the last ``depth`` of the
        topics' partitions. Returns the header the outputs must carry for it, or ``None``
        when the source cannot."""
        return None

    def paused_partitions(self) -> Sequence[PartitionKey]:
        """Partitions whose fetching is paused now."""
        return []

    async def lag(self) -> Mapping[PartitionKey, tuple[int, float]]:
        """Per partition: records not yet read, and the age in seconds of the last record
        read (0 when nothing is left to read). Empty where the source cannot tell."""
        return {}

    def commit_soon(self, positions: Mapping[PartitionKey, int]) -> None:
        """Commit without waiting: sent before the next poll, at most one commit in flight
        per partition (a newer position waits for it, replacing any older one waiting).
        The listener hears of each that the broker confirmed
        (:meth:`RebalanceListener.positions_committed`). One that fails leaves the
        partition where it was: the next covers it. Also what keeps lag current where the
        positions' truth is kept elsewhere (exactly-once into a database). Nothing to do
        where the source keeps no positions itself."""


@dataclass(frozen=True)
class SinkContext:
    """What the engine gives a sink before it opens (:meth:`Sink.bind`).

    ``set_aside`` dead-letters outputs the sink accepted and then could not deliver (a
    sink that sends later, in batches of its own): they go to the dead-letter sink, are
    counted as failed and no longer as written, and the call raises (``PipelineError``)
    where the pipeline has no dead-letter sink. It returns once they are flushed there; the
    sink must finish it before its next ``flush`` returns, so that a commit never passes
    an output that is neither delivered nor a durable dead letter.

    ``inputs_as_read``: every event a scored batch holds has ``raw``, the JSON bytes its
    ``value`` was decoded from, and nothing changed the value since (the engine's JSON
    decoder, no lookups): a sink that writes JSON may embed those bytes as the output's
    ``input`` instead of encoding the value again (``ScoredBatch.to_dicts(raw_inputs=True)``).

    ``output_header``: a header (name, value) every output must carry, so that the source
    can read back what was written after a crash (see :attr:`Sink.read_back_topic`).
    """

    metrics: PipelineMetrics
    set_aside: Callable[[list[FailedRecord]], Awaitable[None]]
    inputs_as_read: bool = False
    output_header: tuple[str, bytes] | None = None


class Sink(ABC):
    """Writes scored batches. ``write`` returning means the batch was accepted, except
    the outputs it returns as refused (each a :class:`FailedRecord` saying why: it can
    never be written, e.g. too large); the engine dead-letters those. ``flush``
    returning means everything accepted so far is durable, and only then does the engine
    commit source positions; a flush that raises once must raise until the outputs it
    lost are written again, never report a loss once and then succeed."""

    name: str = "sink"
    # Whether ``write`` reads the records' values (the decoded inputs). One that does not
    # where inputs go as read (``SinkContext.inputs_as_read``) lets the engine decode only
    # what the model reads: the values are decoded only for sinks that ask for them.
    reads_values: bool = True

    #: ``(bootstrap servers, topic)``: the Kafka topic every output goes to, readable back
    #: after a crash: a restarted worker passes over the records whose outputs are there
    #: already (only when every sink of the pipeline has one). ``None``: none.
    read_back_topic: tuple[str, str] | None = None

    def bind(self, context: SinkContext) -> None:  # noqa: B027 - optional hook
        """Called by the engine, for the sinks that take outputs, before :meth:`open`."""

    async def open(self) -> None:  # noqa: B027 - optional hook
        """Connect, create tables. Called once before the first write."""

    @abstractmethod
    async def write(self, batch: ScoredBatch) -> Sequence[FailedRecord] | None:
        """Accept one batch of outputs; return those refused for good, if any."""

    async def write_failures(self, failures: Sequence[FailedRecord]) -> None:
        """Accept records that failed, when this sink is the dead-letter destination."""
        raise NotImplementedError(f"the {type(self).__name__} cannot hold dead letters")

    async def flush(self) -> None:  # noqa: B027
        """Make every accepted write durable."""

    async def close(self) -> None:  # noqa: B027
        """Flush and release resources."""


class AcknowledgingSink(Sink):
    """A sink that says when its writes are durable (Kafka: every message acknowledged by
    the broker), so a position can be committed as soon as its outputs are, without a
    :meth:`~Sink.flush` that also waits for every write made after them."""

    @abstractmethod
    def when_acknowledged(self, callback: Callable[[BaseException | None], None]) -> None:
        """Call ``callback`` on the event loop once every write accepted so far is
        durable (with ``None``), or as soon as one of them failed (with the error)."""

    @abstractmethod
    def check(self) -> None:
        """Raise if a write ever failed (and keep raising: see :meth:`Sink.flush`)."""
