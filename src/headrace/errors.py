"""Headrace's own words for what went wrong with a record.

Every record that is not scored is written somewhere with a *stage* (where it stopped) and
an *error type* (why). Both are a public contract: dead-letter headers
(``headrace-stage``, ``headrace-error-type``), the ``stage`` and ``error_type`` columns of
the database sinks, the ``error_type``/``reason`` labels of the failure metrics and the
log lines that report them. So they come from this fixed vocabulary, never from the class
name of whatever library raised: a library upgrade (msgspec 0.23 raises ``DecodeError``
where older releases raised ``UnicodeDecodeError``) must not change what a consumer of the
dead letters sees. The library's own message stays in the error text.

The README's table "Error types" lists the same values; a test keeps the two equal.

:class:`HeadraceError` is the base of every exception Headrace raises on purpose. This
module imports only :mod:`headrace.record`, so that every other module can import it.

>>> ErrorType.INVALID_UTF8 == "invalid-utf8"
True
>>> error_type_of(TimeoutError("slow"), default=ErrorType.MODEL_ERROR)
<ErrorType.MODEL_TIMEOUT: 'model-timeout'>
"""

from __future__ import annotations

from enum import StrEnum

from headrace.record import FailedRecord, ModelRef, Record

#: Error messages are cut to this many characters: a dead letter carries the message, and
#: some libraries put the whole input into theirs.
MAX_ERROR_CHARS = 500


class Stage(StrEnum):
    """Where a record stopped."""

    DECODE = "decode"  # its bytes are not a valid event
    ENRICH = "enrich"  # a lookup before the features found nothing for it (and no default)
    VALIDATE = "validate"  # the event has no valid features
    WINDOW = "window"  # no window took it (late, or no key or time to place it by)
    MODEL = "model"  # the model failed on it, alone, after retries
    SHED = "shed"  # set aside under the shedding policy
    OUTPUT = "output"  # its output could not be written to a sink


class ErrorType(StrEnum):
    """Why a record stopped: one value per kind of failure, stable across releases."""

    # decode
    NO_BYTES = "no-bytes"  # the source delivered no payload
    TOO_LARGE = "too-large"  # larger than the decoder's max_bytes
    INVALID_UTF8 = "invalid-utf8"  # not UTF-8 text
    INVALID_JSON = "invalid-json"  # not a JSON document (NaN and Infinity are not JSON)
    TOO_DEEP = "too-deep"  # nested deeper than the decoder allows
    # decode (key and event-time fields), enrich (the lookup key), validate and window
    NOT_AN_OBJECT = "not-an-object"  # a field was asked of a value that is no JSON object
    MISSING_FIELD = "missing-field"  # a field that must be there is not
    WRONG_TYPE = "wrong-type"  # a field holds the wrong kind of value
    INVALID_TIME = "invalid-time"  # an event time that is no time (no zone, out of range)
    # enrich
    LOOKUP_MISSING = "lookup-missing"  # its key is not in the lookup's store, and no default
    # validate
    NON_FINITE = "non-finite"  # a feature is NaN or infinite
    OUT_OF_RANGE = "out-of-range"  # a feature is too large for the feature matrix's type
    WRONG_SHAPE = "wrong-shape"  # a different number of features than the others
    # window
    LATE = "late"  # behind the watermark by more than the allowed lateness
    # model
    MODEL_ERROR = "model-error"  # the model raised on this record
    MODEL_TIMEOUT = "model-timeout"  # the model did not answer within model_timeout_ms
    WRONG_OUTPUT_COUNT = "wrong-output-count"  # the model returned too many or too few outputs
    # shed
    SHED_IN_FLIGHT = "shed-in-flight"  # in-flight work above the policy's bound on arrival
    SHED_DEADLINE = "shed-deadline"  # older than the policy's max_event_age when batched
    # output
    OUTPUT_TOO_LARGE = "output-too-large"  # larger than the sink accepts
    OUTPUT_REJECTED = "output-rejected"  # the sink refused this one output for good
    OUTPUT_RETRIES_EXHAUSTED = "output-retries-exhausted"  # the sink failed on it every retry


class HeadraceError(Exception):
    """The base of every exception Headrace raises on purpose: ``except HeadraceError``
    tells Headrace's own errors from a bug or a library's. Each also keeps the built-in
    base that says what kind of error it is (``ValueError``, ``TimeoutError``, ...), so
    code that catches those goes on working."""


class RecordError(HeadraceError, ValueError):
    """A record cannot go on, for a reason in the vocabulary: the base of the errors the
    decoder and the featurizer raise for one record."""

    def __init__(self, message: str, error_type: ErrorType) -> None:
        super().__init__(message)
        self.error_type = error_type


def json_kind(value: object) -> str:
    """A value's JSON name, for messages about records (not Python's class names).

    >>> json_kind([1]), json_kind(None), json_kind(True), json_kind(2.5)
    ('an array', 'null', 'a boolean', 'a number')
    """
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list | tuple):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    if value is None:
        return "null"
    if isinstance(value, int | float):
        return "a number"
    return type(value).__name__  # not from JSON: a source that builds its own values


def error_type_of(exc: BaseException, *, default: ErrorType) -> ErrorType:
    """The vocabulary's word for ``exc``: its own where it carries one, ``model-timeout``
    for a timeout, else ``default`` (what the stage that caught it calls a failure)."""
    own = getattr(exc, "error_type", None)
    if isinstance(own, ErrorType):
        return own
    if isinstance(exc, TimeoutError):
        return ErrorType.MODEL_TIMEOUT
    return default


def failure(
    record: Record,
    stage: Stage,
    exc: BaseException | str,
    error_type: ErrorType,
    *,
    model: ModelRef | None = None,
    attempts: int = 1,
) -> FailedRecord:
    """A record that failed, as the dead-letter and shed destinations take it: the stage
    and error type as plain strings of the vocabulary (every sink can store them), the
    message the library's own, cut to :data:`MAX_ERROR_CHARS`."""
    return FailedRecord(
        record=record,
        stage=stage.value,
        error=str(exc)[:MAX_ERROR_CHARS],
        error_type=error_type.value,
        model=model,
        attempts=attempts,
    )
