"""Inputs written as read: an output's ``input`` may be the bytes the event arrived as.

A sink that writes JSON embeds an event's raw bytes (``msgspec.Raw``) instead of encoding
its decoded value again, but only where the engine says nothing changed the value since
it was decoded from those bytes (``SinkContext.inputs_as_read``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from headrace import CallableModel, Pipeline
from headrace.connectors.base import SinkContext
from headrace.enrich.lookup import Lookup
from headrace.record import ModelRef, ScoredBatch, source_record
from headrace.testing import TestingBytesSource, TestingSink, TestingSource

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=200, deadline=None)
@given(values=st.lists(json_values, min_size=1, max_size=6), pretty=st.booleans())
def test_outputs_with_raw_inputs_decode_to_the_same_outputs(
    values: list[Any], pretty: bool
) -> None:
    """Whatever the JSON and however it was laid out (indented, with newlines), an output
    encoded with the raw input decodes to exactly the output encoded from the value."""
    encode = msgspec.json.Encoder().encode
    raws = [msgspec.json.format(encode(v), indent=2) if pretty else encode(v) for v in values]
    records = [
        source_record(
            key=f"k{i}",
            value=msgspec.json.decode(raw),
            event_time=float(i),
            topic="t",
            partition=0,
            offset=i,
            raw=raw,
        )
        for i, raw in enumerate(raws)
    ]
    batch = ScoredBatch(
        records=records,
        predictions=[0.5] * len(records),
        model=ModelRef("m", "1"),
        processed_at=9.0,
    )
    as_read = [msgspec.json.decode(encode(o)) for o in batch.to_dicts(raw_inputs=True)]
    decoded = [msgspec.json.decode(encode(o)) for o in batch.to_dicts()]
    assert as_read == decoded


keys = st.none() | st.text(max_size=8) | st.integers(-(2**63), 2**63 - 1)
times = st.floats(allow_nan=False, allow_infinity=False) | st.integers(0, 2**40)


@settings(max_examples=200, deadline=None)
@given(
    events=st.lists(
        st.tuples(keys, json_values, st.booleans(), json_values, times), min_size=0, max_size=6
    ),
    raw_inputs=st.booleans(),
    sha256=st.none() | st.text(max_size=12),
)
def test_encode_each_gives_the_bytes_of_each_output_dict(
    events: list[tuple[Any, Any, bool, Any, Any]], raw_inputs: bool, sha256: str | None
) -> None:
    """The sinks that write a message per output encode a batch in one call
    (``encode_each``, built as structs): byte for byte what encoding each of ``to_dicts``
    gives, with or without raw inputs, for any key, value, prediction and event time."""
    encode = msgspec.json.Encoder().encode
    records = [
        source_record(
            key=key,
            value=value,
            event_time=when,
            topic="t",
            partition=i % 3,
            offset=1000 + i,
            raw=encode(value) if has_raw else None,
        )
        for i, (key, value, has_raw, _, when) in enumerate(events)
    ]
    batch = ScoredBatch(
        records=records,
        predictions=[prediction for *_, prediction, _ in events],
        model=ModelRef("m", "2", sha256),
        processed_at=9.5,
    )
    expected = [encode(d) for d in batch.to_dicts(raw_inputs=raw_inputs)]
    assert batch.encode_each(encode, raw_inputs=raw_inputs) == expected


class BindingSink(TestingSink):
    """Keeps the context the engine bound it with."""

    context: SinkContext | None = None

    def bind(self, context: SinkContext) -> None:
        self.context = context


class Store:
    """A lookup store in memory: only the engine's decision is under test here."""

    what = "memory"

    async def fetch(self, keys: Sequence[Any]) -> dict[Any, dict[str, Any]]:
        return {k: {"site": "a"} for k in keys}

    def transient(self, exc: BaseException) -> bool:
        return False

    async def reset(self) -> None:
        pass

    async def close(self) -> None:
        pass


def identity(xs: list[Any]) -> list[int]:
    return [1 for _ in xs]


async def bound(source: Any, *, lookup: bool = False) -> tuple[bool, list[dict[str, Any]]]:
    sink = BindingSink()
    p = (
        Pipeline("raw")
        .source(source)
        .model(CallableModel(identity, name="one", version="1"))
        .batching(max_size=8, max_wait=0.005)
        .sink(sink)
    )
    if lookup:
        p = p.enrich(Lookup(name="site", store=Store(), key_field="id"))
    await p.run_async(install_signal_handlers=False)
    assert sink.context is not None
    return sink.context.inputs_as_read, sink.outputs


async def test_bytes_decoded_by_the_engine_are_inputs_as_read() -> None:
    as_read, outputs = await bound(TestingBytesSource([{"id": 1}, b' {"id": 2}\n']))
    assert as_read
    assert [o["input"] for o in outputs] == [{"id": 1}, {"id": 2}]


async def test_values_a_lookup_changed_are_not_inputs_as_read() -> None:
    as_read, outputs = await bound(TestingBytesSource([{"id": 1}]), lookup=True)
    assert not as_read
    assert outputs[0]["input"] == {"id": 1, "site.site": "a"}


async def test_values_a_source_built_have_no_bytes_to_write() -> None:
    as_read, _ = await bound(TestingSource([{"id": 1}]))
    assert not as_read
