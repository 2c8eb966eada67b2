"""The supervisor's logic: how many workers, when to restart, when to give up."""

from __future__ import annotations

import os

import pytest

from headrace.supervise import MAX_BACKOFF, MAX_RESTARTS, RESTART_WINDOW, Restarts, worker_count


def test_workers_are_a_number_or_auto() -> None:
    assert worker_count("3") == 3
    assert worker_count("auto") == (os.cpu_count() or 1)
    for bad in ("0", "-1", "many"):
        with pytest.raises(ValueError, match=f"--workers {bad!r}"):
            worker_count(bad)


def test_restarts_back_off_up_to_a_limit_and_start_over_after_a_good_run() -> None:
    r = Restarts()
    waits = [r.died(at=float(t)) for t in range(8)]
    assert waits == sorted(waits) and waits[-1] == MAX_BACKOFF
    r = Restarts()
    r.died(at=0.0)
    r.died(at=1.0)
    assert r.died(at=1.0 + RESTART_WINDOW + 1) == Restarts().backoff


def test_a_worker_that_keeps_dying_is_given_up_only_within_the_window() -> None:
    r = Restarts()
    for t in range(MAX_RESTARTS - 1):
        r.died(at=float(t))
    assert not r.gave_up(at=float(MAX_RESTARTS))
    r.died(at=float(MAX_RESTARTS))
    assert r.gave_up(at=float(MAX_RESTARTS))
    spread = Restarts()
    for i in range(MAX_RESTARTS):
        spread.died(at=i * (RESTART_WINDOW + 1))
    assert not spread.gave_up(at=MAX_RESTARTS * (RESTART_WINDOW + 1))
