"""The promises of the README's Guarantees under the faults that once broke them: an
output Kafka that cannot take the outputs, an output too large for the producer, a
rebalance and a paused worker with exactly-once into PostgreSQL, a model call that never
returns. Each is the real fault: a producer pointed at a port nobody listens on, real
signals (SIGSTOP, SIGTERM) to real worker processes, a model that blocks forever.

Oracle (TESTING.md): every input carries a unique id; missing = inputs - outputs -
dead letters, duplicates = len(ids) - len(set(ids)).
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

import msgspec
import pytest

from kafka_helpers import TansuBroker
from pg_helpers import PgSchema
from workers import (
    HANG,
    TopicReader,
    Worker,
    committed,
    insert_only_table,
    kafka_pipeline,
    log_text,
    models_env,
    pg_count,
    pg_rows,
    reference_events,
    wait_until,
)


def oracle(ids: list[int], n: int) -> tuple[int, int]:
    """(missing, duplicates) of output ids against inputs 0..n-1."""
    return n - len(set(ids) & set(range(n))), len(ids) - len(set(ids))


def dead_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- 1. an output Kafka that cannot be written ---------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_outputs_that_were_never_delivered_are_never_committed(
    tansu: TansuBroker, tmp_path: Path
) -> None:
    """The producer cannot reach its broker, so every delivery times out: the worker
    stops, having committed no position past a record, and a restart that can deliver
    writes every input. (Reporting a failed delivery once used to clear it, and the final
    commit then moved every position past outputs that were never written.)"""
    n = 2000
    tansu.create_topic("events", 2)
    tansu.create_topic("predictions", 2)
    tansu.produce_json("events", reference_events(n), key_field="entity_id")
    sinks = "  - type: kafka\n    topic: predictions"
    broken = kafka_pipeline(
        tmp_path / "broken.yaml",
        tansu.bootstrap,
        sinks=sinks,
        producer={
            "bootstrap.servers": f"127.0.0.1:{dead_port()}",
            "message.timeout.ms": 2000,
        },
    )
    env = models_env(tmp_path)
    worker = Worker(broken, env, tmp_path / "broken.log").start()
    assert worker.wait(90) != 0, worker.tail()
    assert "deliveries failed" in log_text(worker), worker.tail()
    positions = committed(tansu.bootstrap, "scorers", "events", 2)
    # Nothing past the first record (offset 0): a rebalance before the first delivery
    # timed out may commit a partition's start, which moves nothing (seen under load).
    assert all(offset <= 0 for offset in positions.values()), positions

    fixed = kafka_pipeline(tmp_path / "fixed.yaml", tansu.bootstrap, sinks=sinks)
    again = Worker(fixed, env, tmp_path / "fixed.log").start()
    reader = TopicReader(tansu.bootstrap, "predictions", 2)
    try:
        wait_until(lambda: reader.read() >= 0 and len(set(reader.ids())) >= n, 90, "all", (again,))
        assert again.terminate() == 0, again.tail()
    finally:
        again.stop()
        reader.close()
    assert oracle(reader.ids(), n)[0] == 0


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_an_output_too_large_for_the_producer_is_dead_lettered_and_the_rest_go_on(
    tansu: TansuBroker, tmp_path: Path
) -> None:
    """One output over the producer's message.max.bytes: it is dead-lettered at stage
    output as output-too-large, every other record is written, the worker keeps running
    (it used to stop on every restart) and stops cleanly."""
    n = 500
    big = 7
    events = reference_events(n)
    events[big]["note"] = "x" * 3000  # the output carries its input: over 2,500 bytes
    tansu.create_topic("events", 2)
    tansu.create_topic("predictions", 2)
    tansu.produce_json("events", events, key_field="entity_id")
    dead = tmp_path / "dead.jsonl"
    config = kafka_pipeline(
        tmp_path / "p.yaml",
        tansu.bootstrap,
        sinks="  - type: kafka\n    topic: predictions",
        producer={"message.max.bytes": 2500},
        extra=f"dead_letter:\n  type: jsonl\n  path: {dead}\n",
    )
    worker = Worker(config, models_env(tmp_path), tmp_path / "w.log").start()
    reader = TopicReader(tansu.bootstrap, "predictions", 2)
    try:
        wait_until(lambda: reader.read() >= n - 1 and dead.exists(), 90, "outputs", (worker,))
        assert worker.terminate() == 0, worker.tail()
        reader.read()
    finally:
        worker.stop()
        reader.close()
    letters = [msgspec.json.decode(line) for line in dead.read_bytes().splitlines()]
    assert [(d["stage"], d["error_type"]) for d in letters] == [("output", "output-too-large")]
    assert letters[0]["input"]["id"] == big and "message.max.bytes" in letters[0]["error"]
    assert oracle([*reader.ids(), big], n) == (0, 0)


# -- 2. and 3. exactly-once into PostgreSQL: a rebalance, and a paused worker --------------


def _eos_pipeline(tmp_path: Path, tansu: TansuBroker, pg: PgSchema) -> Path:
    return kafka_pipeline(
        tmp_path / "p.yaml",
        tansu.bootstrap,
        sinks=f"  - type: postgres\n    dsn: '{pg.dsn}'\n    mode: insert",
        delivery="exactly-once",
        max_in_flight=1000,
    )


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_exactly_once_into_postgres_across_a_join_and_a_leave(
    tansu: TansuBroker, pg_dsn: PgSchema, tmp_path: Path
) -> None:
    """A second worker joins mid-run and the first leaves: every input once in a table
    without a key, and both stop on SIGTERM within the shutdown timeout. (The revocation
    used to deadlock on the informational Kafka commit.)"""
    n = 20_000
    tansu.create_topic("events", 4)
    tansu.produce_json("events", reference_events(n), key_field="entity_id")
    insert_only_table(pg_dsn.dsn)
    config = _eos_pipeline(tmp_path, tansu, pg_dsn)
    # 0.2 s per batch of 64, two batches at a time: about 640 records/s per worker, so
    # the run outlasts a group join on the test broker (about 11 s).
    env = models_env(tmp_path, 0.2)
    first = Worker(config, env, tmp_path / "first.log").start()
    second = Worker(config, env, tmp_path / "second.log")
    try:
        wait_until(lambda: pg_count(pg_dsn.dsn) >= 2000, 90, "first rows", (first,))
        second.start()
        wait_until(lambda: "assigned events[" in second.tail(), 90, "the join", (first, second))
        seen = pg_count(pg_dsn.dsn)
        wait_until(
            lambda: pg_count(pg_dsn.dsn) >= seen + 2000, 90, "rows after the join", (first, second)
        )
        assert "revoking" in first.tail(), "the join should have moved partitions"
        started = time.monotonic()
        assert first.terminate(30) == 0, first.tail()
        assert time.monotonic() - started < 25  # shutdown_timeout_s is 20
        wait_until(lambda: pg_count(pg_dsn.dsn) >= n, 120, "all rows", (second,))
        assert second.terminate(30) == 0, second.tail()
    finally:
        first.stop()
        second.stop()
    assert oracle(pg_rows(pg_dsn.dsn), n) == (0, 0)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_exactly_once_into_postgres_fences_a_worker_paused_past_its_session(
    tansu: TansuBroker, pg_dsn: PgSchema, tmp_path: Path
) -> None:
    """One of two workers is stopped (SIGSTOP) past its session timeout; the other takes
    its partitions over; the first resumes (SIGCONT) with a transaction open for
    partitions it no longer owns. That transaction must fail: every input is in the table
    exactly once. (It used to commit, writing rows a second time.)"""
    n = 20_000
    tansu.create_topic("events", 4)
    tansu.produce_json("events", reference_events(n), key_field="entity_id")
    insert_only_table(pg_dsn.dsn)
    config = _eos_pipeline(tmp_path, tansu, pg_dsn)
    # 0.2 s per batch of 64, two batches at a time: about 640 records/s per worker, so
    # the run outlasts a group join on the test broker (about 11 s).
    env = models_env(tmp_path, 0.2)
    first = Worker(config, env, tmp_path / "first.log").start()
    second = Worker(config, env, tmp_path / "second.log")
    try:
        wait_until(lambda: pg_count(pg_dsn.dsn) >= 1000, 90, "first rows", (first,))
        second.start()
        wait_until(lambda: "assigned events[" in second.tail(), 90, "the join", (first, second))
        seen = pg_count(pg_dsn.dsn)
        wait_until(lambda: pg_count(pg_dsn.dsn) >= seen + 1000, 90, "both working", (first, second))
        first.pause()
        assigned = log_text(second).count("assigned events[")
        # The session (6 s) runs out and the group gives the paused worker's partitions
        # to the other.
        wait_until(
            lambda: log_text(second).count("assigned events[") > assigned,
            60,
            "the take-over",
            (second,),
        )
        taken = pg_count(pg_dsn.dsn)
        wait_until(lambda: pg_count(pg_dsn.dsn) >= taken + 1000, 90, "rows after", (second,))
        first.resume()
        # The resumed worker finds it lost its partitions (the group, or the fence in
        # the database, tells it) and stops without committing; either way the table
        # is the judge.
        wait_until(lambda: pg_count(pg_dsn.dsn) >= n, 180, "all rows", (second,))
        assert second.terminate(30) == 0, second.tail()
    finally:
        first.resume()
        first.stop()
        second.stop()
    assert oracle(pg_rows(pg_dsn.dsn), n) == (0, 0), first.tail()


# -- 4. a model call that never returns ------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(180)
@pytest.mark.parametrize("calls", ["thread", "process"])
def test_a_model_call_that_never_returns_costs_one_record_not_the_worker(
    tansu: TansuBroker, tmp_path: Path, calls: str
) -> None:
    """The model blocks forever on one record: that record is dead-lettered at stage
    model as model-timeout, every other is scored, and SIGTERM ends the worker within the
    shutdown timeout though threads are still stuck in the model (on threads), or after
    each stuck call's process was killed and replaced (``model_calls: process``)."""
    n = 3000
    hang = 1234
    events = reference_events(n)
    events[hang]["features"][0] = HANG
    tansu.create_topic("events", 2)
    tansu.create_topic("predictions", 2)
    tansu.create_topic("dead-letters", 1)
    tansu.produce_json("events", events, key_field="entity_id")
    config = kafka_pipeline(
        tmp_path / "p.yaml",
        tansu.bootstrap,
        sinks="  - type: kafka\n    topic: predictions",
        function="workermodels:hangs",
        batching={"max_size": 256, "max_wait_ms": 5, "model_calls": calls},
        extra="dead_letter:\n  type: kafka\n  topic: dead-letters\n"
        "failures:\n  model_timeout_ms: 500\n",
        shutdown_timeout_s=10,
    )
    worker = Worker(config, models_env(tmp_path), tmp_path / "w.log").start()
    reader = TopicReader(tansu.bootstrap, "predictions", 2)
    dead = TopicReader(tansu.bootstrap, "dead-letters", 1)
    try:
        wait_until(lambda: reader.read() >= n - 1 and dead.read() >= 1, 120, "all", (worker,))
        started = time.monotonic()
        code = worker.terminate(30)
        stopped_in = time.monotonic() - started
        reader.read()
    finally:
        worker.stop()
        reader.close()
        dead.close()
    assert code == 0, worker.tail()
    assert stopped_in < 12, f"took {stopped_in:.1f}s to stop (shutdown_timeout_s is 10)"
    headers = {k: v.decode() for k, v in dead.headers[0].items()}
    assert (headers["headrace-stage"], headers["headrace-error-type"]) == (
        "model",
        "model-timeout",
    )
    assert msgspec.json.decode(dead.values[0])["id"] == hang
    assert oracle([*reader.ids(), hang], n) == (0, 0)


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_model_processes_leave_with_a_killed_worker_and_nothing_is_lost(
    tansu: TansuBroker, tmp_path: Path
) -> None:
    """``model_calls: process``, Kafka -> Kafka at-least-once: the worker is SIGKILLed
    mid-run while its two model processes score; they leave with it (they would
    otherwise score for nobody), and a new worker scores the rest: no input missing."""
    import psutil

    n = 10_000
    tansu.create_topic("events", 4)
    tansu.create_topic("predictions", 4)
    tansu.produce_json("events", reference_events(n), key_field="entity_id")
    config = kafka_pipeline(
        tmp_path / "p.yaml",
        tansu.bootstrap,
        sinks="  - type: kafka\n    topic: predictions",
        batching={"model_calls": "process"},
    )
    # 20 ms per batch of 64: about 6,000 records/s in two processes, so the kill comes
    # mid-run.
    env = models_env(tmp_path, 0.02)
    reader = TopicReader(tansu.bootstrap, "predictions", 4)
    first = Worker(config, env, tmp_path / "first.log").start()
    second = Worker(config, env, tmp_path / "second.log")
    try:
        wait_until(lambda: reader.read() >= 1000, 90, "first outputs", (first,))
        assert first.proc is not None
        processes = psutil.Process(first.proc.pid).children()
        assert len(processes) == 2, processes  # max_concurrency
        first.kill()
        _, left = psutil.wait_procs(processes, timeout=10)
        assert not left, f"model processes outlived their worker: {left}"
        second.start()
        wait_until(lambda: len(set(reader.read() and reader.ids())) >= n, 120, "all", (second,))
        assert second.terminate() == 0, second.tail()
        reader.read()
    finally:
        first.stop()
        second.stop()
        reader.close()
    missing, _ = oracle(reader.ids(), n)
    assert missing == 0


