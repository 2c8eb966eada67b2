"""ModelManager: which version serves, how a new one takes over (or is refused), when an old
one is closed, and how a version on probation is taken back. A fake source in memory; a
fake clock where probation time matters."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from headrace.observe.metrics import PipelineMetrics
from headrace.runtime import manager as manager_module
from headrace.runtime.manager import ModelManager, Probation
from version_helpers import FakeSource, VersionModel, digest


def scale(k: float) -> Any:
    return lambda xs: [x * k for x in xs]


def source(**extra: Any) -> FakeSource:
    versions: dict[str, Any] = {"1": scale(1), "2": scale(2), "3": scale(3)}
    versions.update(extra)
    return FakeSource(versions, "1")


def updates(m: PipelineMetrics, outcome: str) -> float:
    value = m.registry.get_sample_value("headrace_model_updates_total", {"outcome": outcome})
    return 0.0 if value is None else value


def info(m: PipelineMetrics, version: str) -> float | None:
    labels = {"name": "m", "version": version, "sha256": digest("m", version)[:12]}
    return m.registry.get_sample_value("headrace_model_info", labels)


class Clock:
    """Stands in for the manager's ``time`` module: a monotonic clock the test moves."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    @staticmethod
    def perf_counter() -> float:
        import time

        return time.perf_counter()


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(manager_module, "time", c)
    return c


async def started(src: FakeSource, **kwargs: Any) -> ModelManager:
    m = ModelManager(src, **kwargs)
    await m.start()
    return m


def model(m: ModelManager) -> VersionModel:
    assert isinstance(m.serving, VersionModel)
    return m.serving


# -- starting and checking -----------------------------------------------------------------


async def test_start_serves_the_version_the_source_points_at() -> None:
    metrics = PipelineMetrics()
    src = source()
    m = await started(src, metrics=metrics)
    assert model(m).version == "1" and src.loads == ["1"]
    assert m.previous is None and not m.on_probation(model(m))
    assert info(metrics, "1") == 1


async def test_start_fails_when_the_version_cannot_load() -> None:
    """A pipeline must not start without a version that loads and validates."""
    src = FakeSource({"1": RuntimeError("bad artifact")}, "1")
    m = ModelManager(src)
    with pytest.raises(RuntimeError, match="bad artifact"):
        await m.start()
    assert m.serving is None


async def test_check_swaps_only_when_the_version_changes() -> None:
    metrics = PipelineMetrics()
    src = source()
    m = await started(src, metrics=metrics)
    first = model(m)
    swaps: list[tuple[str, str | None]] = []
    m.on_swap = lambda new, old: swaps.append((new.version, old.version if old else None))

    assert await m.check() is False
    assert model(m) is first and src.loads == ["1"]  # the same version is not loaded again

    src.point("2")
    assert await m.check() is True
    assert model(m).version == "2" and m.previous is first
    assert model(m).predict_batch([1.0, 2.0]) == [2.0, 4.0]
    assert swaps == [("2", "1")]
    assert updates(metrics, "swapped") == 1
    assert info(metrics, "2") == 1 and info(metrics, "1") is None  # only the serving one

    assert await m.check() is False
    assert src.loads == ["1", "2"] and updates(metrics, "swapped") == 1


async def test_a_version_the_engine_does_not_accept_is_rejected_and_never_serves() -> None:
    """``accept`` (under ``model_calls: process``: that a version can be pickled): a
    version it refuses is rejected like one that failed to load; the old one serves."""
    metrics = PipelineMetrics()
    src = source()
    m = await started(src, metrics=metrics)
    first = model(m)

    def accept(candidate: Any) -> None:
        if candidate is not first:
            raise ValueError("cannot be sent to its process")

    m.accept = accept
    src.point("2")
    assert await m.check() is False
    assert model(m) is first and m.rejected == {"2"}
    assert updates(metrics, "rejected") == 1 and updates(metrics, "swapped") == 0


async def test_a_version_that_fails_to_load_is_rejected_once_and_never_serves() -> None:
    metrics = PipelineMetrics()
    src = source(**{"2": ValueError("sha256 mismatch")})
    m = await started(src, metrics=metrics)
    first = model(m)
    src.point("2")
    assert await m.check() is False
    assert model(m) is first and m.previous is None
    assert m.rejected == {"2"}
    assert updates(metrics, "rejected") == 1 and updates(metrics, "swapped") == 0
    assert first.closed == 0

    # Asked again, the rejected version is not even loaded again.
    assert await m.check() is False
    assert src.loads == ["1", "2"] and updates(metrics, "rejected") == 1

    # A later good version still goes in.
    src.point("3")
    assert await m.check() is True
    assert model(m).version == "3"


