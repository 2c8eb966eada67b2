"""The row layout every table sink shares: one row per output, one per dead letter, keyed
by source position. Each sink says only how it encodes values for its database."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from headrace.record import BatchKind, FailedRecord, ScoredBatch, WindowRecord

PREDICTION_COLUMNS = (
    "key, prediction, model_name, model_version, model_sha256, event_time, processed_at, input"
)
WINDOW_COLUMNS = (
    "key, window_start, window_end, partition, count, prediction, model_name, "
    "model_version, model_sha256, processed_at, features"
)
#: A window's row is unique per key, window and input partition.
WINDOW_KEY = "key, window_start, window_end, partition"
FAILURE_COLUMNS = "key, stage, error_type, error, model_name, model_version, input, raw, attempts"

Encode = Callable[[Any], Any]


def prediction_rows(
    batch: ScoredBatch, *, prediction: Encode, value: Encode | None
) -> list[tuple[Any, ...]]:
    """``(topic, partition, offset, *PREDICTION_COLUMNS)`` per output; ``value`` encodes
    the input, or ``None`` to leave inputs out."""
    name, version, digest = batch.model.name, batch.model.version, batch.model.sha256
    at = batch.processed_at
    return [
        (
            r.topic,
            r.partition,
            r.offset,
            None if r.key is None else str(r.key),
            prediction(p),
            name,
            version,
            digest,
            r.event_time,
            at,
            value(r.value) if value is not None else None,
        )
        for r, p in zip(batch.records, batch.predictions, strict=True)
    ]


def is_windows(batch: ScoredBatch) -> bool:
    """Whether ``batch`` holds closed windows rather than events."""
    return batch.kind is BatchKind.WINDOWS


def window_rows(
    batch: ScoredBatch, *, prediction: Encode, value: Encode | None
) -> list[tuple[Any, ...]]:
    """``WINDOW_COLUMNS`` per closed window; ``value`` encodes the features, or ``None``
    to leave them out."""
    name, version, digest = batch.model.name, batch.model.version, batch.model.sha256
    at = batch.processed_at
    rows = []
    for r, p in zip(batch.records, batch.predictions, strict=True):
        assert isinstance(r, WindowRecord)
        rows.append(
            (
                "" if r.key is None else str(r.key),
                r.window_start,
                r.event_time,
                r.partition,
                r.count,
                prediction(p),
                name,
                version,
                digest,
                at,
                value(r.value) if value is not None else None,
            )
        )
    return rows


def failure_rows(
    failures: Sequence[FailedRecord], *, value: Encode, raw: Encode, text: Encode = str
) -> list[tuple[Any, ...]]:
    """``(topic, partition, offset, *FAILURE_COLUMNS)`` per dead letter."""
    rows = []
    for f in failures:
        r = f.record
        rows.append(
            (
                r.topic,
                r.partition,
                r.offset,
                None if r.key is None else str(r.key),
                f.stage,
                f.error_type,
                text(f.error),
                f.model.name if f.model else None,
                f.model.version if f.model else None,
                None if r.value is None else value(r.value),
                None if r.raw is None else raw(r.raw),
                f.attempts,
            )
        )
    return rows
