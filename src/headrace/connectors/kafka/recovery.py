"""After a crash, what the dead worker wrote and did not commit, read back from the output
topics, so that the worker that takes its partitions does not write it again.

At-least-once into Kafka, a crash re-reads the records written since the last confirmed
commit (at most ``runtime.max_uncommitted``). When every output of a pipeline goes to Kafka
topics, each output carries its consumer group (the ``headrace-group`` header) and its
source position (``source`` in the JSON). A worker that is assigned a partition with a
committed offset first reads the last ``runtime.read_back`` records of every output
partition, and finds the records at or past the committed offset whose outputs are in
*every* output topic: those were written, and are not written again. Where that window
holds none of the recovered partitions' outputs below their committed offsets (other
workers wrote after the crashed one), it reads the window before, and so on, up to
``ReadBack.windows`` windows and records ``ReadBack.horizon`` seconds old.

Whatever this misses is written again, as before: an output still on its way when the read
ran, one further back than that, or in one output topic and not the other. It can
cause duplicates, never a loss: a record is passed over only when its output is in the
topic, written by this group for this exact position.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import msgspec
from confluent_kafka import Consumer, KafkaError, TopicPartition

from headrace.connectors.base import PartitionKey

#: The header naming the consumer group whose worker wrote an output.
GROUP_HEADER = "headrace-group"

# Settings of the worker's consumer that must not reach the consumer reading back: it
# reads partitions it is given, outside the group (an instance id would fence the worker).
_GROUP_ONLY = ("group.instance.id", "partition.assignment.strategy", "enable.partition.eof")


class _Position(msgspec.Struct):
    topic: str
    partition: int
    offset: int


class _Output(msgspec.Struct):
    source: _Position | None = None


_decode = msgspec.json.Decoder(_Output).decode


@dataclass(frozen=True)
class ReadBack:
    """What to read back: the output ``topics``, the group's ``tag`` in their headers, and
    how many of the last records of each output partition (``depth``)."""

    topics: tuple[str, ...]
    tag: bytes
    depth: int
    timeout: float = 10.0
    #: How many windows of ``depth`` records it may read back from one output partition,
    #: and how old the records may be: behind other workers' outputs written while the
    #: crashed one restarted, its own are further back than one window.
    windows: int = 8
    horizon: float = 120.0


def read_back(
    settings: Mapping[str, Any], what: ReadBack, committed: Mapping[PartitionKey, int]
) -> dict[PartitionKey, set[int]]:
    """The offsets at or past ``committed`` (per input partition) whose outputs, written
    by the group ``what.tag``, are in the last ``what.depth`` records of every output
    partition of every topic in ``what.topics``. Partitions with nothing found are left
    out. ``settings``: the worker's consumer's (its broker and security settings)."""
    if not committed or not what.topics:
        return {}
    config = {k: v for k, v in settings.items() if k not in _GROUP_ONLY}
    # A group of its own, never joined (partitions are assigned) and never committed to.
    config.update(
        {
            "group.id": f"{settings.get('group.id', 'headrace')}.read-back",
            "enable.partition.eof": True,
            "enable.auto.commit": False,
            # A read to the end: a fetch at the end waits this long before it says so
            # (librdkafka's 500 ms made a read back 0.59 s instead of 0.14 on Tansu).
            "fetch.wait.max.ms": 10,
        }
    )
    consumer = Consumer(config)
    try:
        found = _read(consumer, what, committed)
    finally:
        consumer.close()
    both = found[0]
    for other in found[1:]:
        both = {k: v & other.get(k, set()) for k, v in both.items()}
    return {k: v for k, v in both.items() if v}


class _Window:
    """One output partition read backward, ``depth`` records at a time: the records
    ``lo .. hi - 1`` (``hi`` None: to the end), and what was seen of the recovered
    partitions' outputs in it so far."""

    __slots__ = ("done", "hi", "lo", "low", "lowest", "oldest", "tp", "windows")

    def __init__(self, topic: str, partition: int, low: int, high: int, depth: int) -> None:
        self.tp = (topic, partition)
        self.low = low
        self.hi: int | None = None
        self.lo = max(low, high - depth)
        self.windows = 1
        self.done = False
        self.oldest = float("inf")  # the oldest timestamp in the window read last, s
        self.lowest: dict[PartitionKey, int] = {}  # per input partition, its lowest offset seen

    def back(self, depth: int) -> None:
        """The window before this one."""
        self.hi, self.lo = self.lo, max(self.low, self.lo - depth)
        self.windows += 1
        self.done = False
        self.oldest = float("inf")

    def further(self, what: ReadBack, committed: Mapping[PartitionKey, int], now: float) -> bool:
        """Whether to read the window before: not at the partition's start, nor past the
        windows allowed, nor where the window read was older than the horizon (nothing a
        crash left uncommitted is older); and not once an output below the committed
        offset was seen for every recovered partition seen here (outputs of a partition
        go in order: the ones at or past it came after)."""
        if self.lo <= self.low or self.windows >= what.windows:
            return False
        if self.oldest < now - what.horizon:
            return False
        seen = self.lowest
        return not seen or any(o >= committed[k] for k, o in seen.items())