# -- watching --------------------------------------------------------------------------


async def test_check_now_wakes_the_watcher() -> None:
    """With a poll interval of an hour, only check_now() makes the watcher look."""
    src = source()
    m = await started(src, poll_interval=3600)
    swapped = asyncio.Event()
    m.on_swap = lambda _new, _old: swapped.set()
    watcher = asyncio.create_task(m.watch())
    try:
        for _ in range(20):  # let the watcher run up to its wait
            await asyncio.sleep(0)
        src.point("2")
        assert src.polls == 1  # only start() asked so far
        m.check_now()
        async with asyncio.timeout(5):
            await swapped.wait()
        assert model(m).version == "2"
        assert src.polls == 2
    finally:
        watcher.cancel()


async def test_the_watcher_polls_and_survives_a_failing_source() -> None:
    """A registry that cannot be read is logged, and the next poll goes on."""
    src = source()
    m = await started(src, poll_interval=0.01)
    src.fail_latest.append(OSError("registry unreachable"))
    swapped = asyncio.Event()
    m.on_swap = lambda _new, _old: swapped.set()
    src.point("2")
    watcher = asyncio.create_task(m.watch())
    try:
        async with asyncio.timeout(5):
            await swapped.wait()
    finally:
        watcher.cancel()
    assert model(m).version == "2"
    assert not src.fail_latest  # the failure happened, and did not stop the watcher


# -- leases and closing ----------------------------------------------------------------


async def test_a_retired_model_is_closed_only_after_its_last_lease() -> None:
    src = source()
    m = await started(src, probation=Probation(seconds=3600, min_records=1))
    v1 = model(m)
    src.point("2")
    await m.check()
    v2 = model(m)
    assert m.lease() is v2 and m.lease() is v2  # two batches running on version 2
    m.roll_back("test")
    assert model(m) is v1
    assert v2.closed == 0  # still in use
    m.release(v2)
    assert v2.closed == 0
    m.release(v2)
    assert v2.closed == 1  # drained: closed once
    assert v1.closed == 0


async def test_a_model_not_in_use_is_closed_when_retired(clock: Clock) -> None:
    """Once probation has passed, the next check retires the version kept to fall back
    on; a version replaced during probation is retired too."""
    src = source()
    m = await started(src, probation=Probation(seconds=10))
    v1 = model(m)
    src.point("2")
    await m.check()
    v2 = model(m)
    assert v1.closed == 0  # kept for the fallback while version 2 is on probation

    src.point("3")
    await m.check()  # 3 replaces 2 during probation: 1 goes, 2 is the fallback now
    assert (v1.closed, v2.closed) == (1, 0)
    assert m.previous is v2

    clock.now += 11
    leased = m.lease()
    assert leased is model(m)
    await m.check()  # probation over: version 2 goes
    assert v2.closed == 1 and m.previous is None
    m.release(leased)
    assert model(m).closed == 0  # the serving version is never closed


async def test_the_old_version_is_released_only_when_its_batches_finish() -> None:
    """A batch leased before a swap keeps its version; retiring it waits for the batch."""
    src = source()
    m = await started(src, probation=Probation(seconds=0))
    v1 = m.lease()
    src.point("2")
    await m.check()
    await m.check()  # probation (of 0 s) over: version 1 is retired
    assert m.previous is None
    assert isinstance(v1, VersionModel) and v1.closed == 0
    m.release(v1)
    assert v1.closed == 1


# -- probation -------------------------------------------------------------------------


async def on_version_2(probation: Probation, metrics: PipelineMetrics | None = None) -> Any:
    src = source()
    m = await started(src, probation=probation, metrics=metrics)
    v1 = model(m)
    src.point("2")
    assert await m.check()
    return src, m, v1, model(m)