# -- 5. a database that goes away -----------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(240)
@pytest.mark.parametrize("delivery", ["at-least-once", "exactly-once"])
def test_a_database_outage_pauses_the_worker_instead_of_ending_it(
    tansu: TansuBroker, tmp_path: Path, delivery: str
) -> None:
    """A private PostgreSQL server is stopped mid-run for several seconds and started
    again: the worker stays up (it used to exit, and crash-loop on restart), says so once
    rather than per attempt, and every input is in the table: none missing, and with
    exactly-once none twice."""
    from pg_server import PrivatePostgres

    n = 6000
    tansu.create_topic("events", 2)
    tansu.produce_json("events", reference_events(n), key_field="entity_id")
    try:
        server = PrivatePostgres()
    except RuntimeError as exc:
        pytest.skip(str(exc))
    with server:
        if delivery == "exactly-once":
            insert_only_table(server.dsn)  # a duplicate would show
        mode = "insert" if delivery == "exactly-once" else "upsert"
        config = kafka_pipeline(
            tmp_path / "p.yaml",
            tansu.bootstrap,
            sinks=f"  - type: postgres\n    dsn: '{server.dsn}'\n    mode: {mode}",
            delivery=delivery,
            max_in_flight=1000,
        )
        worker = Worker(config, models_env(tmp_path, 0.02), tmp_path / "w.log").start()
        try:
            wait_until(lambda: pg_count(server.dsn) >= 1000, 90, "first rows", (worker,))
            server.stop()
            wait_until(lambda: "is unavailable" in log_text(worker), 30, "the outage", (worker,))
            deadline = time.monotonic() + 6
            wait_until(lambda: time.monotonic() > deadline, 10, "six seconds down", (worker,))
            server.start()
            wait_until(lambda: pg_count(server.dsn) >= n, 120, "all rows", (worker,))
            assert worker.terminate(30) == 0, worker.tail()
        finally:
            worker.stop()
        log = log_text(worker)
        assert log.count("is unavailable") <= 2, worker.tail()  # not a line per attempt
        assert "answers again" in log
        missing, duplicates = oracle(pg_rows(server.dsn), n)
    assert missing == 0
    if delivery == "exactly-once":
        assert duplicates == 0
