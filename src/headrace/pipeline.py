"""The Python API: build a pipeline in code, or from a YAML configuration.

>>> from headrace import Pipeline, CallableModel, GeneratorSource, NullSink
>>> summary = (
...     Pipeline("example")
...     .source(GeneratorSource(rate=0, count=1000))
...     .model(CallableModel(lambda xs: [len(x["features"]) for x in xs], name="width"))
...     .sink(NullSink())
...     .run(install_signal_handlers=False)
... )
>>> summary.records_out
1000
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

from headrace import config as cfg
from headrace.connectors.base import Sink, Source
from headrace.models.base import Model
from headrace.models.featurizer import Featurizer
from headrace.observe.http import MetricsServer
from headrace.observe.metrics import PipelineMetrics
from headrace.runtime.decode import JsonDecoder
from headrace.runtime.delivery import Delivery
from headrace.runtime.engine import Engine, EngineSettings, RunSummary, SinkBinding
from headrace.runtime.manager import ModelManager, ModelSource, Probation
from headrace.runtime.priority import Priorities, ShedPolicy
from headrace.runtime.rollout import Canary, Rollout, Shadow
from headrace.runtime.scoring import FailurePolicy
from headrace.windows.changelog import Changelog
from headrace.windows.operator import WindowOperator
from headrace.windows.stage import WindowStage

log = logging.getLogger("headrace")


class Pipeline:
    """Builds an :class:`~headrace.runtime.engine.Engine` step by step.

    Each method returns the pipeline, so calls chain. ``run()`` runs it to completion in a
    new event loop; ``await pipeline.run_async()`` inside one.
    """

    def __init__(self, name: str = "pipeline") -> None:
        self.name = name
        self._source: Source | None = None
        self._model: Model | None = None
        self._featurizer: Featurizer | None = None
        self._decoder: JsonDecoder | None = None
        self._sinks: list[SinkBinding] = []
        self._dead_letter: Sink | None = None
        self._settings = EngineSettings()
        self._metrics_at: tuple[str, int] | None = None
        self._delivery: Delivery | None = None
        self._priorities: Priorities | None = None
        self._shedding: tuple[ShedPolicy, Sink] | None = None
        self._failures: FailurePolicy | None = None
        self._model_source: tuple[ModelSource, float, Probation | None] | None = None
        self._canary: tuple[ModelSource, float] | None = None
        self._shadow: tuple[ModelSource, Sink, float, int, float] | None = None
        self._admin_token: str | None = None
        self._windows: WindowStage | None = None
        self._late_sink: Sink | None = None

    def source(self, source: Source, *, decoder: JsonDecoder | None = None) -> Pipeline:
        self._source = source
        self._decoder = decoder
        return self

    def model(self, model: Model, *, featurizer: Featurizer | None = None) -> Pipeline:
        self._model = model
        self._featurizer = featurizer
        return self

    def model_source(
        self,
        source: ModelSource,
        *,
        featurizer: Featurizer | None = None,
        poll_interval: float = 10.0,
        probation: Probation | None = None,
    ) -> Pipeline:
        """Serve the version ``source`` points at (a registry alias), and swap to a new
        one live when it moves; see :class:`~headrace.runtime.manager.ModelManager`."""
        self._model_source = (source, poll_interval, probation)
        self._featurizer = featurizer
        return self

    def canary(self, source: ModelSource, fraction: float) -> Pipeline:
        """Score ``fraction`` of keys (stable by key hash) with ``source``'s version."""
        self._canary = (source, fraction)
        return self

    def shadow(
        self,
        source: ModelSource,
        sink: Sink,
        *,
        tolerance: float = 1e-6,
        max_batches_in_flight: int = 1,
        timeout: float = 30.0,
    ) -> Pipeline:
        """Also score batches with ``source``'s version, off the critical path, into
        ``sink``; agreement with the serving version goes to the metrics."""
        self._shadow = (source, sink, tolerance, max_batches_in_flight, timeout)
        return self

    def admin(self, token: str | None) -> Pipeline:
        """Enable admin calls on the metrics server for requests bearing ``token``."""
        self._admin_token = token
        return self

    def sink(
        self, sink: Sink, *, above: float | None = None, below: float | None = None
    ) -> Pipeline:
        """Add a sink; with ``above``/``below`` it takes only outputs past that threshold."""
        keep = threshold(above, below) if above is not None or below is not None else None
        self._sinks.append(SinkBinding(sink, keep))
        return self

    def dead_letter(self, sink: Sink) -> Pipeline:
        """Where records that fail decoding, featurizing or the model go, with the error."""
        self._dead_letter = sink
        return self

    def windows(
        self,
        operator: WindowOperator,
        *,
        changelog: Changelog | None = None,
        topic: str | None = None,
        late: Sink | None = None,
    ) -> Pipeline:
        """Score windows of events instead of events: ``operator`` says which windows and
        features; its closed windows are what the model gets. State goes to ``changelog``
        (kept in memory only if none); records no window takes go to ``late`` (the dead-letter
        sink if not given). One input ``topic`` (the source's, if not given)."""
        self._windows = WindowStage(operator, topic=topic, changelog=changelog)
        self._late_sink = late
        return self

    def priorities(self, priorities: Priorities) -> Pipeline:
        """Score records of higher priority first when batches are assembled."""
        self._priorities = priorities
        return self

    def shedding(self, policy: ShedPolicy, sink: Sink) -> Pipeline:
        """Shed records under ``policy`` instead of scoring them; each goes to ``sink``
        with its reason. Without priorities, use lane 1 in ``policy.lanes``."""
        self._shedding = (policy, sink)
        return self

    def failures(self, policy: FailurePolicy) -> Pipeline:
        """Retries, model timeout and circuit-breaker backoff."""
        self._failures = policy
        return self

    def flow(
        self,
        *,
        max_in_flight: int = 10_000,
        max_bytes: int | None = 64 << 20,
        resume_at: float = 0.5,
    ) -> Pipeline:
        """Pause reading at ``max_in_flight`` records or ``max_bytes`` in flight; resume
        below ``resume_at`` of both."""
        self._settings = dataclasses.replace(
            self._settings,
            max_in_flight=max_in_flight,
            max_in_flight_bytes=max_bytes,
            resume_at=resume_at,
        )
        return self

    def delivery(self, delivery: Delivery) -> Pipeline:
        """How positions are committed; at-least-once unless told otherwise."""
        self._delivery = delivery
        return self

    def settings(self, settings: EngineSettings) -> Pipeline:
        self._settings = settings
        return self

    def batching(
        self, *, max_size: int = 256, max_wait: float = 0.01, max_concurrency: int = 2
    ) -> Pipeline:
        self._settings = dataclasses.replace(
            self._settings,
            max_batch_size=max_size,
            max_wait=max_wait,
            max_concurrency=max_concurrency,
        )
        return self

    def metrics(self, *, port: int = 9108, host: str = "127.0.0.1") -> Pipeline:
        """Serve /metrics and /health on ``host:port`` while running."""
        self._metrics_at = (host, port)
        return self

    def build(self) -> Engine:
        if self._source is None:
            raise ValueError("the pipeline has no source: call .source(...)")
        if self._model is None and self._model_source is None:
            raise ValueError("the pipeline has no model: call .model(...) or .model_source(...)")
        metrics = PipelineMetrics()
        rollout = self._rollout(metrics)
        return Engine(
            source=self._source,
            model=self._model,
            rollout=rollout,
            metrics=metrics,
            featurizer=self._featurizer,
            decoder=self._decoder,
            sinks=self._sinks,
            dead_letter=self._dead_letter,
            settings=self._settings,
            delivery=self._delivery,
            priorities=self._priorities,
            shedding=self._shedding[0] if self._shedding else None,
            shed_sink=self._shedding[1] if self._shedding else None,
            failures=self._failures,
            windows=self._windows,
            late_sink=self._late_sink,
            name=self.name,
        )

    def _rollout(self, metrics: PipelineMetrics) -> Rollout | None:
        if self._model_source is None:
            if self._canary or self._shadow:
                raise ValueError("a canary or shadow needs .model_source(...), not .model(...)")
            return None
        source, poll_interval, probation = self._model_source
        manager = ModelManager(
            source, poll_interval=poll_interval, probation=probation, metrics=metrics
        )

        def candidate(src: ModelSource) -> ModelManager:
            # Candidates follow their own reference; they are not on probation: they do
            # not serve the main output.
            return ModelManager(
                src, poll_interval=poll_interval, probation=Probation(seconds=0), metrics=metrics
            )

        canary = None
        if self._canary is not None:
            canary = Canary(candidate(self._canary[0]), self._canary[1])
        shadow = None
        if self._shadow is not None:
            src, sink, tolerance, limit, timeout = self._shadow
            shared = (
                canary.candidate if canary and str(src) == str(canary.candidate.source) else None
            )
            shadow = Shadow(shared or candidate(src), sink, tolerance, limit, timeout)
        return Rollout(manager, metrics=metrics, canary=canary, shadow=shadow)

    async def run_async(
        self,
        *,
        install_signal_handlers: bool = True,
        on_start: Callable[[Engine], Any] | None = None,
    ) -> RunSummary:
        engine = self.build()
        return await run_engine(
            engine,
            metrics_at=self._metrics_at,
            admin_token=self._admin_token,
            install_signal_handlers=install_signal_handlers,
            on_start=on_start,
        )

    def run(self, *, install_signal_handlers: bool = True) -> RunSummary:
        return asyncio.run(self.run_async(install_signal_handlers=install_signal_handlers))

    # -- from configuration ------------------------------------------------------------

    @classmethod
    def from_config(cls, config: cfg.PipelineConfig) -> Pipeline:
        """The pipeline a validated configuration describes (models are loaded here)."""
        from headrace.build import configure

        return configure(cls(config.name), config)

    @classmethod
    def from_yaml(cls, path: str | Path) -> Pipeline:
        return cls.from_config(cfg.load_config(path))


