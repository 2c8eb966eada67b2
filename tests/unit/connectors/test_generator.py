"""The synthetic sensor source: deterministic events of the reference shape, at a rate."""

from __future__ import annotations

import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from headrace.connectors import GeneratorSource, SensorEvents
from headrace.connectors.base import DecodedSource
from headrace.connectors.generator import N_FEATURES, PRIORITIES, TYPES
from headrace.record import Record

KEYS = {"id", "entity_id", "ts", "value", "features", "priority", "type"}


async def collect(source: GeneratorSource) -> list[list[Record]]:
    await source.open()
    chunks = [chunk async for chunk in source.chunks()]
    await source.close()
    return chunks


def test_same_seed_same_events() -> None:
    """Two generators with one seed produce identical event streams; another seed differs."""
    a, b, c = SensorEvents(seed=5), SensorEvents(seed=5), SensorEvents(seed=6)
    first = [a.make(start_id=0, n=50, ts=1.0), a.make(start_id=50, n=50, ts=2.0)]
    second = [b.make(start_id=0, n=50, ts=1.0), b.make(start_id=50, n=50, ts=2.0)]
    assert first == second
    assert c.make(start_id=0, n=50, ts=1.0)[0] != first[0][0]


def test_events_have_the_reference_shape() -> None:
    """Every event has exactly the documented fields with the documented types."""
    gen = SensorEvents(entities=7, seed=1)
    events, _ = gen.make(start_id=100, n=500, ts=1234.5)
    assert [e["id"] for e in events] == list(range(100, 600))
    names = {f"sensor-{i:05d}" for i in range(7)}
    for e in events:
        assert set(e) == KEYS
        assert e["entity_id"] in names
        assert e["ts"] == 1234.5
        assert isinstance(e["value"], float)
        assert len(e["features"]) == N_FEATURES
        assert all(isinstance(x, float) for x in e["features"])
        assert e["value"] == pytest.approx(sum(e["features"]), abs=1e-3)
        assert e["priority"] in PRIORITIES
        assert e["type"] in TYPES
    assert {e["priority"] for e in events} == set(PRIORITIES)
    assert {e["type"] for e in events} == set(TYPES)
    assert {e["entity_id"] for e in events} == names


def test_no_anomalies_at_rate_zero() -> None:
    """anomaly_rate=0 injects none."""
    gen = SensorEvents(anomaly_rate=0.0, seed=2)
    assert gen.make(start_id=0, n=20_000, ts=0.0)[1] == 0
    _, _, mask = gen.features(5000)
    assert not mask.any()


@pytest.mark.parametrize("rate", [0.02, 0.1, 0.5])
def test_anomaly_rate_is_respected(rate: float) -> None:
    """About `rate` of the events are injected anomalies."""
    n = 20_000
    _, count = SensorEvents(anomaly_rate=rate, seed=3).make(start_id=0, n=n, ts=0.0)
    assert abs(count / n - rate) < 0.2 * rate


def test_every_event_anomalous_at_rate_one() -> None:
    """anomaly_rate=1 makes every event an anomaly."""
    assert SensorEvents(anomaly_rate=1.0, seed=0).make(start_id=0, n=300, ts=0.0)[1] == 300


def test_anomalies_are_far_from_the_baseline() -> None:
    """Injected anomalies are pushed well away from normal readings, so a model can flag
    them."""
    _, feats, mask = SensorEvents(anomaly_rate=0.1, seed=4).features(10_000)
    assert mask.sum() > 0
    normal = np.abs(feats[~mask]).mean()
    anomalous = np.abs(feats[mask]).mean()
    assert anomalous > 3 * normal


@pytest.mark.parametrize("kwargs", [{"entities": 0}, {"anomaly_rate": -0.1}, {"anomaly_rate": 1.5}])
def test_invalid_arguments(kwargs: dict[str, float]) -> None:
    """Nonsensical settings are refused at construction."""
    with pytest.raises(ValueError):
        SensorEvents(**kwargs)  # type: ignore[arg-type]


def test_negative_rate_is_refused() -> None:
    with pytest.raises(ValueError, match="rate"):
        GeneratorSource(rate=-1)


@pytest.mark.parametrize(("count", "chunk_size"), [(1, 512), (1000, 512), (1537, 100)])
async def test_count_yields_exactly_count_records(count: int, chunk_size: int) -> None:
    """Unpaced with a count: exactly `count` records, offsets 0..count-1 in order, keyed by
    entity, in chunks no larger than chunk_size."""
    source = GeneratorSource(rate=0, count=count, chunk_size=chunk_size, topic="gen", seed=9)
    assert isinstance(source, DecodedSource)
    chunks = await collect(source)
    records = [r for chunk in chunks for r in chunk]
    assert [r.offset for r in records] == list(range(count))
    assert all(0 < len(c) <= chunk_size for c in chunks)
    assert all(r.topic == "gen" and r.partition == 0 and r.raw is None for r in records)
    assert all(r.key == r.value["entity_id"] and r.value["id"] == r.offset for r in records)
    assert source.emitted == count


