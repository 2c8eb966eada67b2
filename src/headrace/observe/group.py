"""The status of a group of workers (``headrace run --workers N``) as one: what the
supervisor's dashboard and ``/api/status`` show.

Each worker serves its own ``/api/status``; :func:`merged_status` adds them up. Counts,
rates' totals, in-flight records, dead letters, shed records and writes are sums; lag is
each worker's own partitions side by side; latency is the slowest worker's (a percentile
of a group cannot be rebuilt from its members' percentiles, and the slowest is the one to
look at); the model is the first worker's, with every worker's version in ``workers``.

>>> one = {"pipeline": "p", "time": 5.0, "state": "running", "ready": True,
...        "not_ready": None, "paused": [], "paused_partitions": 0,
...        "totals": {"in": 10, "out": 8}, "latency": {"p50": 0.01, "p99": 0.02},
...        "in_flight": {"records": 2, "bytes": 0, "max_records": 100},
...        "lag": [{"topic": "t", "partition": 0, "records": 3, "seconds": 0.5}],
...        "model": {"name": "m", "version": "1", "sha256": None, "updates": {},
...                  "history": [], "canary": None, "shadow": None},
...        "dead_letters": [], "shed": [], "windows": None, "written": {"out": 8},
...        "alerts": []}
>>> two = {**one, "latency": {"p50": 0.03, "p99": 0.01},
...        "lag": [{"topic": "t", "partition": 1, "records": 4, "seconds": 1.5}]}
>>> group = merged_status([(0, one), (1, two)], expected=2)
>>> group["totals"], group["latency"], group["written"], len(group["lag"])
({'in': 20, 'out': 16}, {'p50': 0.03, 'p99': 0.02}, {'out': 16}, 2)
>>> [(w["worker"], w["state"]) for w in group["workers"]], group["ready"]
([(0, 'running'), (1, 'running')], True)
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any


def _sum_rows(rows: Sequence[dict[str, Any]], keys: Sequence[str]) -> list[dict[str, Any]]:
    counts: dict[tuple[Any, ...], int] = {}
    for row in rows:
        key = tuple(row[k] for k in keys)
        counts[key] = counts.get(key, 0) + int(row["count"])
    return [{**dict(zip(keys, key, strict=True)), "count": n} for key, n in sorted(counts.items())]


def _slowest(values: Sequence[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return max(known) if known else None


def merged_status(
    statuses: Sequence[tuple[int, dict[str, Any]]], *, expected: int
) -> dict[str, Any]:
    """The group's status from its workers' (``(index, status)``, those answering);
    ``expected``: how many workers the group has."""
    if not statuses:
        return {
            "pipeline": "",
            "time": time.time(),
            "state": "starting",
            "ready": False,
            "not_ready": f"no worker answering (0 of {expected})",
            "totals": {
                "in": 0,
                "out": 0,
                "failed": 0,
                "shed": 0,
                "batches": 0,
                "batched_records": 0,
            },
            "latency": {"p50": None, "p99": None},
            "in_flight": {"records": 0, "bytes": 0, "max_records": 0},
            "paused": [],
            "paused_partitions": 0,
            "lag": [],
            "model": {
                "name": "",
                "version": "",
                "sha256": None,
                "updates": {},
                "history": [],
                "canary": None,
                "shadow": None,
            },
            "dead_letters": [],
            "shed": [],
            "windows": None,
            "written": {},
            "alerts": [],
            "workers": [],
        }
    parts = [s for _, s in statuses]
    first = parts[0]
    totals: dict[str, int] = {}
    for s in parts:
        for k, v in s["totals"].items():
            totals[k] = totals.get(k, 0) + v
    written: dict[str, int] = {}
    for s in parts:
        for k, v in s["written"].items():
            written[k] = written.get(k, 0) + v
    updates: dict[str, int] = {}
    for s in parts:
        for k, v in s["model"]["updates"].items():
            updates[k] = updates.get(k, 0) + v
    states = {s["state"] for s in parts}
    not_ready = [f"worker {i}: {s['not_ready']}" for i, s in statuses if not s["ready"]]
    if len(statuses) < expected:
        not_ready.append(f"{expected - len(statuses)} of {expected} workers not answering")
    windows = [s["windows"] for s in parts if s["windows"] is not None]
    watermarks = [w["watermark"] for w in windows if w["watermark"] is not None]
    return {
        "pipeline": first["pipeline"],
        "time": max(s["time"] for s in parts),
        "state": states.pop() if len(states) == 1 else "mixed",
        "ready": not not_ready,
        "not_ready": "; ".join(not_ready) or None,
        "totals": totals,
        "latency": {
            "p50": _slowest([s["latency"]["p50"] for s in parts]),
            "p99": _slowest([s["latency"]["p99"] for s in parts]),
        },
        "in_flight": {
            k: sum(s["in_flight"][k] for s in parts) for k in ("records", "bytes", "max_records")
        },
        "paused": sorted({r for s in parts for r in s["paused"]}),
        "paused_partitions": sum(s["paused_partitions"] for s in parts),
        "lag": sorted(
            (p for s in parts for p in s["lag"]), key=lambda p: (p["topic"], p["partition"])
        ),
        "model": {**first["model"], "updates": updates},
        "dead_letters": _sum_rows(
            [d for s in parts for d in s["dead_letters"]], ("stage", "error_type")
        ),
        "shed": _sum_rows([d for s in parts for d in s["shed"]], ("reason", "priority")),
        "windows": {
            # The group's events are all in by the earliest worker's watermark.
            "watermark": min(watermarks) if watermarks else None,
            "open": sum(w["open"] for w in windows),
            "closed": sum(w["closed"] for w in windows),
        }
        if windows
        else None,
        "written": written,
        "alerts": sorted((a for s in parts for a in s["alerts"]), key=lambda a: a["at"])[-20:],
        "workers": [
            {
                "worker": i,
                "state": s["state"],
                "ready": s["ready"],
                "out": s["totals"]["out"],
                "model": s["model"]["version"],
                "partitions": len(s["lag"]),
            }
            for i, s in statuses
        ],
    }


class GroupOperations:
    """The supervisor's side of the HTTP server: the workers' statuses merged; no admin
    calls (each worker takes its own, on its own port)."""

    def __init__(
        self,
        fetch: Callable[[], Sequence[tuple[int, dict[str, Any]]]],
        *,
        expected: int,
        running: Callable[[], bool],
    ) -> None:
        self.fetch = fetch
        self.expected = expected
        self.running = running

    def healthy(self) -> bool:
        return self.running()

    def ready(self) -> str | None:
        status = self.status()
        return None if status["ready"] else str(status["not_ready"])

    def status(self) -> dict[str, Any]:
        return merged_status(self.fetch(), expected=self.expected)

    def actions(self) -> Mapping[str, Any]:
        return {}
