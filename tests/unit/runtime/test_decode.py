"""The JSON decoder: values, keys and event times; bad messages become dead letters."""

from __future__ import annotations

import datetime as dt

import pytest

from headrace.errors import MAX_ERROR_CHARS, ErrorType, Stage, failure
from headrace.record import FailedRecord, Record
from headrace.runtime.decode import JsonDecoder


def rec(raw: bytes | None, offset: int = 0, event_time: float = 123.0) -> Record:
    return Record(
        key=None, value=None, event_time=event_time, topic="t", partition=0, offset=offset, raw=raw
    )


def recs(*raws: bytes) -> list[Record]:
    return [rec(raw, i) for i, raw in enumerate(raws)]


def test_valid_json_decodes_in_place() -> None:
    """Each record's value is its decoded JSON; arrival time and key stay untouched."""
    records = recs(b'{"a": 1, "b": [1.5, "x"]}', b"[1, 2]", b'"text"', b"3.5")
    good, failed = JsonDecoder().decode(records)
    assert failed == []
    assert good == records
    assert [r.value for r in good] == [{"a": 1, "b": [1.5, "x"]}, [1, 2], "text", 3.5]
    assert all(r.key is None and r.event_time == 123.0 for r in good)


def test_key_field_sets_the_key() -> None:
    """key_field copies that field into the record key; a record without it has no key."""
    good, failed = JsonDecoder(key_field="id").decode(recs(b'{"id": "pump-1"}', b'{"x": 1}'))
    assert failed == []
    assert [r.key for r in good] == ["pump-1", None]


@pytest.mark.parametrize(
    ("ts", "expected"),
    [
        ("1700000000", 1_700_000_000.0),
        ("1700000000.25", 1_700_000_000.25),
        ('"2024-01-02T03:04:05Z"', dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.UTC).timestamp()),
        (
            '"2024-01-02T05:04:05.5+02:00"',
            dt.datetime(2024, 1, 2, 3, 4, 5, 500000, tzinfo=dt.UTC).timestamp(),
        ),
    ],
)
def test_time_field_sets_event_time(ts: str, expected: float) -> None:
    """Epoch seconds and ISO 8601 strings with a zone become epoch seconds."""
    good, failed = JsonDecoder(time_field="ts").decode([rec(b'{"ts": %s}' % ts.encode())])
    assert failed == []
    assert good[0].event_time == pytest.approx(expected)
    assert isinstance(good[0].event_time, float)


@pytest.mark.parametrize(
    ("body", "reason", "error_type"),
    [
        (b'{"ts": "2024-01-02T03:04:05"}', "has no time zone", "invalid-time"),
        (b'{"ts": "yesterday"}', "is not ISO 8601", "invalid-time"),
        (b'{"x": 1}', "missing event-time field 'ts'", "missing-field"),
        (b'{"ts": true}', "must be a number or a string, got a boolean", "wrong-type"),
        (b'{"ts": null}', "must be a number or a string, got null", "wrong-type"),
        (b'{"ts": [1]}', "must be a number or a string, got an array", "wrong-type"),
        (b'{"ts": 1' + b"0" * 400 + b"}", "'ts'", "invalid-time"),
    ],
)
def test_bad_event_time_fails_the_record(body: bytes, reason: str, error_type: str) -> None:
    """An event time that cannot be read fails that record at stage decode, not the batch."""
    records = [rec(b'{"ts": 1}', 0), rec(body, 1), rec(b'{"ts": 2}', 2)]
    good, failed = JsonDecoder(time_field="ts").decode(records)
    assert [r.offset for r in good] == [0, 2]
    assert [r.event_time for r in good] == [1.0, 2.0]
    assert len(failed) == 1
    f = failed[0]
    assert f.record is records[1] and f.stage == "decode"
    assert reason in f.error
    assert f.error_type == error_type