async def test_error_rate_past_the_threshold_rolls_back_after_min_records() -> None:
    metrics = PipelineMetrics()
    src, m, v1, v2 = await on_version_2(
        Probation(seconds=3600, max_error_rate=0.1, min_records=20), metrics
    )
    assert m.on_probation(v2)
    m.observe(v2, ok=5, failed=5, seconds=0.01)
    assert model(m) is v2  # 50% failed, but only 10 records: too few to judge
    m.observe(v2, ok=5, failed=5, seconds=0.01)
    assert model(m) is v1  # 20 records, 50% failed: back to version 1
    assert "2" in m.rejected and m.previous is None
    assert updates(metrics, "rolled_back") == 1
    assert info(metrics, "1") == 1 and info(metrics, "2") is None
    assert await asyncio.to_thread(src.rolled.wait, 5)
    assert src.rolled_back == ["2"] and src.current == "1"
    assert src.rolled_back_to == ["1"]  # the version that served, named: not "one step back"
    assert v2.closed == 1 and v1.closed == 0

    # Even if the alias still pointed there, version 2 is not taken again.
    src.point("2")
    assert await m.check() is False
    assert model(m) is v1 and src.loads == ["1", "2"]


async def test_error_rate_at_the_threshold_does_not_roll_back() -> None:
    _, m, _, v2 = await on_version_2(Probation(seconds=3600, max_error_rate=0.1, min_records=20))
    m.observe(v2, ok=18, failed=2, seconds=0.01)  # exactly 10%
    m.observe(v2, ok=80, failed=0, seconds=0.01)
    assert model(m) is v2 and not m.rejected


async def test_latency_ratio_past_the_threshold_rolls_back(
    caplog: pytest.LogCaptureFixture,
) -> None:
    src = source()
    m = await started(src, probation=Probation(seconds=3600, max_latency_ratio=3.0, min_records=10))
    v1 = model(m)
    m.observe(v1, ok=10, failed=0, seconds=1.0)  # 0.1 s per record before the swap
    src.point("2")
    await m.check()
    v2 = model(m)
    m.observe(v2, ok=10, failed=0, seconds=9.0)  # its first batch: warm-up, not counted
    assert model(m) is v2
    m.observe(v2, ok=10, failed=0, seconds=2.5)  # 2.5x: within the bound
    assert model(m) is v2
    with caplog.at_level(logging.ERROR, logger="headrace"):
        m.observe(v2, ok=10, failed=0, seconds=5.0)  # 7.5 s / 20 = 3.75x
    assert model(m) is v1 and "2" in m.rejected
    assert "time per record 3.8x" in caplog.text
    assert await asyncio.to_thread(src.rolled.wait, 5)
    assert src.rolled_back == ["2"]


async def test_after_probation_nothing_rolls_back(clock: Clock) -> None:
    src, m, v1, v2 = await on_version_2(Probation(seconds=60, min_records=1))
    assert m.on_probation(v2) and m.fallback(v2) is v1
    clock.now += 61
    assert not m.on_probation(v2)
    assert m.fallback(v2) is None  # its failures are dead-lettered like any model's
    m.observe(v2, ok=0, failed=500, seconds=1.0)
    assert model(m) is v2 and not m.rejected and src.rolled_back == []


async def test_fallback_during_probation_is_the_previous_version() -> None:
    _, m, v1, v2 = await on_version_2(Probation(seconds=3600, min_records=10))
    assert m.fallback(v2) is v1
    assert m.fallback(v1) is None  # the old version has nothing to fall back on
    m.roll_back("test")
    # A batch that started on version 2 before the rollback falls back on what serves now.
    assert m.fallback(v2) is v1
    assert m.fallback(v1) is None


async def test_a_version_started_without_a_predecessor_is_not_on_probation() -> None:
    m = await started(source(), probation=Probation(seconds=3600, min_records=1))
    v1 = model(m)
    m.observe(v1, ok=0, failed=100, seconds=1.0)
    assert model(m) is v1 and m.fallback(v1) is None
    m.roll_back("nothing to go back to")  # no previous version: a no-op
    assert model(m) is v1


@pytest.mark.parametrize(
    "kwargs",
    [{"seconds": -1}, {"max_error_rate": 1.5}, {"max_error_rate": -0.1}, {"max_latency_ratio": 0}],
)
def test_invalid_probation_is_rejected(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        Probation(**kwargs)  # type: ignore[arg-type]


def test_poll_interval_must_be_positive() -> None:
    with pytest.raises(ValueError, match="poll_interval"):
        ModelManager(source(), poll_interval=0)
