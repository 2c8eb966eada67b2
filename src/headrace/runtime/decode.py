"""Decoding raw bytes into values, keys and event times: the first stage after a source."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

import msgspec

from headrace.errors import ErrorType, RecordError, Stage, failure, json_kind
from headrace.record import FailedRecord, Record


class DecodeError(RecordError):
    """A record's bytes are not a valid event."""


class JsonDecoder:
    """Decodes ``Record.raw`` as JSON and fills in ``value``, ``key`` and ``event_time``.

    ``key_field`` names the field that keys a record (entity id); ``time_field`` the field
    with its event time, as epoch seconds or an ISO 8601 string with a time zone. Without
    ``time_field`` the event time stays what the source set (arrival time, or the Kafka
    timestamp). ``max_bytes`` bounds the size of one message.
    """

    def __init__(
        self,
        *,
        key_field: str | None = None,
        time_field: str | None = None,
        max_bytes: int = 1 << 20,
    ) -> None:
        self.key_field = key_field
        self.time_field = time_field
        self.max_bytes = max_bytes
        self._decode = msgspec.json.Decoder().decode

    def decode(self, records: Sequence[Record]) -> tuple[list[Record], list[FailedRecord]]:
        """Decode in place; returns the records that decoded and those that failed."""
        good: list[Record] = []
        failed: list[FailedRecord] = []
        decode, key_field, time_field = self._decode, self.key_field, self.time_field
        limit = self.max_bytes
        for r in records:
            raw = r.raw
            try:
                if raw is None:
                    raise DecodeError("record has no bytes to decode", ErrorType.NO_BYTES)
                if len(raw) > limit:
                    raise DecodeError(
                        f"message of {len(raw)} bytes exceeds max_bytes={limit}",
                        ErrorType.TOO_LARGE,
                    )
                value = decode(raw)
                if key_field is not None or time_field is not None:
                    if not isinstance(value, dict):
                        raise DecodeError(
                            f"expected a JSON object, got {json_kind(value)}",
                            ErrorType.NOT_AN_OBJECT,
                        )
                    # Both are read before either is set: a failure leaves the record as is.
                    key = value.get(key_field) if key_field is not None else r.key
                    when = event_time(value, time_field) if time_field is not None else None
                    r.key = key
                    if when is not None:
                        r.event_time = when
                r.value = value
            except DecodeError as exc:
                failed.append(failure(r, Stage.DECODE, exc, exc.error_type))
                continue
            # One bad message must fail alone, never the whole chunk. What msgspec raises
            # for bad bytes differs between releases (invalid UTF-8 was UnicodeDecodeError
            # before 0.19 and is DecodeError since; deep nesting is RecursionError): the
            # kind is read from the bytes, not from the class.
            except (msgspec.DecodeError, ValueError, RecursionError) as exc:
                assert raw is not None
                failed.append(failure(r, Stage.DECODE, exc, _bad_bytes(raw, exc)))
                continue
            good.append(r)
        return good, failed


def _bad_bytes(raw: bytes, exc: BaseException) -> ErrorType:
    """Why ``raw`` did not decode (called only for the few that do not)."""
    if isinstance(exc, RecursionError):
        return ErrorType.TOO_DEEP
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return ErrorType.INVALID_UTF8
    return ErrorType.INVALID_JSON


# A tuple, built once: ``int | float`` in the call built a union per record (5% of a Kafka
# worker's event-loop time in a py-spy profile, 2026-12-06).
_NUMBER = (int, float)


def event_time(value: dict[str, Any], field: str) -> float:
    """Epoch seconds from a number, or from an ISO 8601 string that names its time zone."""
    if field not in value:
        raise DecodeError(f"missing event-time field {field!r}", ErrorType.MISSING_FIELD)
    t = value[field]
    if type(t) is float:  # what a JSON number with a fraction decodes to: the usual case
        return t
    if isinstance(t, _NUMBER) and not isinstance(t, bool):
        try:
            return float(t)
        except OverflowError:  # a JSON integer has no size limit
            raise DecodeError(
                f"event-time field {field!r} is out of range", ErrorType.INVALID_TIME
            ) from None
    if isinstance(t, str):
        try:
            parsed = dt.datetime.fromisoformat(t)
        except ValueError as exc:
            raise DecodeError(
                f"event-time field {field!r} is not ISO 8601: {t[:40]!r}", ErrorType.INVALID_TIME
            ) from exc
        if parsed.tzinfo is None:
            raise DecodeError(
                f"event-time field {field!r} has no time zone: {t[:40]!r}", ErrorType.INVALID_TIME
            )
        return parsed.timestamp()
    raise DecodeError(
        f"event-time field {field!r} must be a number or a string, got {json_kind(t)}",
        ErrorType.WRONG_TYPE,
    )
