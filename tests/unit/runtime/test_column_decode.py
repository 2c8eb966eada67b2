"""The column decoder gives what the record-by-record path gives, or leaves it to it."""

from __future__ import annotations

from typing import Any

import msgspec
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from headrace.batch import RecordBatch
from headrace.models.featurizer import Featurizer
from headrace.runtime.column_decode import ColumnDecoder
from headrace.runtime.decode import JsonDecoder

FEATURIZER = Featurizer(fields=["a", "b c"], vector="v")


def raw_batch(raws: list[bytes], *, start: int = 0) -> RecordBatch:
    n = len(raws)
    return RecordBatch(
        topic="t",
        partition=3,
        offsets=range(start, start + n),
        keys=[f"kafka-key-{i}" for i in range(n)],
        event_times=np.arange(n, dtype=np.float64) + 0.5,
        columns={},
        values_from=lambda b: [None] * len(b),
        raws=raws,
    )


def general(raws: list[bytes], decoder: JsonDecoder) -> tuple[list[Any], list[Any]]:
    """The record-by-record path: records, their features, and the failures."""
    good, failed = decoder.decode(raw_batch(raws).records())
    x, bad = FEATURIZER.transform([r.value for r in good])
    return [(r.key, r.event_time, r.value, r.raw, r.offset) for r in good], [x, bad, failed]


number = st.one_of(
    st.floats(-1e6, 1e6, allow_nan=False),
    st.integers(-(10**6), 10**6),
)
event = st.fixed_dictionaries(
    {
        "a": number,
        "b c": number,
        "v": st.lists(number, min_size=3, max_size=3),
        "ts": number,
        "other": st.text(max_size=5),
    },
    optional={"id": st.one_of(st.text(max_size=5), st.integers(), st.none())},
)


@settings(max_examples=60, deadline=None)
@given(events=st.lists(event, min_size=1, max_size=20))
def test_well_formed_events_decode_into_the_columns_the_general_path_reads(
    events: list[dict[str, Any]],
) -> None:
    """Same keys (absent: None), times, features, values and bytes; no record built."""
    decoder = JsonDecoder(key_field="id", time_field="ts")
    raws = [msgspec.json.encode(e) for e in events]
    batch, failed = ColumnDecoder(decoder, FEATURIZER).decode(raw_batch(raws))
    assert isinstance(batch, RecordBatch) and not failed and not batch.materialized
    columns = FEATURIZER.from_columns(batch.columns)
    assert columns is not None
    records, (x, bad, general_failed) = general(raws, decoder)
    assert not bad and not general_failed
    assert np.array_equal(columns, x)
    assert list(batch.keys) == [k for k, *_ in records]
    assert batch.event_times.tolist() == [t for _, t, *_ in records]
    assert [(r.key, r.event_time, r.value, r.raw, r.offset) for r in batch] == records


BAD = [
    b"not json",
    b"[1, 2]",
    b'{"a": 1, "b c": 2, "v": [1, 2, 3]}',  # no time
    b'{"a": true, "b c": 2, "v": [1, 2, 3], "ts": 1}',  # a boolean feature
    b'{"a": null, "b c": 2, "v": [1, 2, 3], "ts": 1}',
    b'{"a": 1, "b c": 2, "v": [1, 2], "ts": 1}',  # a shorter vector
    b'{"a": 1, "b c": 2, "v": [1, 2, 3], "ts": "2026-12-06T12:00:00+00:00"}',
    b'{"a": 1, "b c": 2, "v": [1, 2, 3], "ts": 1' + b"0" * 400 + b"}",  # too large a time
    b'{"a": 1e999, "b c": 2, "v": [1, 2, 3], "ts": 1}',  # infinite
    b'{"a": 1, "b c": 2, "v": [1, 2, 3], "ts": 1, "pad": "' + b"x" * 2000 + b'"}',
    b"\xff\xfe",
]


@settings(max_examples=60, deadline=None)
@given(
    events=st.lists(event, min_size=0, max_size=8),
    bad=st.sampled_from(BAD),
    at=st.integers(0, 8),
)
def test_a_batch_with_an_event_the_schema_refuses_goes_the_general_way(
    events: list[dict[str, Any]], bad: bytes, at: int
) -> None:
    """Whatever the schema does not take as it is, the general path decides, record by
    record: the same records, values, failures (with their kinds) as without columns."""
    decoder = JsonDecoder(key_field="id", time_field="ts", max_bytes=1000)
    raws = [msgspec.json.encode(e) for e in events]
    raws.insert(min(at, len(raws)), bad)
    good, failed = ColumnDecoder(decoder, FEATURIZER).decode(raw_batch(raws))
    records, (_, _, general_failed) = general(raws, decoder)
    assert [(r.key, r.event_time, r.value, r.raw, r.offset) for r in good] == records
    assert [(f.record.offset, f.error_type, f.error) for f in failed] == [
        (f.record.offset, f.error_type, f.error) for f in general_failed
    ]
    if isinstance(good, RecordBatch):  # the schema took it: so did the featurizer not
        assert FEATURIZER.from_columns(good.columns) is None


def test_a_pipeline_whose_events_the_schema_never_takes_stops_trying() -> None:
    """ISO times, say: after a trial of chunks that mostly went the general way, no
    chunk is decoded twice any more."""
    d = ColumnDecoder(JsonDecoder(time_field="ts"), Featurizer(fields=["a"]))
    iso = [b'{"a": 1, "ts": "2026-12-06T12:00:00+00:00"}'] * 3
    for _ in range(40):
        good, failed = d.decode(raw_batch(iso))
        assert len(good) == 3 and not failed
    assert not d.trying and d.tried < 40


def test_a_key_field_that_is_also_a_feature_is_left_to_the_general_path() -> None:
    d = ColumnDecoder(JsonDecoder(key_field="a"), Featurizer(fields=["a"]))
    assert not d.usable
    good, _ = d.decode(raw_batch([b'{"a": 1}']))
    assert not isinstance(good, RecordBatch) and good[0].key == 1


def test_batches_of_one_decoder_join_into_one() -> None:
    """Batches that follow one another build their values the same way, so the batcher
    joins them into one batch of columns."""
    from headrace.batch import join

    d = ColumnDecoder(JsonDecoder(time_field="ts"), Featurizer(fields=["a"]))
    first, _ = d.decode(raw_batch([b'{"a": 1, "ts": 1}']))
    second, _ = d.decode(raw_batch([b'{"a": 2, "ts": 2}'], start=1))
    joined = join([first, second])
    assert isinstance(joined, RecordBatch) and joined.columns["a"].tolist() == [1.0, 2.0]
