"""Rollout: which version scores which records (canary by key hash, the previous version for
what a version on probation fails), and the shadow off to the side. Real managers over a
fake source, a real ModelCaller on an executor."""

from __future__ import annotations

import asyncio
import threading
import time
import zlib
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest

from headrace.observe.metrics import PipelineMetrics
from headrace.observe.stats import EngineStats
from headrace.record import ModelRef, Record, ScoredBatch
from headrace.runtime.manager import ModelManager, Probation
from headrace.runtime.rollout import Canary, Rollout, Shadow, canary_bucket
from headrace.runtime.scoring import FailurePolicy, ModelCaller
from helpers import MemorySink, wait_for
from version_helpers import FakeSource, digest, make_records

FAST = FailurePolicy(backoff=0.001, max_backoff=0.005)


def plus(k: float) -> Any:
    """Version k scores a row (or an event) as its x plus 1000 k."""

    def score(xs: Any) -> list[float]:
        if isinstance(xs, np.ndarray):
            return [float(row[0]) + 1000 * k for row in xs]
        return [x["x"] + 1000 * k for x in xs]

    return score


def raising(xs: Any) -> list[float]:
    raise ValueError("this version fails on everything")


@pytest.fixture
def executor() -> Iterator[ThreadPoolExecutor]:
    pool = ThreadPoolExecutor(6, thread_name_prefix="test-rollout")
    yield pool
    pool.shutdown(wait=True, cancel_futures=True)


@pytest.fixture
async def caller(executor: ThreadPoolExecutor) -> AsyncIterator[ModelCaller]:
    c = ModelCaller(policy=FAST, metrics=PipelineMetrics(), stats=EngineStats())
    c.executor = executor
    yield c
    c.close()


async def manager(
    versions: dict[str, Any], latest: str = "1", *, name: str = "m", **kwargs: Any
) -> ModelManager:
    m = ModelManager(FakeSource(versions, latest, name=name), **kwargs)
    await m.start()
    return m


def inputs_of(rs: list[Record]) -> list[Any]:
    return [r.value for r in rs]


def ref(name: str, version: str) -> ModelRef:
    return ModelRef(name, version, digest(name, version)[:12])


def shadow_count(metrics: PipelineMetrics, outcome: str) -> float:
    value = metrics.registry.get_sample_value("headrace_shadow_records_total", {"outcome": outcome})
    return 0.0 if value is None else value


# -- canary --------------------------------------------------------------------------------


def test_canary_bucket_is_a_stable_crc32_of_the_key() -> None:
    """Stable across processes and runs (not Python's salted hash): the CRC-32 of the text."""
    assert canary_bucket("sensor-00042") == zlib.crc32(b"sensor-00042") % 10_000
    assert canary_bucket(42) == canary_bucket("42")
    assert all(0 <= canary_bucket(f"k{i}") < 10_000 for i in range(1000))


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5])
async def test_canary_fraction_must_be_strictly_between_0_and_1(fraction: float) -> None:
    m = ModelManager(FakeSource({"1": plus(1)}, "1"))
    with pytest.raises(ValueError, match="canary fraction"):
        Canary(m, fraction)


@pytest.mark.parametrize("featurized", [False, True])
async def test_canary_splits_by_key_into_one_batch_per_version(
    caller: ModelCaller, featurized: bool
) -> None:
    main = await manager({"1": plus(1)})
    cand = await manager({"9": plus(9)}, "9", name="c")
    rollout = Rollout(main, metrics=PipelineMetrics(), canary=Canary(cand, 0.3))
    rs = make_records(0, 400, keys=200)  # every key twice
    inputs: Any = inputs_of(rs)
    if featurized:  # the featurizer's 2-D array: rows must follow their records
        inputs = np.array([[r.value["x"]] for r in rs], dtype=np.float64)
    batches, failed = await rollout.score(caller, rs, inputs)
    assert not failed
    assert [b.model for b in batches] == [ref("m", "1"), ref("c", "9")]
    threshold = round(0.3 * 10_000)
    for b in batches:
        k = 9 if b.model.name == "c" else 1
        for r, p in zip(b.records, b.predictions, strict=True):
            assert (canary_bucket(r.key) < threshold) == (k == 9)
            assert p == r.value["x"] + 1000 * k  # its own input, scored by its version
    assert sorted(r.value["id"] for b in batches for r in b.records) == list(range(400))
    canary_keys = {r.key for r in batches[1].records}
    assert 0.2 < len(canary_keys) / 200 < 0.4


async def test_canary_failures_are_scored_by_the_serving_version(caller: ModelCaller) -> None:
    main = await manager({"1": plus(1)})
    cand = await manager({"9": raising}, "9", name="c")
    rollout = Rollout(main, metrics=PipelineMetrics(), canary=Canary(cand, 0.5))
    rs = make_records(0, 60)
    batches, failed = await rollout.score(caller, rs, inputs_of(rs))
    assert not failed
    assert {b.model.name for b in batches} == {"m"}
    assert sorted(r.value["id"] for b in batches for r in b.records) == list(range(60))
    assert all(
        p == r.value["x"] + 1000
        for b in batches
        for r, p in zip(b.records, b.predictions, strict=True)
    )


