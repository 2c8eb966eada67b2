"""What the HTTP server asks of a running engine: is it alive, is it ready, how is it
doing (the dashboard's and ``/api/status``'s figures), and the operator's actions.

The server (:mod:`headrace.observe.http`) knows nothing of the engine; it is handed an
:class:`Operations`. Figures are read, never computed per record: the engine's own totals
(:class:`~headrace.observe.stats.EngineStats`) and its Prometheus registry.
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from prometheus_client.metrics import MetricWrapperBase

from headrace.models.base import model_ref
from headrace.observe.api import Refused
from headrace.runtime.engine import Engine
from headrace.runtime.manager import ModelManager, NothingToRollBack

#: An operator's action: answers a JSON body, or raises :class:`Refused` (409).
Action = Callable[[], Awaitable[dict[str, Any]]]


def _samples(metric: MetricWrapperBase, suffix: str = "") -> Iterator[tuple[dict[str, str], float]]:
    """A metric's samples, labels and value (``suffix``: ``_total`` for a counter's)."""
    for family in metric.collect():
        for sample in family.samples:
            if sample.name == family.name + suffix:
                yield sample.labels, sample.value


def _number(value: float) -> float | None:
    """NaN (no data yet) as JSON's null."""
    return None if math.isnan(value) else value


class Operations:
    """One running engine, as the HTTP server sees it."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    # -- probes --------------------------------------------------------------------------

    def healthy(self) -> bool:
        return self.engine.healthy

    def ready(self) -> str | None:
        return self.engine.ready()

    # -- the operator's actions ------------------------------------------------------------

    def actions(self) -> dict[str, Action]:
        """The admin calls, by path (each ``POST``, each behind the token)."""
        return {
            "/admin/pause": self._pause,
            "/admin/resume": self._resume,
            "/admin/models/check": self._check,
            "/admin/models/rollback": self._rollback,
        }

    async def _pause(self) -> dict[str, Any]:
        self.engine.pause_reading(True)
        return {"status": "paused", "paused": sorted(self.engine.backpressure.reasons)}

    async def _resume(self) -> dict[str, Any]:
        self.engine.pause_reading(False)
        return {"status": "resumed", "paused": sorted(self.engine.backpressure.reasons)}

    async def _check(self) -> dict[str, Any]:
        self.engine.check_models()
        return {"status": "accepted"}

    async def _rollback(self) -> dict[str, Any]:
        manager = self._manager()
        if manager is None:
            raise Refused(
                "the model is not from a registry: there is no earlier version to roll back to"
            )
        try:
            serving = await manager.roll_back_now("rolled back by an operator")
        except NothingToRollBack as exc:
            raise Refused(str(exc)) from None
        return {"status": "rolled_back", "serving": serving}

    def _manager(self) -> ModelManager | None:
        rollout = self.engine.rollout
        return rollout.manager if rollout is not None else None

    # -- the figures ---------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """Everything the dashboard shows, as totals and current values (the board
        turns totals into rates)."""
        e = self.engine
        s = e.stats
        flow = e.flow
        reasons = sorted(e.backpressure.reasons)
        not_ready = e.ready()
        if e.state.fatal is not None:
            state = "failed"
        elif e.state.stopping:
            state = "stopping"
        elif not e.state.running:
            state = "starting"
        else:
            state = "paused" if reasons else "running"
        return {
            "pipeline": e.name,
            "time": time.time(),
            "state": state,
            "ready": not_ready is None,
            "not_ready": not_ready,
            "totals": {
                "in": s.records_in,
                "out": s.records_out,
                "failed": s.records_failed,
                "shed": s.records_shed,
                "batches": s.batches,
                "batched_records": s.batched_records,
            },
            "latency": {
                "p50": _number(s.latency.percentile(50)),
                "p99": _number(s.latency.percentile(99)),
            },
            "in_flight": {
                "records": flow.count,
                "bytes": flow.bytes,
                "max_records": flow.max_records,
            },
            "paused": reasons,
            "paused_partitions": int(next(_samples(e.metrics.paused_partitions), ({}, 0))[1]),
            "lag": self._lag(),
            "model": self._model(),
            "dead_letters": [
                {"stage": stage, "error_type": error_type, "count": n}
                for (stage, error_type), n in sorted(s.failed_by.items())
            ],
            "shed": [
                {"reason": labels["reason"], "priority": labels["priority"], "count": int(n)}
                for labels, n in _samples(e.metrics.records_shed, "_total")
            ],
            "windows": self._windows(),
            "written": dict(s.written),
            "alerts": list(s.recent_alerts),
        }

    def _lag(self) -> list[dict[str, Any]]:
        m = self.engine.metrics
        seconds = {
            (labels["topic"], labels["partition"]): v for labels, v in _samples(m.lag_seconds)
        }
        return [
            {
                "topic": labels["topic"],
                "partition": int(labels["partition"]),
                "records": int(records),
                "seconds": seconds.get((labels["topic"], labels["partition"]), 0.0),
            }
            for labels, records in _samples(m.lag_records)
        ]

    def _model(self) -> dict[str, Any]:
        e = self.engine
        ref = model_ref(e.model)
        out: dict[str, Any] = {
            "name": ref.name,
            "version": ref.version,
            "sha256": ref.sha256,
            "updates": {
                labels["outcome"]: int(n)
                for labels, n in _samples(e.metrics.model_updates, "_total")
            },
            "history": [],
            "canary": None,
            "shadow": None,
        }
        rollout = e.rollout
        if rollout is None:
            return out
        out["history"] = [
            {"at": ev.at, "outcome": ev.outcome, "version": ev.version, "detail": ev.detail}
            for ev in rollout.manager.events
        ]
        if rollout.canary is not None:
            candidate = rollout.canary.candidate.serving
            out["canary"] = {
                "fraction": rollout.canary.fraction,
                "version": model_ref(candidate).version if candidate is not None else None,
            }
        if rollout.shadow is not None:
            candidate = rollout.shadow.candidate.serving
            outcomes = {
                labels["outcome"]: int(n)
                for labels, n in _samples(e.metrics.shadow_records, "_total")
            }
            compared = outcomes.get("agree", 0) + outcomes.get("disagree", 0)
            out["shadow"] = {
                "version": model_ref(candidate).version if candidate is not None else None,
                "records": outcomes,
                "agreement": outcomes.get("agree", 0) / compared if compared else None,
            }
        return out

    def _windows(self) -> dict[str, Any] | None:
        e = self.engine
        if e.windows is None:
            return None
        m = e.metrics
        watermark = next(_samples(m.watermark), ({}, 0.0))[1]
        return {
            "watermark": watermark or None,
            "open": int(next(_samples(m.windows_open), ({}, 0.0))[1]),
            "closed": int(next(_samples(m.windows_closed, "_total"), ({}, 0.0))[1]),
        }
