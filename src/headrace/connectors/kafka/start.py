"""Where a Kafka source's partitions start: ``source.start`` and ``--reset-offsets``.

A partition with a committed offset resumes there: that is what makes a restart lose
nothing and repeat little, so a start (``earliest``, ``latest`` or a timestamp) only
chooses where partitions *without* a commit begin. ``reset`` (``headrace run
--reset-offsets``) moves committed offsets too, once per partition and process: the new
offset is committed at once, inside the assignment, so a crash after it does not undo it.
Positions the engine keeps itself (exactly-once into a database, window state) are never
moved.

A timestamp's offset is the first record whose Kafka timestamp is at or after it (what
``offsets_for_times`` answers), or the end of the partition when there is none. The
broker's answer is checked by reading from it: a broker may answer loosely (Tansu answers
offset 0 for every time), and a wrong start is a silent loss or a silent repeat. On Kafka
the check is one fetch; on a broker that answers 0 it reads the partition's prefix.

:func:`plan` decides; the source applies the plan and logs its one line.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_END,
    TIMESTAMP_NOT_AVAILABLE,
    Consumer,
    KafkaError,
    TopicPartition,
)

from headrace.connectors.base import PartitionKey

#: How long the check of a timestamp's offsets may read before it trusts the broker.
CHECK_TIMEOUT = 30.0


@dataclass(frozen=True)
class Start:
    """Where partitions without a committed offset start, and whether committed ones are
    moved there too (``reset``)."""

    at: Literal["earliest", "latest"] | datetime
    reset: bool = False

    def describe(self) -> str:
        if isinstance(self.at, datetime):
            return "timestamp " + self.at.astimezone(UTC).isoformat().replace("+00:00", "Z")
        return self.at

    @property
    def millis(self) -> int | None:
        return int(self.at.timestamp() * 1000) if isinstance(self.at, datetime) else None


@dataclass(frozen=True)
class Decision:
    """One partition's start: ``committed`` (``None``: no commit), the offset it starts at
    (``None``: the committed one, kept), and how it was chosen."""

    key: PartitionKey
    committed: int | None
    to: int | None
    how: Literal["new", "reset", "kept", "kept-reset-before", "engine"]

    def describe(self) -> str:
        t, p = self.key
        name = f"{t}[{p}]"
        if self.how == "new":
            return f"{name} no commit -> {_offset(self.to)}"
        if self.how == "reset":
            return f"{name} committed {self.committed} -> {_offset(self.to)} (reset)"
        if self.how == "engine":
            return f"{name} at {_offset(self.to)}, kept by the pipeline's own store"
        if self.how == "kept-reset-before":
            return f"{name} committed {self.committed}, kept (reset earlier by this worker)"
        return f"{name} committed {self.committed}, kept"


def _offset(offset: int | None) -> str:
    if offset == OFFSET_BEGINNING:
        return "beginning"
    if offset == OFFSET_END:
        return "end"
    return str(offset)


def plan(
    consumer: Any,
    keys: Sequence[PartitionKey],
    start: Start,
    *,
    engine: Mapping[PartitionKey, int],
    reset_before: set[PartitionKey],
    settings: Mapping[str, Any],
    timeout: float = 10.0,
) -> list[Decision]:
    """Each partition's start. ``engine``: positions the engine keeps (never moved);
    ``reset_before``: partitions this process moved already (not moved again)."""
    free = [k for k in keys if k not in engine]
    committed: dict[PartitionKey, int | None] = {}
    if free:
        for tp in consumer.committed([TopicPartition(t, p) for t, p in free], timeout=timeout):
            committed[(tp.topic, tp.partition)] = tp.offset if tp.offset >= 0 else None
    # Partitions that will start at the start's offset: no commit, or a commit to move.
    moving = [k for k in free if committed[k] is None or (start.reset and k not in reset_before)]
    targets = _targets(consumer, moving, start, settings, timeout) if moving else {}
    if start.reset:
        # A committed offset is a number: resolve beginning and end for the commit.
        to_commit = [k for k in moving if committed[k] is not None]
        targets.update(_numeric(consumer, to_commit, targets, timeout))
    decisions: list[Decision] = []
    for key in keys:
        if key in engine:
            decisions.append(Decision(key, None, engine[key], "engine"))
        elif key in targets:
            how: Literal["new", "reset"] = "new" if committed[key] is None else "reset"
            decisions.append(Decision(key, committed[key], targets[key], how))
        else:
            how_kept: Literal["kept", "kept-reset-before"] = (
                "kept-reset-before" if key in reset_before else "kept"
            )
            decisions.append(Decision(key, committed[key], None, how_kept))
    return decisions


def summary(name: str, start: Start, decisions: Sequence[Decision]) -> str:
    """The one log line of an assignment's starts."""
    parts = ", ".join(d.describe() for d in decisions)
    line = f"kafka source {name}: start {start.describe()}: {parts}"
    if any(d.how == "kept" for d in decisions):
        line += (
            "; the start was ignored for partitions with committed offsets "
            "(headrace run --reset-offsets moves them)"
        )
    return line