# -- probation fallback ----------------------------------------------------------------------


async def test_records_a_version_on_probation_fails_are_scored_by_the_previous_one(
    caller: ModelCaller,
) -> None:
    def odd_ids_fail(xs: list[dict[str, Any]]) -> list[float]:
        if any(x["id"] % 2 for x in xs):
            raise ValueError("odd")
        return [x["x"] + 2000 for x in xs]

    main = await manager(
        {"1": plus(1), "2": odd_ids_fail}, probation=Probation(seconds=3600, min_records=1000)
    )
    assert isinstance(main.source, FakeSource)
    main.source.point("2")
    await main.check()
    rollout = Rollout(main, metrics=PipelineMetrics())
    rs = make_records(0, 16)
    batches, failed = await rollout.score(caller, rs, inputs_of(rs))
    assert not failed
    assert [b.model.version for b in batches] == ["2", "1"]
    assert sorted(r.value["id"] for r in batches[0].records) == list(range(0, 16, 2))
    assert sorted(r.value["id"] for r in batches[1].records) == list(range(1, 16, 2))
    assert all(
        p == r.value["x"] + 1000
        for r, p in zip(batches[1].records, batches[1].predictions, strict=True)
    )


async def test_outside_probation_a_versions_failures_are_returned(caller: ModelCaller) -> None:
    """No fallback for the version that served from the start: poison is dead-lettered."""

    def id_3_fails(xs: list[dict[str, Any]]) -> list[float]:
        if any(x["id"] == 3 for x in xs):
            raise ValueError("poison")
        return [0.0] * len(xs)

    rollout = Rollout(await manager({"1": id_3_fails}), metrics=PipelineMetrics())
    rs = make_records(0, 8)
    batches, failed = await rollout.score(caller, rs, inputs_of(rs))
    assert [f.record.value["id"] for f in failed] == [3]
    assert failed[0].model == ref("m", "1")
    assert len(batches) == 1 and len(batches[0]) == 7


# -- shadow --------------------------------------------------------------------------------


def served(rs: list[Record], predictions: list[Any]) -> list[ScoredBatch]:
    return [ScoredBatch(records=rs, predictions=predictions, model=ref("m", "1"), processed_at=0.0)]


async def shadow_rollout(
    fn: Any, executor: ThreadPoolExecutor, **kwargs: Any
) -> tuple[Rollout, MemorySink, PipelineMetrics]:
    metrics = PipelineMetrics()
    sink = MemorySink("shadow")
    await sink.open()
    cand = await manager({"5": fn}, "5", name="s")
    rollout = Rollout(
        await manager({"1": plus(1)}), metrics=metrics, shadow=Shadow(cand, sink, **kwargs)
    )
    rollout.executor = executor
    return rollout, sink, metrics


async def test_shadow_writes_its_outputs_and_counts_agreement(
    executor: ThreadPoolExecutor,
) -> None:
    def close_on_even(xs: list[dict[str, Any]]) -> list[float]:
        return [x["x"] + 1000 + (1e-9 if x["id"] % 2 == 0 else 0.5) for x in xs]

    rollout, sink, metrics = await shadow_rollout(close_on_even, executor, tolerance=1e-6)
    rs = make_records(0, 10)
    rollout.start_shadow(rs, inputs_of(rs), served(rs, [r.value["x"] + 1000 for r in rs]))
    await rollout.drain_shadows()
    assert len(sink.batches) == 1
    b = sink.batches[0]
    assert b.model == ref("s", "5") and list(b.records) == rs
    assert shadow_count(metrics, "agree") == 5 and shadow_count(metrics, "disagree") == 5
    assert shadow_count(metrics, "failed") == 0


async def test_shadow_skips_batches_while_its_limit_is_running(
    executor: ThreadPoolExecutor,
) -> None:
    gate = threading.Event()

    def held(xs: list[dict[str, Any]]) -> list[float]:
        gate.wait(10)
        return [x["x"] + 1000 for x in xs]

    rollout, sink, metrics = await shadow_rollout(held, executor, max_batches_in_flight=2)
    batches = [make_records(i * 5, 5) for i in range(4)]
    for rs in batches:
        rollout.start_shadow(rs, inputs_of(rs), served(rs, [r.value["x"] + 1000 for r in rs]))
    assert shadow_count(metrics, "skipped") == 10  # the last two batches
    gate.set()
    await rollout.drain_shadows()
    assert len(sink.batches) == 2 and shadow_count(metrics, "agree") == 10


async def test_a_failing_or_wrong_sized_shadow_is_counted_not_raised(
    executor: ThreadPoolExecutor,
) -> None:
    for fn in (raising, lambda xs: [0.0]):
        rollout, sink, metrics = await shadow_rollout(fn, executor)
        rs = make_records(0, 4)
        rollout.start_shadow(rs, inputs_of(rs), served(rs, [0.0] * 4))
        await rollout.drain_shadows()
        assert not sink.batches
        assert shadow_count(metrics, "failed") == 4
        assert shadow_count(metrics, "agree") == shadow_count(metrics, "disagree") == 0


