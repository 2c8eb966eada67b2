"""Overload and failures through a real broker (Tansu) and a real `headrace run` worker:
a slow model, poison records, malformed input, a model that goes down, and shedding.

Each test accounts for every input: each record ends in an output, a dead letter or (under
a shedding policy) the shed destination, exactly one of them. Waits are on conditions
(log lines, the worker's /metrics, records read back), never on sleeps.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pytest

from kafka_helpers import TansuBroker, decode_values
from workers import (
    POISON,
    PacedProducer,
    TopicReader,
    Worker,
    committed,
    kafka_pipeline,
    memory_kib,
    models_env,
    reference_events,
    wait_until,
    worker_metrics,
)

pytestmark = [pytest.mark.slow, pytest.mark.kafka]

OUTPUT_SINK = "  - type: kafka\n    topic: predictions"
DEAD_LETTERS = "dead_letter:\n  type: kafka\n  topic: dead-letters\n"
# Port 0: the worker picks a free port and logs it (see `metrics_port`).
METRICS = "metrics:\n  port: 0\n"
# The Kafka source's name in its log lines ("kafka kafka: paused events[0], ...").
SOURCE = "kafka kafka"

_encode = msgspec.json.Encoder().encode


def log_of(worker: Worker) -> str:
    return worker.log.read_text(errors="replace")


def metrics_port(worker: Worker) -> int:
    """The port the worker serves /metrics on (it logs it once listening)."""
    found: list[int] = []

    def listening() -> bool:
        m = re.search(r"metrics on http://127\.0\.0\.1:(\d+)/metrics", log_of(worker))
        if m:
            found.append(int(m.group(1)))
        return bool(found)

    wait_until(listening, 30, "the metrics endpoint", (worker,))
    return found[0]


def scored(port: int) -> Callable[[], float]:
    """Records scored and written so far, from the worker's metrics."""
    return lambda: worker_metrics(port).get("headrace_records_out_total", 0.0)


def model_errors(port: int) -> float:
    """Failed model calls so far, from the worker's metrics."""
    metrics = worker_metrics(port)
    return sum(v for k, v in metrics.items() if k.startswith("headrace_model_errors_total"))


def assigned_once(log: str) -> None:
    """The consumer joined once, kept its partitions and was never evicted."""
    assert log.count(f"{SOURCE}: assigned") == 1, "the partitions moved (a rebalance)"
    assert f"{SOURCE}: revoking" not in log, "partitions were revoked mid-run"
    assert "were lost" not in log, "the consumer was evicted from its group"
    assert "maximum poll interval" not in log.lower(), "the consumer stopped polling"


def headers_text(record: dict[str, Any]) -> dict[str, str]:
    return {k: v.decode() for k, v in record["headers"].items()}


def positions_by_value(tansu: TansuBroker, topic: str, n: int) -> dict[bytes, tuple[int, int]]:
    """The (partition, offset) of every record of ``topic``, by its bytes (all distinct)."""
    records = tansu.consume_all(topic, n, timeout=30)
    found = {r["value"]: (r["partition"], r["offset"]) for r in records}
    assert len(found) == n, "the inputs are not all distinct"
    return found