@pytest.mark.parametrize(
    ("raw", "decoder", "reason", "error_type"),
    [
        (b'{"a": ', JsonDecoder(), "truncated", "invalid-json"),
        (b"{'a': 1}", JsonDecoder(), "JSON", "invalid-json"),
        (b"not json", JsonDecoder(), "JSON", "invalid-json"),
        (b"", JsonDecoder(), "truncated", "invalid-json"),
        (b'{"a": 1} trailing', JsonDecoder(), "trailing", "invalid-json"),
        (b'{"a": "\xff\xfe"}', JsonDecoder(), "utf-8", "invalid-utf8"),
        (b"\xff", JsonDecoder(), "", "invalid-utf8"),
        (
            b'{"k": "' + b"x" * 100 + b'"}',
            JsonDecoder(max_bytes=100),
            "exceeds max_bytes=100",
            "too-large",
        ),
        (
            b"[1, 2]",
            JsonDecoder(key_field="id"),
            "expected a JSON object, got an array",
            "not-an-object",
        ),
        (
            b'"s"',
            JsonDecoder(key_field="id"),
            "expected a JSON object, got a string",
            "not-an-object",
        ),
        (b"[" * 100_000 + b"]" * 100_000, JsonDecoder(), "", "too-deep"),
    ],
    ids=[
        "truncated",
        "single-quotes",
        "not-json",
        "empty",
        "trailing",
        "invalid-utf8-in-string",
        "invalid-utf8",
        "oversize",
        "array-with-key-field",
        "string-with-key-field",
        "deeply-nested",
    ],
)
def test_bad_message_becomes_a_decode_failure(
    raw: bytes, decoder: JsonDecoder, reason: str, error_type: str
) -> None:
    """A bad message becomes a FailedRecord at stage decode with its bytes kept and a
    bounded reason; the good records around it come out in order."""
    records = [rec(b'{"i": 0}', 0), rec(raw, 1), rec(b'{"i": 2}', 2), rec(b'{"i": 3}', 3)]
    good, failed = decoder.decode(records)
    assert [r.offset for r in good] == [0, 2, 3]
    assert [r.value for r in good] == [{"i": 0}, {"i": 2}, {"i": 3}]
    assert len(failed) == 1
    f = failed[0]
    assert isinstance(f, FailedRecord)
    assert f.record is records[1] and f.record.raw == raw
    assert f.stage == "decode"
    assert f.error_type == error_type and 0 < len(f.error) <= MAX_ERROR_CHARS
    assert type(f.error_type) is str and type(f.stage) is str  # plain, for every sink
    assert reason.lower() in f.error.lower()
    assert f.to_dict()["raw"] is not None  # the bytes survive into the dead letter


def test_message_exactly_at_max_bytes_is_accepted() -> None:
    """max_bytes is inclusive: a message of exactly that size decodes."""
    raw = b'{"k": "' + b"x" * 93 + b'"}'
    assert len(raw) == 102
    good, failed = JsonDecoder(max_bytes=102).decode([rec(raw)])
    assert failed == [] and len(good) == 1
    good, failed = JsonDecoder(max_bytes=101).decode([rec(raw)])
    assert good == [] and "102 bytes" in failed[0].error


def test_record_without_bytes_fails() -> None:
    """A record that reached the decoder with no bytes is a failure, not a crash."""
    good, failed = JsonDecoder().decode([rec(None)])
    assert good == [] and "no bytes" in failed[0].error
    assert failed[0].error_type == "no-bytes"


def test_many_failures_keep_order() -> None:
    """Interleaved good and bad records: each list keeps the source order."""
    raws = [b'{"i": %d}' % i if i % 3 else b"{bad" for i in range(30)]
    good, failed = JsonDecoder().decode(recs(*raws))
    assert [r.offset for r in good] == [i for i in range(30) if i % 3]
    assert [f.record.offset for f in failed] == list(range(0, 30, 3))


def test_error_message_is_bounded() -> None:
    """However long the reason, the stored error is cut to MAX_ERROR_CHARS."""
    field = "f" * 2000
    good, failed = JsonDecoder(time_field=field).decode([rec(b'{"x": 1}')])
    assert good == []
    assert len(failed[0].error) == MAX_ERROR_CHARS
    assert failed[0].error.startswith("missing event-time field")
    f = failure(rec(b"x"), Stage.MODEL, "y" * 10_000, ErrorType.MODEL_ERROR)
    assert len(f.error) == MAX_ERROR_CHARS and f.error_type == "model-error"
    f = failure(rec(b"x"), Stage.MODEL, RuntimeError("z" * 10_000), ErrorType.MODEL_ERROR)
    assert len(f.error) == MAX_ERROR_CHARS and f.error_type == "model-error"


@pytest.mark.parametrize(
    ("raised", "raw", "error_type"),
    [
        # What msgspec raised before 0.19 for invalid UTF-8 inside a string.
        (
            UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte"),
            b'"\xff"',
            "invalid-utf8",
        ),
        (RecursionError("maximum recursion depth exceeded"), b"[[[]]]", "too-deep"),
        (ValueError("JSON is malformed"), b"{", "invalid-json"),
    ],
)
def test_the_error_type_does_not_depend_on_what_the_library_raises(
    raised: BaseException, raw: bytes, error_type: str
) -> None:
    """The error type is read from the bytes, not from the exception's class: a msgspec
    release that raises something else for the same input changes nothing a consumer of
    the dead letters sees (msgspec 0.23 raises DecodeError where 0.18 raised
    UnicodeDecodeError)."""

    def library(_raw: bytes) -> object:
        raise raised

    decoder = JsonDecoder()
    decoder._decode = library
    good, failed = decoder.decode([rec(raw)])
    assert good == [] and [f.error_type for f in failed] == [error_type]
    assert failed[0].error == str(raised)  # the library's own words stay in the message