async def test_a_timed_out_shadow_call_keeps_its_slot_until_its_thread_returns(
    executor: ThreadPoolExecutor,
) -> None:
    """Python cannot stop a thread: a shadow call that timed out still occupies one. New
    shadow batches are skipped until it returns, so a slow shadow takes at most
    ``max_batches_in_flight`` threads from the executor the serving model uses."""
    gate = threading.Event()
    entered: list[int] = []

    def stuck(xs: list[dict[str, Any]]) -> list[float]:
        entered.append(len(xs))
        gate.wait(10)
        return [0.0] * len(xs)

    rollout, sink, metrics = await shadow_rollout(stuck, executor, timeout=0.01)
    rs = make_records(0, 3)
    rollout.start_shadow(rs, inputs_of(rs), served(rs, [0.0] * 3))
    await rollout.drain_shadows()  # the task gives up after its timeout
    assert shadow_count(metrics, "failed") == 3
    for i in range(5):
        more = make_records(10 + 3 * i, 3)
        rollout.start_shadow(more, inputs_of(more), served(more, [0.0] * 3))
        await rollout.drain_shadows()
    assert len(entered) == 1  # no second thread was taken
    assert shadow_count(metrics, "skipped") == 15
    gate.set()
    # Once the thread returns, the next batch is shadowed again.
    more = make_records(100, 3)

    def shadowed_again() -> bool:
        if len(entered) == 1:
            rollout.start_shadow(more, inputs_of(more), served(more, [0.0] * 3))
        return len(entered) == 2

    await wait_for(shadowed_again)
    await rollout.drain_shadows()
    assert len(sink.batches) == 1 and list(sink.batches[0].records) == more


async def test_managers_lists_a_shared_candidate_once() -> None:
    main = await manager({"1": plus(1)})
    cand = await manager({"9": plus(9)}, "9", name="c")
    rollout = Rollout(
        main,
        metrics=PipelineMetrics(),
        canary=Canary(cand, 0.1),
        shadow=Shadow(cand, MemorySink("shadow")),
    )
    assert rollout.managers() == [main, cand]


async def test_drain_shadows_waits_for_running_shadows(executor: ThreadPoolExecutor) -> None:
    rollout, sink, _ = await shadow_rollout(plus(5), executor, max_batches_in_flight=4)
    for i in range(3):
        rs = make_records(i * 2, 2)
        rollout.start_shadow(rs, inputs_of(rs), served(rs, [0.0, 0.0]))
    await rollout.drain_shadows()
    assert len(sink.batches) == 3


async def test_the_fallback_version_is_not_closed_while_it_rescores(
    caller: ModelCaller, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Probation ends (and the previous version is retired) while that version is still
    rescoring what the new one failed: it is closed only once it has finished."""
    from headrace.runtime import manager as manager_module

    now = [1000.0]

    class Clock:
        monotonic = staticmethod(lambda: now[0])
        perf_counter = staticmethod(time.perf_counter)

    monkeypatch.setattr(manager_module, "time", Clock)
    entered, gate = threading.Event(), threading.Event()

    def held(xs: list[dict[str, Any]]) -> list[float]:
        entered.set()
        gate.wait(10)
        return [x["x"] + 1000 for x in xs]

    main = await manager(
        {"1": held, "2": raising}, probation=Probation(seconds=60, min_records=1000)
    )
    src = main.source
    assert isinstance(src, FakeSource)
    src.point("2")
    await main.check()
    rollout = Rollout(main, metrics=PipelineMetrics())
    rs = make_records(0, 4)
    scoring = asyncio.create_task(rollout.score(caller, rs, inputs_of(rs)))
    try:
        assert await asyncio.to_thread(entered.wait, 10)  # version 1 rescoring
        now[0] += 61
        await main.check()  # probation over: version 1 is retired
        assert main.previous is None
        assert src.models["1"].closed == 0
    finally:
        gate.set()
    batches, failed = await scoring
    assert not failed and [b.model.version for b in batches] == ["1"]
    assert src.models["1"].closed == 1


async def test_drain_shadows_gives_up_on_a_shadow_sink_that_never_answers(
    executor: ThreadPoolExecutor,
) -> None:
    """A stop must not wait on a shadow whose sink waits for a service that is away: past
    the timeout the shadow batches are cancelled, their outputs not written."""

    class NeverWrites(MemorySink):
        async def write(self, batch: Any) -> None:
            await asyncio.Event().wait()

    metrics = PipelineMetrics()
    sink = NeverWrites("shadow")
    await sink.open()
    cand = await manager({"5": plus(5)}, "5", name="s")
    rollout = Rollout(await manager({"1": plus(1)}), metrics=metrics, shadow=Shadow(cand, sink))
    rollout.executor = executor
    rs = make_records(0, 2)
    rollout.start_shadow(rs, inputs_of(rs), served(rs, [0.0, 0.0]))
    await asyncio.wait_for(rollout.drain_shadows(0.2), 5)
    assert sink.batches == []
