"""A load generator: the reference sensor events, produced to a Kafka topic at a known rate.

Measuring a pipeline needs input whose volume, rate and ids are known exactly: ids are
unique and increasing from ``start_id`` so an audit can tell a loss from a duplicate, and
records are keyed by ``entity_id`` so per-entity order is per-partition order, as in
production. A ``malformed`` fraction of records is replaced by bytes a decoder must
reject (several kinds, see :data:`MALFORMED_KINDS`), so the dead-letter path is exercised
under load too; each still begins ``{"id": N,`` and carries the headers
``loadgen-id`` and ``loadgen-malformed`` so it can be accounted for.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import msgspec
from confluent_kafka import KafkaError, KafkaException, Producer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)

from headrace.connectors.generator import SensorEvents, planned_events
from headrace.errors import HeadraceError
from headrace.tools.settings import RedactingLogger, describe, redact

# Defaults chosen for throughput without surprises: a short linger batches records (a
# broker's cost grows with the number of batches), and no compression keeps the bytes on
# the wire equal to the bytes a pipeline decodes.
PRODUCER_DEFAULTS: dict[str, Any] = {
    "linger.ms": 5,
    "compression.type": "none",
    # Count failures only: a Python callback per delivered record costs throughput.
    "delivery.report.only.error": True,
}

#: Kinds of malformed record, in the order they take turns. ``oversize`` joins only when
#: an ``oversize_bytes`` size is asked for.
MALFORMED_KINDS = ("invalid_json", "invalid_utf8", "wrong_types", "deep_nesting", "nan")
#: Nesting depth of the ``deep_nesting`` kind: beyond any sane decoder's limit.
DEEP_NESTING = 10_000
#: ``headrace.runtime.decode.JsonDecoder``'s default ``max_bytes`` is 1 MiB.
DEFAULT_OVERSIZE = (1 << 20) + 1

ID_HEADER = "loadgen-id"
KIND_HEADER = "loadgen-malformed"

_encode = msgspec.json.Encoder().encode


class LoadgenError(HeadraceError, RuntimeError):
    """The load generator could not reach the broker."""


def _prefix(event: Mapping[str, Any]) -> bytes:
    """``{"id":N,"entity_id":"...",`` — what every malformed kind keeps, so the id can be
    read back by a regular expression even when the rest cannot be parsed."""
    return b'{"id":%d,"entity_id":%s,' % (event["id"], _encode(event["entity_id"]))


def _invalid_json(event: Mapping[str, Any], size: int) -> bytes:
    # Cut off mid-array: the classic torn write.
    return _prefix(event) + b'"ts":%r,"features":[1.0,2.0' % event["ts"]


def _invalid_utf8(event: Mapping[str, Any], size: int) -> bytes:
    # Well-formed JSON structure, but a string holds bytes that are not UTF-8.
    return _prefix(event) + b'"ts":%r,"type":"read\xff\xfeing","features":%s}' % (
        event["ts"],
        _encode(event["features"]),
    )


def _wrong_types(event: Mapping[str, Any], size: int) -> bytes:
    # Valid JSON whose fields have the wrong types: a featurizer must reject it.
    wrong = dict(event)
    wrong["features"] = ",".join(str(f) for f in event["features"])
    wrong["value"] = {"reading": event["value"]}
    wrong["ts"] = [event["ts"]]
    return _encode(wrong)


def _deep_nesting(event: Mapping[str, Any], size: int) -> bytes:
    return (
        _prefix(event) + b'"features":' + b"[" * DEEP_NESTING + b"1.0" + b"]" * DEEP_NESTING + b"}"
    )


def _nan(event: Mapping[str, Any], size: int) -> bytes:
    # JSON has no NaN; Python's json module accepts the literal anyway.
    return (
        _prefix(event)
        + b'"ts":%r,"value":NaN,"features":[NaN,1.0,2.0,3.0,4.0,5.0,6.0,7.0]}' % (event["ts"])
    )


def _oversize(event: Mapping[str, Any], size: int) -> bytes:
    # A valid event, padded past the size a decoder accepts.
    body = _encode(event)
    pad = max(size - len(body) - len(b',"padding":""'), 0)
    return body[:-1] + b',"padding":"' + b"x" * pad + b'"}'


_MALFORMERS: dict[str, Callable[[Mapping[str, Any], int], bytes]] = {
    "invalid_json": _invalid_json,
    "invalid_utf8": _invalid_utf8,
    "wrong_types": _wrong_types,
    "deep_nesting": _deep_nesting,
    "nan": _nan,
    "oversize": _oversize,
}


def malformed_payload(kind: str, event: Mapping[str, Any], oversize_bytes: int = 0) -> bytes:
    """The malformed bytes of ``kind`` standing in for ``event`` (same id and entity).

    >>> e = {"id": 7, "entity_id": "sensor-00001", "ts": 1.5, "value": 0.5,
    ...      "features": [0.0] * 8, "priority": "low", "type": "reading"}
    >>> malformed_payload("invalid_json", e)[:35]
    b'{"id":7,"entity_id":"sensor-00001",'
    """
    try:
        make = _MALFORMERS[kind]
    except KeyError:
        known = ", ".join(sorted(_MALFORMERS))
        raise ValueError(f"unknown malformed kind {kind!r}; expected one of {known}") from None
    return make(event, oversize_bytes or DEFAULT_OVERSIZE)


@dataclass(frozen=True)
class LoadgenSummary:
    """What a run produced. ``count`` records (ids ``first_id`` .. ``next_id - 1``) were
    handed to the producer, ``malformed`` of them malformed; ``failed`` of those were not
    delivered (an error, or still queued when the final flush timed out)."""

    topic: str
    count: int
    malformed: int
    elapsed: float
    rate: float
    first_id: int
    next_id: int
    failed: int = 0
    interrupted: bool = False
    malformed_by_kind: dict[str, int] = field(default_factory=dict)
    errors: tuple[str, ...] = ()

    @property
    def delivered(self) -> int:
        return self.count - self.failed


def _progress(console: Console, topic: str, total: int | None) -> Progress:
    columns: list[Any] = [TextColumn(f"[bold]{topic}[/bold]")]
    if total is not None:
        columns += [BarColumn(), MofNCompleteColumn(), TaskProgressColumn()]
    else:
        columns += [TextColumn("{task.completed:,} records")]
    columns += [TextColumn("{task.fields[rate]:>10,.0f} rec/s"), TimeElapsedColumn()]
    return Progress(*columns, console=console, transient=False)


def produce_events(
    bootstrap: str,
    topic: str,
    *,
    rate: float = 0.0,
    count: int | None = None,
    seconds: float | None = None,
    malformed: float = 0.0,
    oversize_bytes: int | None = None,
    entities: int = 100,
    anomaly_rate: float = 0.01,
    seed: int = 0,
    start_id: int = 0,
    config: Mapping[str, Any] | None = None,
    chunk_size: int = 1000,
    flush_timeout: float = 30.0,
    connect_timeout: float = 10.0,
    progress: bool | None = None,
    console: Console | None = None,
    stop: threading.Event | None = None,
) -> LoadgenSummary:
    """Produce reference events to ``topic``, keyed by ``entity_id``.

    ``rate`` is events per second (0: as fast as the producer takes them). The run ends
    after ``count`` events or ``seconds`` seconds, whichever comes first; with neither it
    runs until ``stop`` is set or the process is interrupted (Ctrl-C), and still flushes.
    At a ``rate``, ``seconds`` means exactly ``rate * seconds`` events (rounded), record
    ``i`` due ``i / rate`` seconds after the start, as the ``generator`` source counts them.
    Record ``k`` of the run (from 0) is malformed exactly when ``floor((k+1)·f)`` exceeds
    ``floor(k·f)`` for ``f = malformed``: ``floor(n·f)`` of ``n`` records, evenly spread,
    the kinds taking turns. ``config`` is passed to librdkafka as is, over
    :data:`PRODUCER_DEFAULTS`. ``progress`` shows a rich progress bar (default: only when
    ``console`` is a terminal). ``ts`` is the wall-clock time the chunk was made.

    Raises ``ValueError`` for bad arguments or settings librdkafka rejects, and
    :class:`LoadgenError` if the broker does not answer within ``connect_timeout``
    seconds; messages never contain secret settings.
    """
    if rate < 0:
        raise ValueError(f"rate must not be negative, got {rate}")
    if count is not None and count < 0:
        raise ValueError(f"count must not be negative, got {count}")
    if seconds is not None and seconds <= 0:
        raise ValueError(f"seconds must be positive, got {seconds}")
    if not 0.0 <= malformed <= 1.0:
        raise ValueError(f"malformed must be between 0 and 1, got {malformed}")
    if oversize_bytes is not None and oversize_bytes <= 0:
        raise ValueError(f"oversize_bytes must be positive, got {oversize_bytes}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be at least 1, got {chunk_size}")
    if start_id < 0:
        raise ValueError(f"start_id must not be negative, got {start_id}")

    settings: dict[str, Any] = {**PRODUCER_DEFAULTS, **(config or {})}
    settings["bootstrap.servers"] = bootstrap
    if oversize_bytes and "message.max.bytes" not in settings:
        # Let the producer send what was asked for; the broker (or the pipeline) decides.
        settings["message.max.bytes"] = max(oversize_bytes + 4096, 1_000_000)
    errors: list[str] = []
    failed = 0

    def on_delivery(err: KafkaError | None, _msg: object) -> None:
        nonlocal failed
        if err is not None:
            failed += 1
            if len(errors) < 5:
                errors.append(redact(str(err), settings))

    def on_error(err: KafkaError) -> None:
        if len(errors) < 5:
            errors.append(redact(str(err), settings))

    try:
        producer = Producer(
            {
                **settings,
                "on_delivery": on_delivery,
                "error_cb": on_error,
                "logger": RedactingLogger(settings),
            }
        )
    except (KafkaException, ValueError, TypeError) as exc:
        raise ValueError(f"cannot create a producer: {redact(str(exc), settings)}") from None
    try:
        producer.list_topics(timeout=connect_timeout)
    except KafkaException as exc:
        raise LoadgenError(
            f"broker at {bootstrap} did not answer within {connect_timeout}s: "
            f"{redact(str(exc), settings)}"
        ) from None

    kinds: Sequence[str] = MALFORMED_KINDS + (("oversize",) if oversize_bytes else ())
    frac = Fraction(malformed).limit_denominator(1_000_000)
    num, den = frac.numerator, frac.denominator
    by_kind = dict.fromkeys(kinds, 0)
    gen = SensorEvents(entities=entities, anomaly_rate=anomaly_rate, seed=seed)
    size = oversize_bytes or 0
    encode = _encode
    produce = producer.produce
    poll = producer.poll

    if console is None:
        console = Console(stderr=True)
    show = console.is_terminal if progress is None else progress
    bar = _progress(console, topic, count) if show else None
    task = bar.add_task("produce", total=count, rate=0.0) if bar is not None else None

    produced = 0
    n_bad = 0
    interrupted = False
    start = time.monotonic()
    # Paced, `seconds` means rate * seconds events (as the generator source counts them);
    # unpaced, it is a time limit.
    total = planned_events(rate, count, seconds)
    deadline = start + seconds if seconds is not None and not rate else None
    if bar is not None:
        bar.start()
    try:
        while total is None or produced < total:
            now = time.monotonic()
            if (deadline is not None and now >= deadline) or (stop is not None and stop.is_set()):
                break
            n = chunk_size
            if rate:
                # Records 0 .. due-1 are due by now (record i at start + i / rate).
                due = math.floor((now - start) * rate) + 1 - produced
                if due <= 0:
                    # Pacing, not synchronisation: serve delivery reports until the next
                    # record is due.
                    poll(min(max(start + produced / rate - now, 0.0), 0.1))
                    continue
                n = min(n, due)
            if total is not None:
                n = min(n, total - produced)
            events, _ = gen.make(start_id=start_id + produced, n=n, ts=time.time())
            for i, event in enumerate(events):
                k = produced + i
                headers: list[tuple[str, str | bytes | None]] | None = None
                if num and ((k + 1) * num) // den > (k * num) // den:
                    kind = kinds[n_bad % len(kinds)]
                    n_bad += 1
                    by_kind[kind] += 1
                    payload = malformed_payload(kind, event, size)
                    headers = [(ID_HEADER, b"%d" % event["id"]), (KIND_HEADER, kind.encode())]
                else:
                    payload = encode(event)
                while True:
                    try:
                        produce(topic, payload, event["entity_id"], headers=headers)
                        break
                    except BufferError:
                        poll(0.05)  # the local queue is full: let it drain
            produced += n
            poll(0)
            if bar is not None and task is not None:
                elapsed = time.monotonic() - start
                bar.update(task, completed=produced, rate=produced / elapsed if elapsed else 0.0)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        left = producer.flush(flush_timeout)
        elapsed = time.monotonic() - start
        if bar is not None:
            if task is not None:
                bar.update(task, completed=produced, rate=produced / elapsed if elapsed else 0.0)
            bar.stop()
    if left:
        errors.append(f"{left} records still queued after a {flush_timeout}s flush")
    return LoadgenSummary(
        topic=topic,
        count=produced,
        malformed=n_bad,
        elapsed=elapsed,
        rate=produced / elapsed if elapsed > 0 else 0.0,
        first_id=start_id,
        next_id=start_id + produced,
        failed=failed + left,
        interrupted=interrupted,
        malformed_by_kind={k: v for k, v in by_kind.items() if v},
        errors=tuple(errors),
    )


def settings_line(bootstrap: str, config: Mapping[str, Any] | None) -> str:
    """The producer settings a run uses, secrets masked, for the operator to check."""
    return describe({**PRODUCER_DEFAULTS, **(config or {}), "bootstrap.servers": bootstrap})