def _targets(
    consumer: Any,
    keys: Sequence[PartitionKey],
    start: Start,
    settings: Mapping[str, Any],
    timeout: float,
) -> dict[PartitionKey, int]:
    if start.at == "earliest":
        return dict.fromkeys(keys, OFFSET_BEGINNING)
    if start.at == "latest":
        return dict.fromkeys(keys, OFFSET_END)
    ms = start.millis
    assert ms is not None
    asked = [TopicPartition(t, p, ms) for t, p in keys]
    found = consumer.offsets_for_times(asked, timeout=timeout)
    candidates = {(tp.topic, tp.partition): tp.offset for tp in found}
    return checked_offsets(settings, candidates, ms)


def _numeric(
    consumer: Any,
    keys: Sequence[PartitionKey],
    targets: Mapping[PartitionKey, int],
    timeout: float,
) -> dict[PartitionKey, int]:
    out: dict[PartitionKey, int] = {}
    for key in keys:
        target = targets[key]
        if target in (OFFSET_BEGINNING, OFFSET_END):
            low, high = consumer.get_watermark_offsets(TopicPartition(*key), timeout=timeout)
            out[key] = low if target == OFFSET_BEGINNING else high
    return out


def checked_offsets(
    settings: Mapping[str, Any],
    candidates: Mapping[PartitionKey, int],
    ms: int,
    *,
    timeout: float = CHECK_TIMEOUT,
) -> dict[PartitionKey, int]:
    """The first offset at or after ``candidates[key]`` whose record's timestamp is at or
    after ``ms``, or the partition's end (the high watermark of the fetch responses, which
    brokers report right where their ``ListOffsets`` may not). A candidate below 0 means
    the broker found none: the end. Read by a consumer of its own, by assignment (no group
    is joined or committed)."""
    out: dict[PartitionKey, int] = {}
    todo: dict[PartitionKey, int] = {}
    for key, offset in candidates.items():
        if offset < 0:
            out[key] = OFFSET_END
        else:
            todo[key] = offset
    if not todo:
        return out
    config = {
        k: v
        for k, v in settings.items()
        if not k.startswith(("group.", "partition.assignment", "enable.", "auto.", "on_"))
        and k not in ("error_cb", "logger")
    }
    config.update(
        {
            "group.id": "headrace-start-check",  # never joined or committed
            "enable.auto.commit": False,
            "enable.partition.eof": False,
            "fetch.wait.max.ms": min(int(settings.get("fetch.wait.max.ms", 10)), 100),
        }
    )
    reader = Consumer(config)
    try:
        reader.assign([TopicPartition(t, p, o) for (t, p), o in todo.items()])
        following = dict(todo)
        deadline = time.monotonic() + timeout
        while todo and time.monotonic() < deadline:
            for m in reader.consume(1000, 0.05):
                err = m.error()
                key = (str(m.topic()), int(m.partition() or 0))
                offset = int(m.offset() or 0)
                if err is not None or key not in todo:
                    if err is not None and err.code() != KafkaError._PARTITION_EOF:
                        raise RuntimeError(f"reading {key[0]}[{key[1]}]: {err.str()}")
                    continue
                kind, ts = m.timestamp()
                if kind == TIMESTAMP_NOT_AVAILABLE or ts >= ms:
                    out[key] = offset
                    del todo[key]
                    reader.pause([TopicPartition(*key)])
                else:
                    following[key] = offset + 1
            for key in list(todo):
                _low, high = reader.get_watermark_offsets(TopicPartition(*key), cached=True)
                if high >= 0 and following[key] >= high:
                    out[key] = high
                    del todo[key]
        # Past the deadline: trust the broker for what is left.
        out.update(todo)
    finally:
        reader.close()
    return out
