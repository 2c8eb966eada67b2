"""What a cached lookup (`enrich`) costs per record, beside featurizing.

A batch of ``--batch`` (256) events keyed by ``--keys`` (100) distinct devices goes through
one :class:`~headrace.enrich.lookup.Lookup` whose cache already holds every key (the store,
a dictionary in memory, is asked once, to fill it), then through a 3-field
:class:`~headrace.models.featurizer.Featurizer`; ``--batches`` (400) batches, best of
``--repeats`` (3). The events are built before each timed loop. Also the two ways of
reading a ``cachetools.TTLCache`` that the lookup chose between (``cache[k]`` in a ``try``
against ``cache.get(k)``), per key.

    python -m bench.enrich_lookup
"""

from __future__ import annotations

import argparse
import asyncio
import time
import timeit
from collections.abc import Sequence
from typing import Any

from cachetools import TTLCache

from headrace.enrich.lookup import Enricher, Key, Lookup
from headrace.errors import RecordError
from headrace.models.featurizer import Featurizer
from headrace.observe.metrics import PipelineMetrics
from headrace.record import Record


class MemoryStore:
    """Values in a dictionary: the store of a lookup whose cache answers everything."""

    what = "memory"

    def __init__(self, values: dict[Key, dict[str, Any]]) -> None:
        self.values = values
        self.calls = 0

    async def fetch(self, keys: Sequence[Key]) -> dict[Key, dict[str, Any] | RecordError]:
        self.calls += 1
        return {k: self.values[k] for k in keys if k in self.values}

    def transient(self, exc: BaseException) -> bool:
        return False

    async def reset(self) -> None:
        pass

    async def close(self) -> None:
        pass


def batch(n: int, keys: int) -> list[Record]:
    return [
        Record(
            key=None,
            value={"id": i, "device_id": f"d{i % keys}", "reading": float(i)},
            event_time=0.0,
            topic="bench",
            partition=0,
            offset=i,
        )
        for i in range(n)
    ]


async def measure(n: int, keys: int, batches: int) -> tuple[float, float, int]:
    store = MemoryStore({f"d{i}": {"gain": 1.0 + i, "offset": 0.5} for i in range(keys)})
    enricher = Enricher(
        [Lookup(name="device", store=store, key_field="device_id")], PipelineMetrics()
    )
    featurizer = Featurizer(fields=["reading", "device.gain", "device.offset"])
    await enricher.enrich(batch(n, keys), [])  # fills the cache
    work = [batch(n, keys) for _ in range(batches)]
    started = time.perf_counter()
    for records in work:
        await enricher.enrich(records, [])
    enrich = time.perf_counter() - started
    started = time.perf_counter()
    for records in work:
        featurizer.transform([r.value for r in records])
    features = time.perf_counter() - started
    return enrich, features, store.calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--keys", type=int, default=100)
    parser.add_argument("--batches", type=int, default=400)
    parser.add_argument("--repeats", type=int, default=3)
    a = parser.parse_args()
    runs = [asyncio.run(measure(a.batch, a.keys, a.batches)) for _ in range(a.repeats)]
    records = a.batch * a.batches
    enrich = min(r[0] for r in runs) / records * 1e6
    features = min(r[1] for r in runs) / records * 1e6
    print(f"cached lookup: {enrich:.2f} µs/record; featurizing 3 fields: {features:.2f} µs/record")
    print(f"store round trips: {runs[0][2]} (the one that filled the cache)")
    cache: TTLCache[str, Any] = TTLCache(maxsize=100_000, ttl=60)
    names = [f"d{i}" for i in range(a.keys)]
    for k in names:
        cache[k] = {}

    def indexed() -> None:
        found = {}
        for k in names:
            try:
                found[k] = cache[k]
            except KeyError:
                found[k] = None

    def get() -> None:
        found = {}
        for k in names:
            found[k] = cache.get(k)

    for label, fn in (("cache[k]", indexed), ("cache.get(k)", get)):
        best = min(timeit.repeat(fn, number=2000, repeat=a.repeats)) / 2000 / a.keys * 1e6
        print(f"TTLCache {label}: {best:.2f} µs/key")


if __name__ == "__main__":
    main()
