"""Decoding a chunk of JSON events straight into the columns the model reads.

A source that reads bytes (Kafka) can hand the engine a chunk of one partition as a
:class:`~headrace.batch.RecordBatch` of raw bytes. :class:`ColumnDecoder` decodes each
event with a msgspec schema of just the fields the featurizer reads, plus the key and
time fields, and keeps the results as arrays: no ``dict`` and no ``Record`` per event.
The events' full values are decoded only if a part of the pipeline asks for records
(a dead letter, a sink that writes the decoded input).

Anything the schema does not take as it is (a missing or mistyped field, a boolean
feature, an ISO time string, a message over ``max_bytes``, bytes that are not JSON) sends
the whole chunk down the general path (:class:`~headrace.runtime.decode.JsonDecoder`),
which decodes, checks and dead-letters record by record exactly as without this: the
schema only ever accepts what the general path accepts, with the same values.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec
import numpy as np

from headrace.batch import RecordBatch
from headrace.models.featurizer import Featurizer
from headrace.record import FailedRecord, Record
from headrace.runtime.decode import JsonDecoder

# After this many chunks, if most went down the general path (an ISO time field, say),
# stop trying the schema: it would cost a second decode for nothing.
_TRIAL = 32


class ColumnDecoder:
    """Decodes raw :class:`~headrace.batch.RecordBatch` es into columns for ``featurizer``
    (its fields as 1-D arrays, its vector as a 2-D one); anything else, and any batch the
    schema refuses, with ``decoder``.

    >>> import numpy as np
    >>> d = ColumnDecoder(JsonDecoder(key_field="id", time_field="ts"),
    ...                   Featurizer(fields=["a"], vector="v"))
    >>> raw = RecordBatch(topic="t", partition=0, offsets=range(5, 7), keys=[None, None],
    ...                   event_times=np.zeros(2), columns={},
    ...                   values_from=lambda b: [None] * len(b),
    ...                   raws=[b'{"id":"x","ts":1.5,"a":2,"v":[1,2],"other":"y"}',
    ...                         b'{"id":"z","ts":3,"a":0.5,"v":[3,4]}'])
    >>> good, failed = d.decode(raw)
    >>> good.keys, good.event_times.tolist(), good.columns["a"].tolist(), failed
    (['x', 'z'], [1.5, 3.0], [2.0, 0.5], [])
    >>> good.materialized, good[0].value["other"], good[0].raw == raw.raws[0]
    (False, 'y', True)
    >>> bad = RecordBatch(topic="t", partition=0, offsets=range(7, 9), keys=[None, None],
    ...                   event_times=np.zeros(2), columns={},
    ...                   values_from=lambda b: [None] * len(b),
    ...                   raws=[b'{"id":"q","ts":2.0,"a":true,"v":[1,2]}', b'not json'])
    >>> good, failed = d.decode(bad)  # the general path: record by record
    >>> [r.value["a"] for r in good], [(f.record.offset, f.error_type) for f in failed]
    ([True], [(8, 'invalid-json')])
    """

    def __init__(self, decoder: JsonDecoder, featurizer: Featurizer) -> None:
        self.decoder = decoder
        self.featurizer = featurizer
        self.fields = featurizer.fields
        self.vector = featurizer.vector
        # Attribute names of our own, the JSON names by ``rename``: a field's name need
        # not be a Python identifier.
        names = [*self.fields, *([self.vector] if self.vector is not None else [])]
        spec: list[Any] = [(f"f{i}", float) for i in range(len(self.fields))]
        if self.vector is not None:
            spec.append(("vec", list[float]))
        rename = {f"f{i}": name for i, name in enumerate(self.fields)}
        if self.vector is not None:
            rename["vec"] = self.vector
        if decoder.key_field is not None:
            spec.append(("key", Any, None))  # absent: None, as value.get() gives
            rename["key"] = decoder.key_field
            names.append(decoder.key_field)
        if decoder.time_field is not None:
            spec.append(("time", float))
            rename["time"] = decoder.time_field
            names.append(decoder.time_field)
        # A field read twice (the key is also a feature) cannot be two attributes.
        self.usable = len(set(names)) == len(names)
        if self.usable:
            event = msgspec.defstruct("Event", spec, rename=rename, gc=False, kw_only=True)
            self._typed = msgspec.json.Decoder(event).decode
        self._full = msgspec.json.Decoder().decode
        # One function for every batch: batches that follow one another join only if
        # they build their values the same way.
        self._values_from = self._values
        self.tried = 0
        self.fell_back = 0

    @property
    def trying(self) -> bool:
        """Whether batches are still decoded by the schema first."""
        return self.usable and not (self.tried >= _TRIAL and self.fell_back * 2 > self.tried)

    def decode(self, records: Sequence[Record]) -> tuple[Sequence[Record], list[FailedRecord]]:
        """The records that decoded (a batch of columns where the schema took them all)
        and those that failed."""
        if isinstance(records, RecordBatch) and records.raws is not None and self.trying:
            self.tried += 1
            batch = self._columns(records, records.raws)
            if batch is not None:
                return batch, []
            self.fell_back += 1
        return self.decoder.decode(records)

    def _columns(self, batch: RecordBatch, raws: Sequence[bytes]) -> RecordBatch | None:
        limit, typed = self.decoder.max_bytes, self._typed
        try:
            if max(map(len, raws)) > limit:
                return None
            events: list[Any] = [typed(raw) for raw in raws]
        except (msgspec.DecodeError, TypeError, ValueError, RecursionError):
            return None  # a raw of None is a TypeError
        n = len(events)
        columns: dict[str, np.ndarray] = {}
        for i, name in enumerate(self.fields):
            columns[name] = np.fromiter(
                (getattr(e, f"f{i}") for e in events), dtype=np.float64, count=n
            )
        if self.vector is not None:
            try:
                columns[self.vector] = np.array([e.vec for e in events], dtype=np.float64)
            except ValueError:  # rows of different lengths
                return None
            if columns[self.vector].ndim != 2:
                return None
        if self.decoder.time_field is not None:
            times = np.fromiter((e.time for e in events), dtype=np.float64, count=n)
            # A number too large for a float: the general path says which.
            if not np.isfinite(times).all():
                return None
        else:
            times = batch.event_times
        keys = [e.key for e in events] if self.decoder.key_field is not None else batch.keys
        return RecordBatch(
            topic=batch.topic,
            partition=batch.partition,
            offsets=batch.offsets,
            keys=keys,
            event_times=times,
            columns=columns,
            values_from=self._values_from,
            raws=raws,
        )

    def _values(self, batch: RecordBatch) -> list[Any]:
        """The events' full values (they decoded by the schema, so they decode)."""
        full = self._full
        return [full(raw) for raw in batch.raws or ()]
