"""The row layout every table sink shares: one row per output, one per dead letter, keyed
by source position. Each sink says only how it encodes values for its database."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from headrace.batch import parts_of
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
    batch: ScoredBatch, *, prediction: Encode, value: Encode | None, raw_inputs: bool = False
) -> list[tuple[Any, ...]]:
    """``(topic, partition, offset, *PREDICTION_COLUMNS)`` per output; ``value`` encodes
    the input, or ``None`` to leave inputs out. With ``raw_inputs`` (inputs as read), an
    input is its bytes as read, as text, where the record has them; a batch held as
    columns whose records were not built gives its rows from the columns.

    >>> import numpy as np
    >>> from headrace.batch import RecordBatch
    >>> from headrace.record import ModelRef
    >>> part = RecordBatch(topic="t", partition=1, offsets=range(7, 9), keys=["a", None],
    ...                    event_times=np.array([1.0, 2.0]), columns={},
    ...                    values_from=lambda b: [None, None], raws=[b'{"x": 1}', b'{"x":2}'])
    >>> out = ScoredBatch(records=part, predictions=[0.5, 0.25], model=ModelRef("m", "1"),
    ...                   processed_at=9.0)
    >>> prediction_rows(out, prediction=str, value=repr, raw_inputs=True)[0]
    ('t', 1, 7, 'a', '0.5', 'm', '1', None, 1.0, 9.0, '{"x": 1}')
    >>> part.materialized
    False
    """
    model = (batch.model.name, batch.model.version, batch.model.sha256)
    at = batch.processed_at
    parts = parts_of(batch.records) if raw_inputs or value is None else None
    if parts is not None and all(
        not p.materialized and (value is None or p.raws is not None) for p in parts
    ):
        rows: list[tuple[Any, ...]] = []
        done = 0
        for p in parts:
            n = len(p)
            inputs = [None] * n if value is None else [raw.decode() for raw in p.raws or ()]
            rows += [
                (p.topic, p.partition, offset, _key(key), prediction(pred), *model, t, at, given)
                for offset, key, pred, t, given in zip(
                    p.offsets,
                    p.keys,
                    batch.predictions[done : done + n],
                    p.event_times.tolist(),
                    inputs,
                    strict=True,
                )
            ]
            done += n
        return rows
    records = batch.records
    if value is None:
        given: list[Any] = [None] * len(records)
    elif raw_inputs:
        given = [value(r.value) if r.raw is None else r.raw.decode() for r in records]
    else:
        given = [value(r.value) for r in records]
    return [
        (r.topic, r.partition, r.offset, _key(r.key), prediction(p), *model, r.event_time, at, i)
        for r, p, i in zip(records, batch.predictions, given, strict=True)
    ]


def _key(key: Any) -> str | None:
    return None if key is None else str(key)


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