def nothing_more(reader: TopicReader, timeout: float = 1.0) -> int:
    """Read ``reader`` for ``timeout`` seconds (after the worker has stopped, so nothing
    more is coming); returns how many records it holds in all."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        reader.read()
    return len(reader.values)


# -- 1. a slow model ---------------------------------------------------------------------

BACKLOG = 100_000
PADDING = 1024  # bytes of padding per event: ~1.2 KiB each, ~117 MiB of backlog
FLOW_BYTES = 2 << 20  # the byte bound: ~1,700 of these records
# While slow: 6 ms per row, at most two batches at once: at most 333 records/s.
ROW_DELAY = 0.006
# Longer than max.poll.interval.ms (10 s): a consumer that stopped polling while paused
# would be evicted within it.
SLOW_FOR = 15.0
# Memory the byte bound does not count: librdkafka's prefetch (queued.max.messages.kbytes,
# 256 KiB here, overshot by up to one fetch of max.partition.fetch.bytes = 1 MiB per
# partition, 4 here).
PREFETCH = 5 << 20
# And a fixed allowance for the rest: the decoded copies of in-flight records (values,
# feature rows, encoded outputs: a few times their bytes), outputs produced and not yet
# acknowledged, threads and the allocator's slack. Measured on a 2-core machine: peak RSS
# ~18 MiB over the start-up baseline with the bound, ~370 MiB over it without one (the
# backlog read into memory); 40 MiB is about twice what the bound needs.
ALLOWANCE = 40 << 20


@pytest.mark.timeout(240)
def test_a_slow_model_keeps_memory_bounded_and_the_consumer_in_its_group(
    tansu: TansuBroker, tmp_path: Path
) -> None:
    """A backlog of ~117 MiB and a model at least 10 times slower than the source delivers,
    for longer than max.poll.interval.ms: the partitions pause and resume over and over,
    peak RSS stays within the bound, the consumer is never evicted, and once the model is
    fast again every input is scored exactly once."""
    tansu.create_topic("events", 4)
    tansu.create_topic("predictions", 4)
    slow_flag = tmp_path / "slow"
    slow_flag.touch()
    config = kafka_pipeline(
        tmp_path / "p.yaml",
        tansu.bootstrap,
        sinks=OUTPUT_SINK,
        function="workermodels:slow",
        max_in_flight=5000,  # the byte bound (~1,700 of these records) binds first
        max_in_flight_bytes=FLOW_BYTES,
        consumer={"max.poll.interval.ms": 10_000},
        extra=METRICS,
    )
    env = models_env(tmp_path, row_delay=ROW_DELAY, slow_while=slow_flag)
    worker = Worker(config, env, tmp_path / "worker.log").start()
    assert worker.proc is not None
    pid = worker.proc.pid
    try:
        port = metrics_port(worker)
        wait_until(lambda: f"{SOURCE}: assigned" in log_of(worker), 60, "the join", (worker,))
        # Start-up done, nothing read yet: everything imported, the consumer connected.
        baseline = memory_kib(pid)["VmRSS"] << 10
        events = reference_events(BACKLOG)
        for e in events:
            e["padding"] = "x" * PADDING
        backlog_bytes = sum(len(_encode(e)) for e in events)
        tansu.produce_json("events", events, key_field="entity_id")
        del events
        peak_sampled = [0]

        def sample() -> bool:
            peak_sampled[0] = max(peak_sampled[0], memory_kib(pid).get("VmRSS", 0) << 10)
            return True

        # The slow phase: a scenario of SLOW_FOR seconds, sampling memory meanwhile.
        slow_start, out_start = time.monotonic(), scored(port)()
        slow_end = slow_start + SLOW_FOR
        wait_until(
            lambda: sample() and time.monotonic() >= slow_end, 60, "the slow phase", (worker,)
        )
        out_slow = scored(port)()
        slow_rate = (out_slow - out_start) / (time.monotonic() - slow_start)
        log = log_of(worker)
        pauses_slow = log.count(f"{SOURCE}: paused")
        resumes_slow = log.count(f"{SOURCE}: resumed")
        # At least one whole cycle while slow: paused at the bound, resumed, paused again.
        assert pauses_slow >= 2 and resumes_slow >= 1, (pauses_slow, resumes_slow)
        assert worker.alive()

        # The model is fast again: the backlog drains through the same bound.
        slow_flag.unlink()
        fast_start = time.monotonic()
        wait_until(lambda: sample() and scored(port)() >= BACKLOG, 120, "every output", (worker,))
        fast_rate = (BACKLOG - out_slow) / (time.monotonic() - fast_start)
        peak = memory_kib(pid)["VmHWM"] << 10
        log = log_of(worker)
        assigned_once(log)
        assert worker.alive()

        from headrace.tools.audit import audit

        report = audit(tansu.bootstrap, "events", output_topic="predictions", idle_timeout=0.5)
        assert worker.terminate() == 0, worker.tail()
    finally:
        worker.stop()

    bound = baseline + FLOW_BYTES + PREFETCH + ALLOWANCE
    print(
        f"\nslow model: baseline RSS {baseline >> 20} MiB, peak {peak >> 20} MiB "
        f"(sampled {peak_sampled[0] >> 20} MiB), bound {bound >> 20} MiB, backlog "
        f"{backlog_bytes >> 20} MiB; paused {log.count(f'{SOURCE}: paused')}x, resumed "
        f"{log.count(f'{SOURCE}: resumed')}x ({pauses_slow}/{resumes_slow} while slow); "
        f"{slow_rate:.0f} records/s slow, {fast_rate:.0f} records/s fast"
    )
    # Memory: bounded by the flow bound, not by the backlog.
    assert peak <= bound, f"peak RSS {peak >> 20} MiB above the bound {bound >> 20} MiB"
    assert backlog_bytes > 2 * (bound - baseline), "the backlog must dwarf the allowance"
    # The model really was 10 times slower than what the source delivers.
    assert slow_rate * 10 <= fast_rate, (slow_rate, fast_rate)
    assert log.count("pausing reading: in-flight") >= pauses_slow
    assert log.count("resuming reading: in-flight") >= resumes_slow
    assert log.count(f"{SOURCE}: resumed") >= 10, "the drain should pause and resume often"
    # Nothing lost, nothing twice, everything committed.
    assert report.holds("exactly-once"), report
    assert report.input_count == report.output_count == BACKLOG
    assert sum(committed(tansu.bootstrap, "scorers", "events", 4).values()) == BACKLOG


# -- 2. poison records -------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_poison_records_alone_are_dead_lettered_with_complete_headers(
    tansu: TansuBroker, tmp_path: Path
) -> None:
    """1% of the records make the model raise: batches are bisected, those records are
    retried and then dead-lettered with their original bytes and every header; the other
    99% are scored; outputs + dead letters = inputs, no overlap."""
    n, retries = 10_000, 2
    for topic in ("events", "predictions", "dead-letters"):
        tansu.create_topic(topic, 4)
    events = reference_events(n)
    poison = {e["id"] for e in events if e["id"] % 100 == 37}
    for e in events:
        if e["id"] in poison:
            e["features"][0] = POISON
    assert len(poison) == n // 100
    tansu.produce_json("events", events, key_field="entity_id")
    config = kafka_pipeline(
        tmp_path / "p.yaml",
        tansu.bootstrap,
        sinks=OUTPUT_SINK,
        function="workermodels:poisoned",
        extra=DEAD_LETTERS + f"failures:\n  retries: {retries}\n  backoff_ms: 5\n",
    )
    worker = Worker(config, models_env(tmp_path), tmp_path / "worker.log").start()
    outputs = TopicReader(tansu.bootstrap, "predictions", 4)
    try:
        wait_until(lambda: outputs.read() >= n - len(poison), 90, "the outputs", (worker,))
        dead = tansu.consume_all("dead-letters", len(poison), timeout=60)
        assert worker.terminate() == 0, worker.tail()
        nothing_more(outputs)
    finally:
        worker.stop()
        outputs.close()
    from headrace.tools.audit import audit

    report = audit(
        tansu.bootstrap,
        "events",
        output_topic="predictions",
        dead_letter_topic="dead-letters",
        idle_timeout=0.5,
    )
    assert report.holds("exactly-once"), report
    assert report.dead_letter_count == len(poison)  # read to the end: no other dead letter

    inputs = positions_by_value(tansu, "events", n)
    dead_ids = [v["id"] for v in decode_values(dead)]
    assert sorted(dead_ids) == sorted(poison)
    for record, value in zip(dead, decode_values(dead), strict=True):
        partition, offset = inputs[record["value"]]  # the original bytes, unchanged
        h = headers_text(record)
        assert h.pop("headrace-error").startswith(f"cannot score feature 0 = {POISON}")
        assert h == {
            "headrace-stage": "model",
            "headrace-error-type": "model-error",
            "headrace-source-topic": "events",
            "headrace-source-partition": str(partition),
            "headrace-source-offset": str(offset),
            "headrace-attempts": str(1 + retries),
            "headrace-model": "feature-sum@1",
        }
        assert record["key"] == value["entity_id"]
    out_ids = outputs.ids()
    assert len(out_ids) == len(set(out_ids)) == n - len(poison)
    assert not set(out_ids) & poison
    assert set(out_ids) | poison == set(range(n))


# -- 3. malformed input ------------------------------------------------------------------

MAX_BYTES = 32 << 10


def _bad_json(e: dict[str, Any]) -> bytes:
    return _encode(e)[:-20]  # cut off: a torn write


def _bad_utf8(e: dict[str, Any]) -> bytes:
    return _encode(e)[:-1] + b',"note":"read\xff\xfeing"}'


def _oversize(e: dict[str, Any]) -> bytes:
    return _encode(e)[:-1] + b',"padding":"' + b"x" * (MAX_BYTES + 1000) + b'"}'


def _deep(e: dict[str, Any]) -> bytes:
    # 5,000 levels: beyond the decoder's depth limit, well within max_bytes.
    return _encode(e)[:-1] + b',"deep":' + b"[" * 5000 + b"]" * 5000 + b"}"


def _nan_token(e: dict[str, Any]) -> bytes:
    # JSON has no NaN; some encoders write the bare token anyway.
    return _encode({**e, "features": "F"}).replace(b'"F"', b"[NaN,1,2,3,4,5,6,7]")


def _wrong_type(e: dict[str, Any]) -> bytes:
    return _encode({**e, "features": [*e["features"][:3], "0.5", *e["features"][4:]]})


def _missing_field(e: dict[str, Any]) -> bytes:
    return _encode({k: v for k, v in e.items() if k != "features"})


def _not_finite(e: dict[str, Any]) -> bytes:
    # A finite JSON number that is infinity as float32, the model's input type.
    return _encode({**e, "features": [1e39, *e["features"][1:]]})


# kind: how to make it, and the stage, error type and error (a pattern) it must get
MALFORMED: dict[str, tuple[Callable[[dict[str, Any]], bytes], str, str, str]] = {
    "bad_json": (_bad_json, "decode", "invalid-json", "truncated"),
    # The library's own words for it differ between msgspec releases; the type does not.
    "bad_utf8": (_bad_utf8, "decode", "invalid-utf8", "(?i)utf-8"),
    "oversize": (_oversize, "decode", "too-large", f"exceeds max_bytes={MAX_BYTES}"),
    "deep_nesting": (_deep, "decode", "too-deep", "maximum recursion depth"),
    "nan_token": (_nan_token, "decode", "invalid-json", "JSON is malformed"),
    "wrong_type": (_wrong_type, "validate", "wrong-type", "must be a number, got a string"),
    "missing_field": (_missing_field, "validate", "missing-field", "missing field 'features'"),
    # Alone in its batch or not, the same type and words.
    "not_finite": (_not_finite, "validate", "out-of-range", "too large for float32"),
}


@pytest.mark.timeout(120)
def test_malformed_input_of_each_kind_is_dead_lettered_at_its_stage(
    tansu: TansuBroker, tmp_path: Path
) -> None:
    """5% of the input of each malformed kind (40% in all): exactly those are dead-lettered,
    each with its original bytes, its position and the stage that rejected it (decode for
    bytes that are not a bounded JSON event, validate for fields the model cannot take);
    the rest is scored."""
    n = 2000
    kinds = list(MALFORMED)
    for topic in ("events", "predictions", "dead-letters"):
        tansu.create_topic(topic, 4)
    payloads: list[bytes] = []
    kind_of: dict[bytes, str] = {}
    good: set[int] = set()
    for e in reference_events(n):
        slot = e["id"] % 20  # slots 0..7 of every 20: 5% of the input for each kind
        if slot < len(kinds):
            payload = MALFORMED[kinds[slot]][0](e)
            kind_of[payload] = kinds[slot]
        else:
            payload = _encode(e)
            good.add(e["id"])
        payloads.append(payload)
    counts = Counter(kind_of.values())
    assert set(counts.values()) == {n // 20} and len(counts) == len(kinds)
    tansu.produce_json("events", payloads)
    config = kafka_pipeline(
        tmp_path / "p.yaml",
        tansu.bootstrap,
        sinks=OUTPUT_SINK,
        source={"max_bytes": MAX_BYTES},
        extra=DEAD_LETTERS,
    )
    worker = Worker(config, models_env(tmp_path), tmp_path / "worker.log").start()
    outputs = TopicReader(tansu.bootstrap, "predictions", 4)
    try:
        wait_until(lambda: outputs.read() >= len(good), 90, "the outputs", (worker,))
        dead = tansu.consume_all("dead-letters", len(kind_of), timeout=60)
        assert worker.terminate() == 0, worker.tail()
        nothing_more(outputs)
    finally:
        worker.stop()
        outputs.close()
    from headrace.tools.audit import audit

    report = audit(
        tansu.bootstrap,
        "events",
        output_topic="predictions",
        dead_letter_topic="dead-letters",
        idle_timeout=0.5,
    )
    assert report.holds("exactly-once"), report
    assert report.dead_letter_count == len(kind_of)

    inputs = positions_by_value(tansu, "events", n)
    assert sorted(r["value"] for r in dead) == sorted(kind_of)  # exactly those, as they were
    stages: Counter[tuple[str, str]] = Counter()
    for record in dead:
        kind = kind_of[record["value"]]
        partition, offset = inputs[record["value"]]
        h = headers_text(record)
        _, stage, error_type, error = MALFORMED[kind]
        assert h["headrace-stage"] == stage, (kind, h)
        assert h["headrace-error-type"] == error_type, (kind, h)
        assert re.search(error, h["headrace-error"]) and len(h["headrace-error"]) <= 500, (kind, h)
        assert h["headrace-source-topic"] == "events"
        assert (h["headrace-source-partition"], h["headrace-source-offset"]) == (
            str(partition),
            str(offset),
        )
        assert h["headrace-attempts"] == "1"
        stages[(kind, h["headrace-stage"])] += 1
    assert stages == Counter({(k, MALFORMED[k][1]): n // 20 for k in kinds})
    out_ids = outputs.ids()
    assert len(out_ids) == len(set(out_ids)) and set(out_ids) == good


# -- 4. the model goes down --------------------------------------------------------------


@pytest.mark.timeout(120)
def test_a_model_that_is_down_pauses_the_stream_without_dead_letters(
    tansu: TansuBroker, tmp_path: Path
) -> None:
    """Live input; the model fails every call for a while: nothing is dead-lettered, the
    circuit breaker pauses reading and probes with backoff, nothing is scored meanwhile;
    once the model answers, reading resumes and every input is scored once."""
    n, rate, probes = 8000, 1000, 5
    for topic in ("events", "predictions", "dead-letters"):
        tansu.create_topic(topic, 4)
    down = tmp_path / "down"
    config = kafka_pipeline(
        tmp_path / "p.yaml",
        tansu.bootstrap,
        sinks=OUTPUT_SINK,
        function="workermodels:flaky",
        extra=DEAD_LETTERS
        + METRICS
        + "failures:\n  retries: 2\n  backoff_ms: 100\n  max_backoff_ms: 800\n",
    )
    worker = Worker(config, models_env(tmp_path, down_while=down), tmp_path / "w.log").start()
    outputs = TopicReader(tansu.bootstrap, "predictions", 4)
    dead = TopicReader(tansu.bootstrap, "dead-letters", 4)
    try:
        port = metrics_port(worker)
        out = scored(port)
        wait_until(lambda: f"{SOURCE}: assigned" in log_of(worker), 60, "the join", (worker,))
        producer = PacedProducer(tansu.bootstrap, "events", rate=rate, count=n).start()
        wait_until(lambda: out() >= 1000, 30, "the first outputs", (worker,))

        down.touch()
        wait_until(
            lambda: "pausing reading: model-down" in log_of(worker), 30, "the pause", (worker,)
        )
        wait_until(lambda: f"{SOURCE}: paused" in log_of(worker), 10, "paused partitions")
        # Down for a while: the breaker probes, with backoff, `probes` times (each a failed
        # call, counted), and says so in the log once, not per probe.
        wait_until(lambda: "still failing" in log_of(worker), 10, "a probe", (worker,))
        frozen = out()
        first = model_errors(port)
        wait_until(lambda: model_errors(port) >= first + probes, 30, "probes", (worker,))
        assert out() == frozen, "records were scored while the model was down"
        assert producer.produced > frozen + 1000, "the input did not go on meanwhile"
        down.unlink()

        wait_until(lambda: "answers again" in log_of(worker), 10, "the recovery", (worker,))
        produced = producer.join(30)
        wait_until(lambda: out() >= produced, 60, "every output", (worker,))
        metrics = worker_metrics(port)
        log = log_of(worker)
        assert worker.terminate() == 0, worker.tail()
        wait_until(lambda: outputs.read() >= produced, 30, "the outputs read back")
        nothing_more(outputs)
        nothing_more(dead)
    finally:
        worker.stop()
        outputs.close()
        dead.close()

    failed_calls = sum(v for k, v in metrics.items() if k.startswith("headrace_model_errors_t"))
    print(
        f"\nmodel down: {log.count('still failing')} 'still failing' lines, "
        f"{failed_calls:.0f} failed calls, {frozen:.0f} scored before, {produced} in all"
    )
    assert failed_calls >= 1
    assert log.count("still failing") <= 2, "a line per probe: the log should say it once"
    assert "is failing on every record" in log
    for line in ("answers again: resuming", "resuming reading: model-down"):
        assert line in log
    after_pause = log[log.index("pausing reading: model-down") :]
    assert f"{SOURCE}: resumed" in after_pause[after_pause.index("resuming reading: model-down") :]
    assigned_once(log)
    assert not dead.values, "a model that is down must not empty the stream into dead letters"
    assert not any(k.startswith("headrace_records_failed_total") and v for k, v in metrics.items())
    ids = outputs.ids()
    assert len(ids) == len(set(ids)) == produced and set(ids) == set(range(produced))


# -- 5. shedding at overload -------------------------------------------------------------


@pytest.mark.timeout(150)
def test_shedding_at_overload_spares_high_priority_and_accounts_for_every_record(
    tansu: TansuBroker, tmp_path: Path
) -> None:
    """Input at twice the model's capacity, with the reference mix of priorities (10% high,
    70% normal, 20% low) and a policy that sheds normal and low records above half the
    in-flight bound or past a 3 s deadline: no high record is shed; every shed record is at
    the shed topic with its reason; outputs + shed + dead letters = inputs; high priority
    is scored sooner than low."""
    rate, seconds = 2000, 10
    n = rate * seconds
    for topic in ("events", "predictions", "dead-letters", "shed"):
        tansu.create_topic(topic, 4)
    config = kafka_pipeline(
        tmp_path / "p.yaml",
        tansu.bootstrap,
        sinks=OUTPUT_SINK,
        function="workermodels:slow",
        max_in_flight=2000,
        # Chunks well below the bound: a shedding decision is taken per chunk read.
        source={"max_records": 200},
        # One batch at a time, 1 ms a row: at most 1,000 records/s, half the input.
        batching={"max_concurrency": 1},
        extra=DEAD_LETTERS
        + METRICS
        + "priority:\n  field: priority\n  levels: [high, normal, low]\n"
        + "shedding:\n  destination: {type: kafka, topic: shed}\n  in_flight_above: 0.5\n"
        + "  max_event_age_s: 3\n  priorities: [normal, low]\n",
    )
    env = models_env(tmp_path, row_delay=0.001)
    worker = Worker(config, env, tmp_path / "worker.log").start()
    outputs = TopicReader(tansu.bootstrap, "predictions", 4)
    dead = TopicReader(tansu.bootstrap, "dead-letters", 4)
    shed = TopicReader(tansu.bootstrap, "shed", 4)
    try:
        port = metrics_port(worker)
        wait_until(lambda: f"{SOURCE}: assigned" in log_of(worker), 60, "the join", (worker,))
        producer = PacedProducer(tansu.bootstrap, "events", rate=rate, count=n).start()
        produced = producer.join(seconds + 30)

        def finished() -> int:
            m = worker_metrics(port)
            shed_total = sum(v for k, v in m.items() if k.startswith("headrace_records_shed_t"))
            failed = sum(v for k, v in m.items() if k.startswith("headrace_records_failed_t"))
            return int(m.get("headrace_records_out_total", 0) + shed_total + failed)

        wait_until(lambda: finished() >= produced, 60, "every record's fate", (worker,))
        metrics = worker_metrics(port)
        assert worker.terminate() == 0, worker.tail()
        n_out = int(metrics["headrace_records_out_total"])
        wait_until(lambda: outputs.read() >= n_out, 30, "the outputs read back")
        nothing_more(outputs)
        nothing_more(dead)
        nothing_more(shed)
    finally:
        worker.stop()
        outputs.close()
        dead.close()
        shed.close()

    # Shed records: the original events, each with its reason; never a high one.
    shed_values = [msgspec.json.decode(v) for v in shed.values]
    reasons: Counter[tuple[str, str]] = Counter()
    for headers, value in zip(shed.headers, shed_values, strict=True):
        h = {k: v.decode() for k, v in headers.items()}
        assert h["headrace-stage"] == "shed"
        assert h["headrace-error-type"] in ("shed-in-flight", "shed-deadline"), h
        assert h["headrace-error"]
        assert h["headrace-source-topic"] == "events"
        reasons[(h["headrace-error-type"], value["priority"])] += 1
    assert not any(p == "high" for _, p in reasons), reasons
    shed_metric = {
        (m["reason"], m["priority"]): int(v)
        for k, v in metrics.items()
        if (m := _labels(k, "headrace_records_shed_total")) is not None
    }
    assert shed_metric == dict(reasons)
    assert sum(reasons.values()) >= n // 5, "at twice the capacity, much should be shed"

    # Every input accounted for, once.
    out_ids = outputs.ids()
    dead_ids = [msgspec.json.decode(v)["id"] for v in dead.values]
    shed_ids = [v["id"] for v in shed_values]
    every = out_ids + shed_ids + dead_ids
    assert len(every) == len(set(every)) == produced and set(every) == set(range(produced))

    # Latency from event time to the output, by priority.
    latency: dict[str, list[float]] = {"high": [], "normal": [], "low": []}
    for v in outputs.values:
        out = msgspec.json.decode(v)
        latency[out["input"]["priority"]].append(out["processed_at"] - out["event_time"])
    p = {k: np.percentile(v, [50, 99]) for k, v in latency.items() if v}
    print(
        "\nshedding: "
        + ", ".join(f"{k} {len(latency[k])} scored" for k in latency)
        + f"; shed {dict(reasons)}; latency p50/p99 "
        + ", ".join(f"{k} {v[0]:.3f}/{v[1]:.3f} s" for k, v in p.items())
    )
    assert len(latency["high"]) >= n // 20 and len(latency["low"]) >= 50
    assert p["high"][0] < p["low"][0] and p["high"][1] < p["low"][1], p


def _labels(sample: str, name: str) -> dict[str, str] | None:
    """The labels of a metric sample ``name{a="x",b="y"}``; None for another metric."""
    if not sample.startswith(name + "{"):
        return None
    return dict(re.findall(r'(\w+)="([^"]*)"', sample))