async def run_engine(
    engine: Engine,
    *,
    metrics_at: tuple[str, int] | None = None,
    admin_token: str | None = None,
    install_signal_handlers: bool = True,
    on_start: Callable[[Engine], Any] | None = None,
) -> RunSummary:
    """Run an engine with its metrics endpoint and SIGTERM/SIGINT handling."""
    loop = asyncio.get_running_loop()
    server = None
    if metrics_at is not None:
        server = MetricsServer(
            engine.metrics.registry,
            host=metrics_at[0],
            port=metrics_at[1],
            healthy=lambda: engine.healthy,
            admin_token=admin_token,
            admin={"/admin/models/check": engine.check_models},
        )
        await server.start()
        log.info("metrics on http://%s:%d/metrics", server.host, server.port)
    signals = (signal.SIGTERM, signal.SIGINT)
    if install_signal_handlers:
        for sig in signals:
            loop.add_signal_handler(sig, _on_signal, engine)
    try:
        if on_start is not None:
            on_start(engine)
        return await engine.run()
    finally:
        if install_signal_handlers:
            for sig in signals:
                loop.remove_signal_handler(sig)
        if server is not None:
            await server.stop()


def _on_signal(engine: Engine) -> None:
    if engine.stopping:
        # A second signal: the user wants out now. Nothing uncommitted is lost; it is read
        # again on the next start.
        log.warning("second signal: exiting without finishing in-flight records")
        os._exit(130)
    engine.stop()


def threshold(above: float | None, below: float | None) -> Callable[[Any], bool]:
    """A predicate on scalar predictions: strictly above and/or strictly below."""
    lo = float("-inf") if above is None else above
    hi = float("inf") if below is None else below

    def keep(prediction: Any) -> bool:
        if isinstance(prediction, bool) or not isinstance(prediction, int | float):
            raise TypeError(
                "a sink filter compares scalar predictions, but the model returned "
                f"{type(prediction).__name__}"
            )
        return lo < prediction < hi

    return keep


__all__ = ["Pipeline", "run_engine", "threshold"]