def _read(
    consumer: Any, what: ReadBack, committed: Mapping[PartitionKey, int]
) -> list[dict[PartitionKey, set[int]]]:
    # One deadline for the whole read: it runs in the assignment callback.
    deadline = time.monotonic() + what.timeout

    def remaining() -> float:
        seconds = deadline - time.monotonic()
        if seconds <= 0:
            raise TimeoutError(f"no answer within {what.timeout:g} s")
        return seconds

    windows: dict[tuple[str, int], _Window] = {}
    for topic in what.topics:
        meta = consumer.list_topics(topic, timeout=remaining()).topics[topic]
        if meta.error is not None:
            raise RuntimeError(f"output topic {topic!r}: {meta.error.str()}")
        for q in sorted(meta.partitions):
            tp = TopicPartition(topic, q)
            low, high = consumer.get_watermark_offsets(tp, timeout=remaining())
            windows[(topic, q)] = _Window(topic, q, low, high, what.depth)
    found: dict[str, dict[PartitionKey, set[int]]] = {t: {} for t in what.topics}
    tag = what.tag
    active = list(windows.values())
    while active:
        consumer.assign([TopicPartition(w.tp[0], w.tp[1], w.lo) for w in active])
        # Paused when their window was done: fetch them again.
        consumer.resume([TopicPartition(w.tp[0], w.tp[1]) for w in active])
        left = len(active)
        while left and time.monotonic() < deadline:
            for m in consumer.consume(1000, 0.1):
                w = windows[(m.topic(), m.partition())]
                if w.done:
                    continue
                err = m.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        w.done, left = True, left - 1
                    continue
                offset = m.offset()
                if w.hi is not None and offset >= w.hi:  # into the window read before
                    w.done, left = True, left - 1
                    consumer.pause([TopicPartition(w.tp[0], w.tp[1])])
                    continue
                _, ms = m.timestamp()
                if ms > 0 and ms / 1000.0 < w.oldest:
                    w.oldest = ms / 1000.0
                headers = m.headers()
                if not headers or (GROUP_HEADER, tag) not in headers:
                    continue
                try:
                    source = _decode(m.value() or b"").source
                except msgspec.DecodeError:
                    continue
                if source is None:
                    continue
                key = (source.topic, source.partition)
                first = committed.get(key)
                if first is None:
                    continue
                if source.offset < w.lowest.get(key, source.offset + 1):
                    w.lowest[key] = source.offset
                if source.offset >= first:
                    found[m.topic()].setdefault(key, set()).add(source.offset)
                if w.hi is not None and offset >= w.hi - 1:
                    w.done, left = True, left - 1
                    consumer.pause([TopicPartition(w.tp[0], w.tp[1])])
        if left:  # out of time: what was found stands
            break
        now = time.time()
        active = [w for w in active if w.further(what, committed, now)]
        for w in active:
            w.back(what.depth)
    return [found[t] for t in what.topics]


def split(committed: int, written: set[int]) -> tuple[int, set[int]]:
    """Where a partition committed at ``committed`` may start, given the offsets already
    written: past the run of them right at ``committed``; and the rest, to pass over when
    read.

    >>> split(10, {10, 11, 12, 14, 15})
    (13, {14, 15})
    >>> split(10, {11, 12})
    (10, {11, 12})
    """
    start = committed
    while start in written:
        start += 1
    return start, {o for o in written if o > start}
