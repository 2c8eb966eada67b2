"""Lookups before scoring (`enrich`), against real stores: a Redis server of the test's own
(its command statistics count this test's calls only; stopped and started for the
outage), the shared PostgreSQL (a schema per test) and a PostgreSQL of the test's own for
its outage. Nothing about the stores is mocked; the PostgreSQL store is subclassed only to
count its round trips, beside the engine's own histogram of them."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import psycopg
import pytest

from headrace import CallableModel, Featurizer, Pipeline, PipelineError
from headrace.config import parse_config
from headrace.enrich.lookup import Lookup
from headrace.enrich.postgres_store import PostgresStore
from headrace.enrich.redis_store import RedisStore
from headrace.runtime.engine import Engine
from headrace.testing import Pause, TestingSink, TestingSource
from pg_helpers import PgSchema
from pg_server import PrivatePostgres
from redis_server import PrivateRedis


@pytest.fixture
def private_redis() -> Iterator[PrivateRedis]:
    try:
        server = PrivateRedis()
    except RuntimeError as exc:
        pytest.skip(str(exc))
    with server:  # started on entering, killed on leaving
        yield server


def gain_model(x: np.ndarray) -> list[float]:
    """reading * device.gain + device.offset"""
    return (x[:, 0] * x[:, 1] + x[:, 2]).tolist()


FEATURES = Featurizer(fields=["reading", "device.gain", "device.offset"])


def sample(engine: Engine, name: str, **labels: str) -> float:
    value = engine.metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


async def until(condition: Callable[[], bool], what: str, limit: float = 15.0) -> None:
    deadline = time.monotonic() + limit
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


def events(n: int, devices: int, *, start: int = 0) -> list[dict[str, Any]]:
    return [
        {"id": i, "device_id": f"d{i % devices}", "reading": float(i)}
        for i in range(start, start + n)
    ]


def expected(event: dict[str, Any], gains: dict[str, tuple[float, float]]) -> float:
    gain, offset = gains[event["device_id"]]
    return float(np.float32(event["reading"]) * np.float32(gain) + np.float32(offset))


def load_json(server: PrivateRedis, gains: dict[str, tuple[float, float]]) -> None:
    with server.client() as c:
        for device, (gain, offset) in gains.items():
            c.set(f"device:{device}", msgspec.json.encode({"gain": gain, "offset": offset}))


def pipeline(
    source: TestingSource, lookup: Lookup, outputs: TestingSink, dead: TestingSink
) -> Pipeline:
    return (
        Pipeline("enrich")
        .source(source)
        .enrich(lookup)
        .model(CallableModel(gain_model, name="gain", version="1"), featurizer=FEATURES)
        .sink(outputs)
        .dead_letter(dead)
    )


def by_id(outputs: TestingSink) -> dict[int, float]:
    return {o["input"]["id"]: o["prediction"] for o in outputs.outputs}


async def test_redis_json_values_are_merged_with_one_mget_per_batch(
    private_redis: PrivateRedis,
) -> None:
    gains = {f"d{i}": (1.0 + i, 0.5 * i) for i in range(10)}
    load_json(private_redis, gains)
    data = events(400, 10)
    outputs, dead = TestingSink(), TestingSink("dead")
    store = RedisStore(private_redis.url, key_prefix="device:")
    lookup = Lookup(name="device", store=store, key_field="device_id", cache_ttl=None)
    engine = (
        pipeline(TestingSource(data, chunk_size=50), lookup, outputs, dead)
        .batching(max_size=50)
        .build()
    )
    before = private_redis.calls("mget")
    await engine.run()
    assert dead.failures == []
    assert by_id(outputs) == {e["id"]: expected(e, gains) for e in data}
    # The merged fields are in the output's input, under the lookup's name.
    first = next(o["input"] for o in outputs.outputs if o["input"]["id"] == 3)
    assert first["device.gain"] == 4.0 and first["device.offset"] == 1.5
    batches = len(outputs.batches)
    assert 8 <= batches < 400
    # Without a cache, every batch is exactly one round trip, never one per record.
    assert private_redis.calls("mget") - before == batches
    assert private_redis.calls("get") == 0
    assert sample(engine, "headrace_enrich_seconds_count", lookup="device") == batches


async def test_the_cache_serves_repeated_keys(private_redis: PrivateRedis) -> None:
    gains = {f"d{i}": (2.0, float(i)) for i in range(5)}
    load_json(private_redis, gains)
    data = events(300, 5)
    outputs, dead = TestingSink(), TestingSink("dead")
    store = RedisStore(private_redis.url, key_prefix="device:")
    lookup = Lookup(name="device", store=store, key_field="device_id", cache_ttl=60.0)
    engine = (
        pipeline(TestingSource(data, chunk_size=50), lookup, outputs, dead)
        .batching(max_size=50)
        .build()
    )
    await engine.run()
    assert by_id(outputs) == {e["id"]: expected(e, gains) for e in data}
    batches = len(outputs.batches)
    assert batches >= 6
    # Each key fetched once (a batch that waited for another's fetch takes its result
    # from the cache), then served from the cache in every later batch.
    assert private_redis.calls("mget") == 1
    assert sample(engine, "headrace_enrich_cache_total", lookup="device", outcome="miss") == 5
    hits = sample(engine, "headrace_enrich_cache_total", lookup="device", outcome="hit")
    assert hits == 5 * batches - 5


async def test_missing_keys_get_the_default_or_go_to_the_dead_letters_from_yaml(
    private_redis: PrivateRedis, tmp_path: Path
) -> None:
    """Hashes read with pipelined HMGETs; the whole way in through the configuration."""
    with private_redis.client() as c:
        c.hset("dev:d0", mapping={"gain": "2", "offset": "0.5", "site": "north"})
        c.hset("dev:d1", mapping={"gain": "3.5", "offset": "1"})
    (tmp_path / "gainmodel.py").write_text(
        "def score(x):\n    return (x[:, 0] * x[:, 1] + x[:, 2]).tolist()\n"
    )
    data = [{"id": i, "device_id": f"d{i % 3}", "reading": float(i)} for i in range(30)]
    data.append({"id": 30, "reading": 1.0})  # no key field at all
    (tmp_path / "in.jsonl").write_bytes(msgspec.json.Encoder().encode_lines(data))

    def config(default: dict[str, float] | None, run: str) -> dict[str, Any]:
        lookup: dict[str, Any] = {
            "type": "redis",
            "name": "device",
            "url": "${REDIS_URL}",
            "key_field": "device_id",
            "key_prefix": "dev:",
            "kind": "hash",
            "fields": ["gain", "offset"],
            "cache": {"ttl_s": 60, "max_entries": 1000},
        }
        if default is not None:
            lookup["default"] = default
        return {
            "source": {"type": "jsonl", "path": str(tmp_path / "in.jsonl")},
            "model": {
                "type": "callable",
                "name": "gain",
                "version": "1",
                "function": "gainmodel:score",
                "features": {"fields": ["reading", "device.gain", "device.offset"]},
            },
            "sinks": [{"type": "jsonl", "path": str(tmp_path / f"out-{run}.jsonl")}],
            "dead_letter": {"type": "jsonl", "path": str(tmp_path / f"dead-{run}.jsonl")},
            "enrich": [lookup],
        }

    def lines(name: str) -> list[dict[str, Any]]:
        path = tmp_path / name
        return [msgspec.json.decode(line) for line in path.read_bytes().splitlines()]

    env = {"REDIS_URL": private_redis.url}
    results = {}
    for run, default in (("plain", None), ("default", {"gain": 1.0, "offset": 0.0})):
        parsed = parse_config(config(default, run), env=env)
        p = Pipeline.from_config(parsed, path=tmp_path / "pipeline.yaml")
        await p.run_async(install_signal_handlers=False)
        scored = {o["input"]["id"]: o["prediction"] for o in lines(f"out-{run}.jsonl")}
        failed = [
            (f["input"]["id"], f["stage"], f["error_type"], f["error"])
            for f in lines(f"dead-{run}.jsonl")
        ]
        results[run] = (scored, sorted(failed))
    gains = {"d0": (2.0, 0.5), "d1": (3.5, 1.0), "d2": (1.0, 0.0)}
    scored, failed = results["plain"]  # no default: d2 is a dead letter
    assert scored == {e["id"]: expected(e, gains) for e in data[:30] if e["device_id"] != "d2"}
    assert [f[:3] for f in failed] == [
        *((i, "enrich", "lookup-missing") for i in range(2, 30, 3)),
        (30, "enrich", "missing-field"),
    ]
    assert "key 'd2' not found" in failed[0][3]
    scored, failed = results["default"]  # the default for d2
    assert scored == {e["id"]: expected(e, gains) for e in data[:30]}
    assert [f[:3] for f in failed] == [(30, "enrich", "missing-field")]
    assert private_redis.calls("hmget") == 2 * 3  # each key once per run: pipelined, cached


async def test_redis_going_away_pauses_reading_and_loses_nothing(
    private_redis: PrivateRedis,
) -> None:
    gains = {f"d{i}": (1.0 + i, 0.25) for i in range(20)}
    load_json(private_redis, gains)
    first, second = events(50, 10), events(50, 10, start=50)
    for e in second:  # keys the cache has not seen: the store must answer
        e["device_id"] = f"d{10 + e['id'] % 10}"
    resume = asyncio.Event()
    source = TestingSource([*first, Pause(until=resume), *second], chunk_size=50)
    outputs, dead = TestingSink(), TestingSink("dead")
    store = RedisStore(private_redis.url, key_prefix="device:", timeout=1.0)
    lookup = Lookup(name="device", store=store, key_field="device_id", timeout=1.0)
    engine = pipeline(source, lookup, outputs, dead).build()
    run = asyncio.create_task(engine.run())
    try:
        await until(lambda: len(outputs.outputs) == 50, "the first 50 outputs")
        await asyncio.to_thread(private_redis.stop)
        resume.set()

        def paused() -> bool:
            return sample(engine, "headrace_source_paused", reason="enrich-down") == 1

        await until(paused, "reading paused for the lookup")
        assert engine.enricher is not None and engine.enricher.down
        assert len(outputs.outputs) == 50 and dead.failures == []
        await asyncio.to_thread(private_redis.start)
        await until(lambda: not paused(), "reading resumed")
        summary = await asyncio.wait_for(run, 30)
    finally:
        run.cancel()
    assert dead.failures == []
    assert by_id(outputs) == {e["id"]: expected(e, gains) for e in first + second}
    assert summary.committed == {("testing", 0): 100}


class CountingPostgresStore(PostgresStore):
    """The real store, counting its round trips."""

    calls = 0

    async def fetch(self, keys: Any) -> Any:
        self.calls += 1
        return await super().fetch(keys)


def make_table(dsn: str, rows: dict[int, tuple[float, float]]) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE calibration (device_id bigint PRIMARY KEY, gain numeric, "
            "offset_ real, note text)"
        )
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO calibration VALUES (%s, %s, %s, 'x')",
                [(k, g, o) for k, (g, o) in rows.items()],
            )


async def test_postgres_rows_are_merged_with_one_select_per_batch(pg_dsn: PgSchema) -> None:
    rows = {i: (1.5 + i, 0.25 * i) for i in range(8)}  # device 8 and 9 have no row
    make_table(pg_dsn.dsn, rows)
    data = [{"id": i, "device_id": i % 10, "reading": float(i)} for i in range(200)]
    outputs, dead = TestingSink(), TestingSink("dead")
    store = CountingPostgresStore(
        pg_dsn.dsn, table="calibration", key_column="device_id", fields=["gain", "offset_"]
    )
    lookup = Lookup(
        name="cal",
        store=store,
        key_field="device_id",
        into="device",
        default={"gain": 1.0, "offset_": 0.0},
        cache_ttl=None,
    )
    engine = (
        Pipeline("enrich-pg")
        .source(TestingSource(data, chunk_size=40))
        .enrich(lookup)
        .model(
            CallableModel(gain_model, name="gain", version="1"),
            featurizer=Featurizer(fields=["reading", "device.gain", "device.offset_"]),
        )
        .sink(outputs)
        .dead_letter(dead)
        .batching(max_size=40)
        .build()
    )
    await engine.run()
    assert dead.failures == []
    gains = {f"d{k}": v for k, v in rows.items()} | {"d8": (1.0, 0.0), "d9": (1.0, 0.0)}
    assert by_id(outputs) == {
        e["id"]: expected({**e, "device_id": f"d{e['device_id']}"}, gains) for e in data
    }
    merged = next(o["input"] for o in outputs.outputs if o["input"]["id"] == 3)
    assert merged["device.gain"] == 4.5  # numeric arrives as a float
    assert "device.note" not in merged  # only the fields asked for
    batches = len(outputs.batches)
    assert batches >= 5
    assert store.calls == batches
    assert sample(engine, "headrace_enrich_seconds_count", lookup="cal") == batches


async def test_postgres_going_away_pauses_reading_and_loses_nothing() -> None:
    try:
        server = PrivatePostgres()
    except RuntimeError as exc:
        pytest.skip(str(exc))
    with server:
        rows = {i: (2.0, float(i)) for i in range(20)}
        await asyncio.to_thread(make_table, server.dsn, rows)
        first = [{"id": i, "device_id": i % 10, "reading": float(i)} for i in range(40)]
        second = [{"id": i, "device_id": 10 + i % 10, "reading": float(i)} for i in range(40, 80)]
        resume = asyncio.Event()
        source = TestingSource([*first, Pause(until=resume), *second], chunk_size=40)
        outputs, dead = TestingSink(), TestingSink("dead")
        store = PostgresStore(server.dsn, table="calibration", key_column="device_id")
        lookup = Lookup(name="cal", store=store, key_field="device_id", into="device")
        engine = (
            Pipeline("enrich-pg-outage")
            .source(source)
            .enrich(lookup)
            .model(
                CallableModel(gain_model, name="gain", version="1"),
                featurizer=Featurizer(fields=["reading", "device.gain", "device.offset_"]),
            )
            .sink(outputs)
            .dead_letter(dead)
            .build()
        )
        run = asyncio.create_task(engine.run())
        try:
            await until(lambda: len(outputs.outputs) == 40, "the first 40 outputs")
            await asyncio.to_thread(server.stop)  # every connection cut, then refused
            resume.set()

            def paused() -> bool:
                return sample(engine, "headrace_source_paused", reason="enrich-down") == 1

            await until(paused, "reading paused for the lookup")
            assert len(outputs.outputs) == 40 and dead.failures == []
            await asyncio.to_thread(server.start)
            await until(lambda: not paused(), "reading resumed")
            summary = await asyncio.wait_for(run, 30)
        finally:
            run.cancel()
    assert dead.failures == []
    gains = {f"d{k}": v for k, v in rows.items()}
    assert by_id(outputs) == {
        e["id"]: expected({**e, "device_id": f"d{e['device_id']}"}, gains) for e in first + second
    }
    assert summary.committed == {("testing", 0): 80}


async def test_a_stop_while_the_store_is_away_commits_nothing_it_holds(
    private_redis: PrivateRedis,
) -> None:
    await asyncio.to_thread(private_redis.stop)
    source = TestingSource(events(20, 5), chunk_size=20)
    outputs, dead = TestingSink(), TestingSink("dead")
    store = RedisStore(private_redis.url, key_prefix="device:")
    lookup = Lookup(name="device", store=store, key_field="device_id")
    engine = pipeline(source, lookup, outputs, dead).build()
    run = asyncio.create_task(engine.run())
    try:
        await until(
            lambda: sample(engine, "headrace_source_paused", reason="enrich-down") == 1,
            "reading paused for the lookup",
        )
        engine.stop()
        with pytest.raises(PipelineError, match="stopped while lookup 'device' waited"):
            await asyncio.wait_for(run, 10)
    finally:
        run.cancel()
    assert outputs.outputs == [] and dead.failures == []
    assert source.committed.get(("testing", 0), 0) == 0  # read again by the next run
