"""The scorer (headrace.runtime.scorer): a model or a rollout, not both, and live model
updates: a swap under load, rollback of a failing version, canary and shadow, end to end
through a real Engine with sources and sinks in memory and versions from a fake registry."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from typing import Any

import pytest

from headrace import EngineSettings, PipelineError
from headrace.connectors.base import Source
from headrace.observe.metrics import PipelineMetrics
from headrace.record import Record
from headrace.runtime.engine import Engine
from headrace.runtime.manager import ModelManager, Probation
from headrace.runtime.rollout import Canary, Rollout, Shadow, canary_bucket
from headrace.runtime.scoring import FailurePolicy
from headrace.runtime.spec import PipelineSpec
from helpers import ListSource, MemorySink, wait_for
from version_helpers import FakeSource, FeedSource, VersionModel, digest, make_records

FAST = FailurePolicy(backoff=0.001, max_backoff=0.005)


def plus(k: float) -> Any:
    """Version k scores an event as its x plus 1000 k: a prediction shows who made it."""
    return lambda xs: [x["x"] + 1000 * k for x in xs]


def raising(xs: Any) -> list[float]:
    raise ValueError("this version fails on everything")


class Gate:
    """A batch function whose calls each take a permit (blocking in their thread until the
    test gives one); records the ids of each call."""

    def __init__(self, k: float) -> None:
        self.k = k
        self._permits = threading.Semaphore(0)
        self._lock = threading.Lock()
        self.calls: list[list[int]] = []

    def __call__(self, xs: list[dict[str, Any]]) -> list[float]:
        with self._lock:
            self.calls.append([x["id"] for x in xs])
        if not self._permits.acquire(timeout=10):
            raise RuntimeError("the test never opened the gate")
        return [x["x"] + 1000 * self.k for x in xs]

    def open(self, n: int = 10_000) -> None:
        self._permits.release(n)

    @property
    def ids(self) -> list[int]:
        with self._lock:
            return sorted(i for call in self.calls for i in call)


def managed(
    versions: dict[str, Any],
    latest: str = "1",
    *,
    metrics: PipelineMetrics,
    name: str = "m",
    **kwargs: Any,
) -> tuple[FakeSource, ModelManager]:
    src = FakeSource(versions, latest, name=name)
    return src, ModelManager(src, metrics=metrics, **kwargs)


def engine(
    source: Source,
    sink: MemorySink,
    rollout: Rollout,
    *,
    dead_letter: MemorySink | None = None,
    **settings: Any,
) -> Engine:
    defaults: dict[str, Any] = {
        "max_batch_size": 10,
        "max_wait": 0.005,
        "commit_interval": 0.05,
        "max_concurrency": 2,
    }
    defaults.update(settings)
    return Engine(
        PipelineSpec(
            source=source,
            model=None,
            rollout=rollout,
            sinks=[sink],
            dead_letter=dead_letter,
            metrics=rollout.metrics,
            settings=EngineSettings(**defaults),
            failures=FAST,
        )
    )


def count(metrics: PipelineMetrics, metric: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(metric, labels or None)
    return 0.0 if value is None else value


def check_batches_are_one_version_each(sink: MemorySink) -> None:
    """Every prediction in a batch is the one its labelled version makes: no batch holds
    records scored by another version than the one it names."""
    for b in sink.batches:
        k = int(b.model.version)
        assert b.model.sha256 == digest(b.model.name, b.model.version)[:12]
        for r, p in zip(b.records, b.predictions, strict=True):
            assert p == r.value["x"] + 1000 * k, (b.model, r.value)


def versions_per_partition(sink: MemorySink) -> dict[int, list[str]]:
    seen: dict[int, list[str]] = {}
    for o in sink.outputs:
        seen.setdefault(o["source"]["partition"], []).append(o["model"]["version"])
    return seen


async def baseline(rs: list[Record]) -> dict[int, Any]:
    """The outputs of one version alone, by id: what the main output must stay."""
    metrics = PipelineMetrics()
    _, main = managed({"1": plus(1)}, metrics=metrics)
    sink = MemorySink()
    await engine(ListSource([rs]), sink, Rollout(main, metrics=metrics)).run()
    return {o["input"]["id"]: (o["prediction"], o["model"], o["source"]) for o in sink.outputs}


# -- swapping ---------------------------------------------------------------------------


async def test_swap_under_load_scores_each_batch_with_one_version() -> None:
    """Two batches run on version 1 when the alias moves to 2: they finish on 1, later
    batches go to 2, and version 1 is closed once they are written. Every record is scored
    once; per partition, the version changes once."""
    metrics = PipelineMetrics()
    gate = Gate(1)
    src, main = managed({"1": gate, "2": plus(2)}, metrics=metrics, probation=Probation(0))
    source = ListSource([make_records(0, 300, partitions=3)], hold_open=True)
    sink = MemorySink()
    eng = engine(source, sink, Rollout(main, metrics=metrics))
    run = asyncio.create_task(eng.run())
    try:
        gate.open(6)
        await wait_for(lambda: len(gate.calls) == 8)  # 6 done, 2 held on version 1
        v1 = src.models["1"]
        src.point("2")
        assert await main.check()
        assert await main.check() is False  # probation (0 s) over: version 1 retired
        assert main.previous is None and v1.closed == 0  # two batches still use it
        gate.open()
        await wait_for(lambda: len(sink.outputs) == 300)
        assert v1.closed == 1  # drained, then closed
    finally:
        gate.open()
        source.release.set()
    summary = await run
    assert summary.records_out == 300 and summary.records_failed == 0
    assert sorted(o["input"]["id"] for o in sink.outputs) == list(range(300))
    check_batches_are_one_version_each(sink)
    by_version = {
        v: sorted(o["input"]["id"] for o in sink.outputs if o["model"]["version"] == v)
        for v in ("1", "2")
    }
    assert by_version["1"] == gate.ids and len(gate.calls) == 8
    for partition, seq in versions_per_partition(sink).items():
        changes = sum(a != b for a, b in itertools.pairwise(seq))
        assert seq[0] == "1" and seq[-1] == "2" and changes == 1, partition
    assert source.committed == {("t", 0): 100, ("t", 1): 100, ("t", 2): 100}
    assert count(metrics, "headrace_model_updates_total", outcome="swapped") == 1


async def test_a_version_failing_everything_is_rolled_back_and_its_records_rescored() -> None:
    """Version 2 raises on every record: after min_records failures it is rolled back, the
    alias moves back, and the records it failed are scored by version 1: none is
    dead-lettered, none is lost."""
    metrics = PipelineMetrics()
    calls: list[int] = []

    def broken(xs: list[dict[str, Any]]) -> list[float]:
        calls.extend(x["id"] for x in xs)
        raise ValueError("version 2 is broken")

    src, main = managed(
        {"1": plus(1), "2": broken},
        metrics=metrics,
        probation=Probation(seconds=3600, max_error_rate=0.1, min_records=20),
    )
    source, sink, dlq = FeedSource(), MemorySink(), MemorySink("dlq")
    run = asyncio.create_task(
        engine(source, sink, Rollout(main, metrics=metrics), dead_letter=dlq).run()
    )
    try:
        source.put(make_records(0, 40, partitions=2))
        await wait_for(lambda: len(sink.outputs) == 40)
        src.point("2")
        assert await main.check()
        source.put(make_records(40, 160, partitions=2))
    finally:
        source.end()
    summary = await run
    assert not dlq.failures and summary.records_failed == 0
    assert sorted(o["input"]["id"] for o in sink.outputs) == list(range(200))
    assert {o["model"]["version"] for o in sink.outputs} == {"1"}
    check_batches_are_one_version_each(sink)
    # Within bounds: min_records, plus what was in flight (max_concurrency batches).
    tried = set(calls)
    assert 20 <= len(tried) <= 20 + 2 * 10
    assert main.serving is src.models["1"] and "2" in main.rejected
    assert count(metrics, "headrace_model_updates_total", outcome="rolled_back") == 1
    assert src.rolled.wait(5) and src.rolled_back == ["2"] and src.current == "1"
    assert src.models["2"].closed == 1


async def test_a_version_that_cannot_load_stops_the_start() -> None:
    metrics = PipelineMetrics()
    _, main = managed({"1": RuntimeError("sha256 mismatch")}, metrics=metrics)
    source, sink = ListSource([make_records(0, 5)]), MemorySink()
    with pytest.raises(PipelineError, match="sha256 mismatch"):
        await engine(source, sink, Rollout(main, metrics=metrics)).run()
    assert sink.opened == 0 and source.commits == []


async def test_check_models_wakes_every_manager() -> None:
    """The admin call: every manager looks now, although none would poll for an hour."""
    metrics = PipelineMetrics()
    src, main = managed({"1": plus(1), "2": plus(2)}, metrics=metrics, poll_interval=3600)
    cand_src, cand = managed({"9": plus(9)}, "9", metrics=metrics, name="c", poll_interval=3600)
    swapped = asyncio.Event()
    main.on_swap = lambda _new, _old: swapped.set()
    source, sink = FeedSource(), MemorySink()
    eng = engine(source, sink, Rollout(main, metrics=metrics, canary=Canary(cand, 0.01)))
    run = asyncio.create_task(eng.run())
    try:
        source.put(make_records(0, 20))
        await wait_for(lambda: len(sink.outputs) == 20)
        assert eng.model is src.models["1"]
        src.point("2")
        eng.check_models()
        async with asyncio.timeout(5):
            await swapped.wait()
        await wait_for(lambda: cand_src.polls == 2)
        assert eng.model is src.models["2"]
        source.put(make_records(20, 20))
    finally:
        source.end()
    await run
    later = [o for o in sink.outputs if o["input"]["id"] >= 20 and o["model"]["name"] == "m"]
    assert later and {o["model"]["version"] for o in later} == {"2"}


async def test_engine_takes_a_model_or_a_rollout_not_both() -> None:
    metrics = PipelineMetrics()
    _, main = managed({"1": plus(1)}, metrics=metrics)
    rollout = Rollout(main, metrics=metrics)
    model = VersionModel(plus(1), name="m", version="1")
    for m, r in ((model, rollout), (None, None)):
        with pytest.raises(ValueError, match="not both"):
            Engine(PipelineSpec(source=ListSource([]), model=m, rollout=r, sinks=[MemorySink()]))
    eng = Engine(
        PipelineSpec(source=ListSource([]), model=None, rollout=rollout, sinks=[MemorySink()])
    )
    with pytest.raises(RuntimeError, match="loaded when the pipeline starts"):
        _ = eng.model
    with pytest.raises(ValueError, match="rollout"):
        eng.model = model


# -- canary ----------------------------------------------------------------------------


async def test_canary_scores_a_stable_share_of_keys_and_leaves_the_rest_unchanged() -> None:
    metrics = PipelineMetrics()
    _, main = managed({"1": plus(1)}, metrics=metrics)
    _, cand = managed({"9": plus(9)}, "9", metrics=metrics, name="c")
    rs = make_records(0, 600, partitions=2, keys=300)  # every key twice, in two batches
    sink = MemorySink()
    rollout = Rollout(main, metrics=metrics, canary=Canary(cand, 0.25))
    summary = await engine(ListSource([rs]), sink, rollout).run()
    assert summary.records_out == 600
    assert sorted(o["input"]["id"] for o in sink.outputs) == list(range(600))
    check_batches_are_one_version_each(sink)

    by_key: dict[str, set[str]] = {}
    for o in sink.outputs:
        by_key.setdefault(o["key"], set()).add(o["model"]["name"])
        in_canary = canary_bucket(o["key"]) < 2500
        assert (o["model"]["name"] == "c") == in_canary
        if in_canary:
            assert o["model"] == {"name": "c", "version": "9", "sha256": digest("c", "9")[:12]}
    assert all(len(names) == 1 for names in by_key.values())  # a key goes one way
    share = sum(names == {"c"} for names in by_key.values()) / len(by_key)
    assert 0.15 < share < 0.35

    expected = await baseline(rs)
    for o in sink.outputs:
        if o["model"]["name"] == "m":
            assert (o["prediction"], o["model"], o["source"]) == expected[o["input"]["id"]]

    # The serving version is what the model-info gauge shows, not the candidate.
    labels = {"name": "m", "version": "1", "sha256": digest("m", "1")[:12]}
    assert count(metrics, "headrace_model_info", **labels) == 1
    labels = {"name": "c", "version": "9", "sha256": digest("c", "9")[:12]}
    assert count(metrics, "headrace_model_info", **labels) == 0


async def test_a_broken_canary_neither_holds_the_stream_nor_dead_letters() -> None:
    """A canary candidate that fails on everything is not a model that is down: its
    records are scored by the serving version, and the stream goes on."""
    metrics = PipelineMetrics()
    _, main = managed({"1": plus(1)}, metrics=metrics)
    _, cand = managed({"9": raising}, "9", metrics=metrics, name="c")
    sink, dlq = MemorySink(), MemorySink("dlq")
    eng = engine(
        ListSource([make_records(0, 200)]),
        sink,
        Rollout(main, metrics=metrics, canary=Canary(cand, 0.5)),
        dead_letter=dlq,
        shutdown_timeout=5,
    )
    summary = await asyncio.wait_for(eng.run(), 20)
    assert summary.records_out == 200 and not dlq.failures
    assert {o["model"]["name"] for o in sink.outputs} == {"m"}
    check_batches_are_one_version_each(sink)
    assert count(metrics, "headrace_model_circuit_open") == 0


# -- shadow ----------------------------------------------------------------------------


def shadowed(
    fn: Any, rs: list[Record], main_fn: Any = None, **kwargs: Any
) -> tuple[Engine, MemorySink, MemorySink, PipelineMetrics, ListSource]:
    metrics = PipelineMetrics()
    _, main = managed({"1": main_fn or plus(1)}, metrics=metrics)
    _, cand = managed({"5": fn}, "5", metrics=metrics, name="s")
    sink, shadow_sink = MemorySink(), MemorySink("shadow")
    source = ListSource([rs])
    rollout = Rollout(main, metrics=metrics, shadow=Shadow(cand, shadow_sink, **kwargs))
    return engine(source, sink, rollout), sink, shadow_sink, metrics, source


async def test_shadow_outputs_and_agreement_leave_the_main_output_unchanged() -> None:
    def half_agrees(xs: list[dict[str, Any]]) -> list[float]:
        return [x["x"] + 1000 + (0.5 if x["id"] % 2 else 0.0) for x in xs]

    rs = make_records(0, 300, partitions=3)
    eng, sink, shadow_sink, metrics, source = shadowed(
        half_agrees, rs, tolerance=0.1, max_batches_in_flight=1000
    )
    await eng.run()
    expected = await baseline(rs)
    got = {o["input"]["id"]: (o["prediction"], o["model"], o["source"]) for o in sink.outputs}
    assert got == expected and len(sink.outputs) == 300

    assert sorted(o["input"]["id"] for o in shadow_sink.outputs) == list(range(300))
    ref = {"name": "s", "version": "5", "sha256": digest("s", "5")[:12]}
    assert all(o["model"] == ref for o in shadow_sink.outputs)
    assert count(metrics, "headrace_shadow_records_total", outcome="agree") == 150
    assert count(metrics, "headrace_shadow_records_total", outcome="disagree") == 150
    assert count(metrics, "headrace_shadow_records_total", outcome="skipped") == 0
    # Opened and closed with the pipeline, never flushed before a commit.
    assert (shadow_sink.opened, shadow_sink.closed, shadow_sink.flushes) == (1, 1, 0)
    assert sink.flushes >= 1
    assert source.committed == {("t", 0): 100, ("t", 1): 100, ("t", 2): 100}


async def test_a_failing_shadow_does_not_fail_the_pipeline() -> None:
    rs = make_records(0, 100)
    eng, sink, shadow_sink, metrics, source = shadowed(raising, rs, max_batches_in_flight=1000)
    summary = await eng.run()
    assert summary.records_out == 100 and summary.records_failed == 0
    got = {o["input"]["id"]: (o["prediction"], o["model"], o["source"]) for o in sink.outputs}
    assert got == await baseline(rs)
    assert not shadow_sink.outputs
    assert count(metrics, "headrace_shadow_records_total", outcome="failed") == 100
    assert source.committed == {("t", 0): 100}


async def test_a_slow_shadow_does_not_hold_the_pipeline_back() -> None:
    """A shadow stuck in its model: its call times out, later batches are skipped, and it
    takes no thread from the serving version. The run scores, commits and ends while the
    shadow is still stuck."""
    stuck = threading.Event()
    entered: list[int] = []

    def slow(xs: list[dict[str, Any]]) -> list[float]:
        entered.append(len(xs))
        stuck.wait(30)
        return [0.0] * len(xs)

    def steady(xs: list[dict[str, Any]]) -> list[float]:
        time.sleep(0.005)  # 60 batches: the run outlasts many shadow timeouts
        return plus(1)(xs)

    rs = make_records(0, 600, partitions=2)
    eng, _, _, metrics, source = shadowed(
        slow, rs, main_fn=steady, timeout=0.02, max_batches_in_flight=1
    )
    try:
        summary = await asyncio.wait_for(eng.run(), 10)
        assert not stuck.is_set()
    finally:
        stuck.set()
    assert summary.records_out == 600 and summary.records_failed == 0
    assert source.committed == {("t", 0): 300, ("t", 1): 300}
    assert len(entered) == 1  # one stuck call, not one per batch
    first = entered[0]  # the records of the batch it is stuck on
    assert count(metrics, "headrace_shadow_records_total", outcome="failed") == first
    assert count(metrics, "headrace_shadow_records_total", outcome="skipped") == 600 - first


async def test_a_fixed_model_is_in_the_model_info_gauge_too() -> None:
    """Not only versions from a registry: a model given as is (``model: {type: onnx,
    path, sha256}``, or ``.model(...)``) shows its name, version and sha256, and a model
    set in its place replaces it there."""
    metrics = PipelineMetrics()
    first = VersionModel(plus(1), name="fixed", version="3")
    eng = Engine(
        PipelineSpec(
            source=ListSource([make_records(0, 20)]),
            model=first,
            rollout=None,
            sinks=[MemorySink()],
            metrics=metrics,
            settings=EngineSettings(max_batch_size=10, max_wait=0.005),
            failures=FAST,
        )
    )
    summary = await eng.run()
    assert summary.records_out == 20
    labels = {"name": "fixed", "version": "3", "sha256": digest("fixed", "3")[:12]}
    assert count(metrics, "headrace_model_info", **labels) == 1
    eng.model = VersionModel(plus(2), name="fixed", version="4")
    assert count(metrics, "headrace_model_info", **labels) == 0
    labels = {"name": "fixed", "version": "4", "sha256": digest("fixed", "4")[:12]}
    assert count(metrics, "headrace_model_info", **labels) == 1
