"""``model_calls: process`` (headrace.runtime.processes): model calls in processes of
their own, real ones. A model's error keeps its type; a call that never returns, or ends
its process, costs that process, which is replaced; nothing outlives the worker."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import process_models
from headrace import CallableModel
from headrace.runtime.processes import (
    ModelNotPicklable,
    ModelProcessError,
    ProcessPool,
    check_picklable,
)

PID = CallableModel(process_models.pid, name="pid")
TROUBLED = CallableModel(process_models.troubled, name="troubled")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def gone_within(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)  # polling another process's end
    return True


async def test_a_call_runs_in_another_process_and_a_models_error_keeps_its_type() -> None:
    pool = ProcessPool(1)
    await pool.start()
    try:
        [where] = await pool.call(PID, [{"x": 1}]).future
        assert where != os.getpid()
        with pytest.raises(ValueError, match="x is -1"):
            await pool.call(TROUBLED, [{"x": -1.0}]).future
        assert list(await pool.call(TROUBLED, [{"x": 2.0}, {"x": 3.0}]).future) == [4.0, 6.0]
        assert pool.replaced == 0
    finally:
        pool.shutdown()


async def test_a_process_that_ends_during_a_call_fails_that_call_and_is_replaced() -> None:
    pool = ProcessPool(1)
    await pool.start()
    try:
        [first] = await pool.call(PID, [{}]).future
        with pytest.raises(
            ModelProcessError, match=r"ended during a call on 2 records \(exit code 3\)"
        ):
            await pool.call(TROUBLED, [{"x": 1.0}, {"x": -3.0}]).future
        [second] = await pool.call(PID, [{}]).future
        assert second != first and not alive(first)
        assert pool.replaced == 1
    finally:
        pool.shutdown()


async def test_a_call_given_up_on_kills_its_process_and_another_takes_its_place() -> None:
    pool = ProcessPool(1)
    await pool.start()
    try:
        [first] = await pool.call(PID, [{}]).future
        call = pool.call(TROUBLED, [{"x": -2.0}])
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(asyncio.shield(call.future), 0.3)
        pool.abandon(call)
        assert not alive(first)
        [second] = await pool.call(PID, [{}]).future
        assert second != first
    finally:
        pool.shutdown()


async def test_a_stop_ends_every_process_even_one_stuck_in_a_call() -> None:
    pool = ProcessPool(2)
    await pool.start()
    pids = await asyncio.gather(pool.call(PID, [{}]).future, pool.call(PID, [{}]).future)
    stuck = pool.call(TROUBLED, [{"x": -2.0}])
    await asyncio.sleep(0.2)  # let it reach the model (not a condition: either way is right)
    started = time.monotonic()
    pool.shutdown()
    assert time.monotonic() - started < 5
    assert stuck.future.cancelled()
    assert not any(alive(p) for [p] in pids)


def test_a_model_that_cannot_be_pickled_is_refused_with_the_fix() -> None:
    check_picklable(PID)
    with pytest.raises(
        ModelNotPicklable, match=r"model_calls: process.*in a module.*use model_calls: thread"
    ):
        check_picklable(CallableModel(lambda xs: xs, name="lambda"))


SCRIPT = """
import asyncio, sys
sys.path[:0] = {path!r}
import process_models
from headrace import CallableModel
from headrace.runtime.processes import ProcessPool

async def main():
    pool = ProcessPool(1)
    await pool.start()
    [pid] = await pool.call(CallableModel(process_models.pid, name="pid"), [{{}}]).future
    pool.call(CallableModel(process_models.troubled, name="t"), [{{"x": -2.0}}])
    print(pid, flush=True)
    await asyncio.sleep(3600)

asyncio.run(main())
"""


def test_the_models_process_leaves_when_its_worker_is_killed(tmp_path: Path) -> None:
    """SIGKILL to the worker while its model's process is stuck in a call (so it reads
    nothing): the process notices within a second and leaves."""
    script = tmp_path / "worker.py"
    script.write_text(SCRIPT.format(path=[str(Path(process_models.__file__).parent)]))
    worker = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        assert worker.stdout is not None
        pid = int(worker.stdout.readline())
        assert alive(pid)
    finally:
        worker.send_signal(signal.SIGKILL)
        worker.wait()
    assert gone_within(pid, 5), "the model's process outlived its worker"


def test_a_model_of_the_main_script_is_refused_by_name() -> None:
    """A function of the main script pickles (by name) but cannot be found in the
    model's process, whose main module is another: refused at start, named."""

    def score(xs: list[object]) -> list[float]:
        return [0.0] * len(xs)

    score.__module__ = "__main__"
    score.__qualname__ = "score"
    with pytest.raises(ModelNotPicklable, match="score is defined in the main script"):
        check_picklable(CallableModel(score, name="main"))


async def test_a_process_that_cannot_start_fails_the_start_in_one_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Processes that end before they are ready (here: not Python at all) are tried
    three times, then the start fails, and so does every later call, at once."""
    monkeypatch.setattr(sys, "executable", "/bin/false")
    pool = ProcessPool(1)
    try:
        with pytest.raises(ModelProcessError, match=r"could not start \(3 tries"):
            await pool.start(PID)
        with pytest.raises(ModelProcessError, match="could not start"):
            await pool.call(PID, [{}]).future
    finally:
        pool.shutdown()


async def test_more_models_than_it_keeps_are_all_answered() -> None:
    """Five versions with calls waiting at once, more than the pool keeps
    (KEPT_MODELS): none still waited for is forgotten, every call gets its answer, and a
    version used again after it was forgotten is sent again."""
    pool = ProcessPool(1)
    await pool.start()
    try:
        versions = [
            CallableModel(process_models.troubled, name="t", version=str(v)) for v in range(5)
        ]
        calls = [pool.call(m, [{"x": float(i)}]) for i, m in enumerate(versions)]
        answers = await asyncio.gather(*(c.future for c in calls))
        assert [list(a) for a in answers] == [[2.0 * i] for i in range(5)]
        assert list(await pool.call(versions[0], [{"x": 7.0}]).future) == [14.0]
    finally:
        pool.shutdown()


async def test_outputs_that_cannot_be_sent_back_fail_that_call_only() -> None:
    pool = ProcessPool(1)
    await pool.start()
    try:
        bad = CallableModel(process_models.unsendable, name="generator")
        with pytest.raises(RuntimeError, match="outputs cannot be sent back"):
            await pool.call(bad, [{}]).future
        assert list(await pool.call(TROUBLED, [{"x": 1.0}]).future) == [2.0]
        assert pool.replaced == 0
    finally:
        pool.shutdown()