async def test_paced_count_yields_exactly_count_records() -> None:
    """A paced source with a count also stops at exactly that count."""
    chunks = await collect(GeneratorSource(rate=50_000, count=300))
    assert [r.offset for c in chunks for r in c] == list(range(300))


async def test_anomaly_counter_matches_the_events() -> None:
    """The source counts the anomalies it injected."""
    source = GeneratorSource(rate=0, count=5000, anomaly_rate=0.2, seed=1)
    await collect(source)
    assert 700 < source.anomalies < 1300


async def test_same_seed_same_stream() -> None:
    """Two sources with one seed emit the same events (apart from time stamps)."""

    def strip(chunks: list[list[Record]]) -> list[dict[str, object]]:
        return [{k: v for k, v in r.value.items() if k != "ts"} for c in chunks for r in c]

    a = await collect(GeneratorSource(rate=0, count=700, seed=11, chunk_size=100))
    b = await collect(GeneratorSource(rate=0, count=700, seed=11, chunk_size=100))
    assert strip(a) == strip(b)


async def test_paced_rate_over_seconds() -> None:
    """rate=2000 for 0.5 s emits exactly 1000 events, paced over that half second."""
    source = GeneratorSource(rate=2000, seconds=0.5, seed=2)
    started = time.monotonic()
    chunks = await collect(source)
    elapsed = time.monotonic() - started
    total = sum(len(c) for c in chunks)
    assert total == source.emitted == 1000
    assert [r.offset for c in chunks for r in c] == list(range(total))
    assert 0.45 <= elapsed < 5.0
    assert len(chunks) > 1  # paced: events trickle out, not one burst


@pytest.mark.parametrize(
    ("rate", "seconds", "count", "expected"),
    [(100, 0.3, None, 30), (50, 0.1, None, 5), (1000, 0.2, None, 200), (1000, 0.2, 7, 7)],
)
async def test_seconds_at_a_rate_is_rate_times_seconds_events(
    rate: float, seconds: float, count: int | None, expected: int
) -> None:
    """At a rate, `seconds` means rate * seconds events: the first is due at once, the last
    1/rate before the end (not one fewer); a smaller `count` still wins."""
    source = GeneratorSource(rate=rate, seconds=seconds, count=count)
    chunks = await collect(source)
    assert [r.offset for c in chunks for r in c] == list(range(expected))


async def test_unpaced_seconds_is_a_time_limit() -> None:
    """At rate 0, `seconds` bounds the run's time, not its count."""
    started = time.monotonic()
    chunks = await collect(GeneratorSource(rate=0, seconds=0.2, chunk_size=64))
    assert 0.2 <= time.monotonic() - started < 2.0
    assert sum(len(c) for c in chunks) > 0


async def test_event_time_is_emission_time() -> None:
    """Records carry the wall-clock time of emission as event time and ts."""
    before = time.time()
    chunks = await collect(GeneratorSource(rate=0, count=10))
    after = time.time()
    for r in chunks[0]:
        assert before <= r.event_time <= after
        assert r.value["ts"] == r.event_time


def _draws_before(rng: np.random.Generator, entities: int, rate: float, n: int) -> list:
    """The draws of one batch as the generator made them before it avoided
    ``Generator.choice`` (14-20 us a call): the events of a seed must not change."""
    ent = rng.integers(0, entities, size=n)
    noise = rng.normal(0.0, 1.0, size=(n, N_FEATURES))
    anomalous = rng.random(n) < rate
    extra = None
    if anomalous.any():
        k = int(anomalous.sum())
        extra = rng.choice([-1.0, 1.0], size=(k, N_FEATURES)) * rng.uniform(
            4.0, 7.0, size=(k, N_FEATURES)
        )
    prio = rng.choice(3, size=n, p=[0.1, 0.7, 0.2])
    kinds = rng.integers(0, len(TYPES), size=n)
    return [ent, noise, anomalous, extra, prio, kinds]


@given(
    seed=st.integers(0, 2**32 - 1),
    rate=st.sampled_from([0.0, 0.01, 0.3, 1.0]),
    sizes=st.lists(st.integers(1, 600), min_size=1, max_size=4),
)
@settings(max_examples=40, deadline=None)
def test_a_seed_gives_the_events_it_always_gave(seed: int, rate: float, sizes: list[int]) -> None:
    gen = SensorEvents(entities=7, anomaly_rate=rate, seed=seed)
    rng = np.random.default_rng(seed)
    baseline = rng.normal(0.0, 0.5, size=(7, N_FEATURES))
    start = 0
    for n in sizes:
        ent, noise, anomalous, extra, prio, kinds = _draws_before(rng, 7, rate, n)
        feats = baseline[ent] + noise
        if extra is not None:
            feats[anomalous] += extra
        batch, anomalies = gen.batch(topic="t", partition=0, start_id=start, n=n, ts=1.0)
        start += n
        assert anomalies == int(anomalous.sum())
        assert batch.keys == [f"sensor-{i:05d}" for i in ent]
        assert np.array_equal(batch.columns["features"], feats.round(5))
        assert batch.columns["priority"].tolist() == [PRIORITIES[p] for p in prio]
        assert batch.columns["type"].tolist() == [TYPES[k] for k in kinds]
