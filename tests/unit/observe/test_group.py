"""The group's status from its workers' (``--workers N``): sums, the slowest latency,
readiness only when every worker is ready and answering."""

from __future__ import annotations

from typing import Any

from headrace.observe.group import merged_status


def status(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "pipeline": "p",
        "time": 1.0,
        "state": "running",
        "ready": True,
        "not_ready": None,
        "paused": [],
        "paused_partitions": 0,
        "totals": {"in": 5, "out": 5, "failed": 1, "shed": 0, "batches": 1, "batched_records": 5},
        "latency": {"p50": None, "p99": None},
        "in_flight": {"records": 0, "bytes": 0, "max_records": 10},
        "lag": [],
        "model": {
            "name": "m",
            "version": "1",
            "sha256": None,
            "updates": {"swapped": 1},
            "history": [],
            "canary": None,
            "shadow": None,
        },
        "dead_letters": [{"stage": "decode", "error_type": "invalid-json", "count": 1}],
        "shed": [],
        "windows": {"watermark": 100.0, "open": 3, "closed": 7},
        "written": {"out": 5},
        "alerts": [{"at": 2.0, "sink": "a", "key": "k", "prediction": 1.0, "event_time": 0}],
    }
    return {**base, **changes}


def test_counts_add_up_and_the_watermark_is_the_earliest() -> None:
    later = status(windows={"watermark": 160.0, "open": 1, "closed": 2}, time=3.0)
    group = merged_status([(0, status()), (1, later)], expected=2)
    assert group["totals"]["failed"] == 2 and group["totals"]["out"] == 10
    assert group["dead_letters"] == [{"stage": "decode", "error_type": "invalid-json", "count": 2}]
    assert group["windows"] == {"watermark": 100.0, "open": 4, "closed": 9}
    assert group["model"]["updates"] == {"swapped": 2}
    assert group["in_flight"]["max_records"] == 20
    assert group["time"] == 3.0 and len(group["alerts"]) == 2
    assert group["latency"] == {"p50": None, "p99": None}  # nobody scored yet


def test_ready_only_when_every_worker_is_ready_and_answering() -> None:
    moving = status(ready=False, not_ready="rebalancing", state="running")
    group = merged_status([(0, status()), (1, moving)], expected=3)
    assert not group["ready"]
    assert group["not_ready"] == "worker 1: rebalancing; 1 of 3 workers not answering"
    stopping = merged_status([(0, status()), (1, status(state="stopping"))], expected=2)
    assert stopping["state"] == "mixed"
    nobody = merged_status([], expected=2)
    assert not nobody["ready"] and nobody["state"] == "starting" and nobody["workers"] == []
