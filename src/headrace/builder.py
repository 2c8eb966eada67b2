"""The Python builder: a pipeline spec edited step by step, and the run of its engine.

It knows nothing of the YAML configuration: :mod:`headrace.build` drives it from one,
and :class:`headrace.pipeline.Pipeline` adds that way in to it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Literal, Self

from headrace import defaults
from headrace.connectors.base import Sink, Source
from headrace.enrich.lookup import Lookup
from headrace.models.base import Model
from headrace.models.featurizer import Featurizer
from headrace.observe import stacks
from headrace.observe.metrics import PipelineMetrics
from headrace.runtime.decode import JsonDecoder
from headrace.runtime.delivery import Delivery
from headrace.runtime.engine import Engine, EngineSettings, RunSummary, SinkBinding
from headrace.runtime.manager import ModelManager, ModelSource, Probation
from headrace.runtime.operations import Operations
from headrace.runtime.priority import Priorities, ShedPolicy
from headrace.runtime.rollout import Canary, Rollout, Shadow
from headrace.runtime.scoring import FailurePolicy
from headrace.runtime.spec import PipelineSpec
from headrace.windows.changelog import Changelog
from headrace.windows.operator import WindowOperator
from headrace.windows.stage import WindowStage

log = logging.getLogger("headrace")


@dataclass(frozen=True, kw_only=True)
class CanaryPlan:
    """A candidate reference that scores ``fraction`` of keys."""

    source: ModelSource
    fraction: float


@dataclass(frozen=True, kw_only=True)
class ShadowPlan:
    """A candidate reference that scores every batch off the critical path, into ``sink``."""

    source: ModelSource
    sink: Sink
    tolerance: float = defaults.SHADOW_TOLERANCE
    max_batches_in_flight: int = defaults.SHADOW_MAX_BATCHES_IN_FLIGHT
    timeout: float = defaults.SHADOW_TIMEOUT


@dataclass(frozen=True, kw_only=True)
class RolloutPlan:
    """Versions served from a model ``source`` (a registry alias), and the candidates
    scoring beside them. It becomes a :class:`~headrace.runtime.rollout.Rollout` only when
    an engine is built, because its managers report to that engine's metrics."""

    source: ModelSource | None = None
    poll_interval: float = defaults.POLL_INTERVAL
    probation: Probation | None = None
    canary: CanaryPlan | None = None
    shadow: ShadowPlan | None = None

    def rollout(self, metrics: PipelineMetrics) -> Rollout | None:
        """The rollout this plan describes, reporting to ``metrics`` (``None`` with a
        fixed model)."""
        if self.source is None:
            if self.canary or self.shadow:
                raise ValueError("a canary or shadow needs .model_source(...), not .model(...)")
            return None
        manager = ModelManager(
            self.source, poll_interval=self.poll_interval, probation=self.probation, metrics=metrics
        )

        def candidate(src: ModelSource) -> ModelManager:
            # Candidates follow their own reference; they are not on probation: they do
            # not serve the main output.
            return ModelManager(
                src,
                poll_interval=self.poll_interval,
                probation=Probation(seconds=0),
                metrics=metrics,
            )

        canary = None
        if self.canary is not None:
            canary = Canary(candidate(self.canary.source), self.canary.fraction)
        shadow = None
        if (sh := self.shadow) is not None:
            shared = (
                canary.candidate
                if canary and str(sh.source) == str(canary.candidate.source)
                else None
            )
            shadow = Shadow(
                shared or candidate(sh.source),
                sh.sink,
                sh.tolerance,
                sh.max_batches_in_flight,
                sh.timeout,
            )
        return Rollout(manager, metrics=metrics, canary=canary, shadow=shadow)


class PipelineBuilder:
    """Builds an :class:`~headrace.runtime.engine.Engine` step by step, by editing a
    :class:`~headrace.runtime.spec.PipelineSpec` (see :attr:`spec`).

    Each method returns the builder, so calls chain. ``run()`` runs it to completion in a
    new event loop; ``await builder.run_async()`` inside one.

    >>> from headrace.models.base import CallableModel
    >>> from headrace.testing import TestingSink, TestingSource
    >>> sink = TestingSink()
    >>> summary = (
    ...     PipelineBuilder("double")
    ...     .source(TestingSource([{"x": 1}, {"x": 2}]))
    ...     .model(CallableModel(lambda xs: [x["x"] * 2 for x in xs], name="double"))
    ...     .sink(sink)
    ...     .batching(max_size=64, max_wait=0.005)
    ...     .run(install_signal_handlers=False)
    ... )
    >>> summary.records_out, sink.predictions
    (2, [2, 4])
    """

    def __init__(self, name: str = defaults.NAME) -> None:
        self._spec = PipelineSpec(name=name)
        self._rollout = RolloutPlan()
        # How the engine is served, not what it is made of.
        self._metrics_at: tuple[str, int] | None = None
        self._admin_token: str | None = None

    @property
    def spec(self) -> PipelineSpec:
        """What the engine is built from, so far."""
        return self._spec

    @property
    def rollout_plan(self) -> RolloutPlan:
        """The model source and candidates given so far (empty with a fixed model)."""
        return self._rollout

    @property
    def name(self) -> str:
        """The pipeline's name, in its log lines and metrics."""
        return self._spec.name

    @name.setter
    def name(self, name: str) -> None:
        self._spec = replace(self._spec, name=name)

    def source(self, source: Source, *, decoder: JsonDecoder | None = None) -> Self:
        """Read from ``source``; ``decoder`` decodes what it delivers as bytes (JSON,
        with the default limits, if not given)."""
        self._spec = replace(self._spec, source=source, decoder=decoder)
        return self

    def model(self, model: Model, *, featurizer: Featurizer | None = None) -> Self:
        """Score with ``model`` (one fixed version; see :meth:`model_source` for live
        updates); ``featurizer`` turns each batch's values into the model's input matrix,
        else the model receives the list of values."""
        self._spec = replace(self._spec, model=model, featurizer=featurizer)
        return self

    def model_source(
        self,
        source: ModelSource,
        *,
        featurizer: Featurizer | None = None,
        poll_interval: float = defaults.POLL_INTERVAL,
        probation: Probation | None = None,
    ) -> Self:
        """Serve the version ``source`` points at (a registry alias), and swap to a new
        one live when it moves; see :class:`~headrace.runtime.manager.ModelManager`."""
        self._rollout = replace(
            self._rollout, source=source, poll_interval=poll_interval, probation=probation
        )
        self._spec = replace(self._spec, featurizer=featurizer)
        return self

    def canary(self, source: ModelSource, fraction: float) -> Self:
        """Score ``fraction`` of keys (stable by key hash) with ``source``'s version."""
        self._rollout = replace(self._rollout, canary=CanaryPlan(source=source, fraction=fraction))
        return self

    def shadow(
        self,
        source: ModelSource,
        sink: Sink,
        *,
        tolerance: float = defaults.SHADOW_TOLERANCE,
        max_batches_in_flight: int = defaults.SHADOW_MAX_BATCHES_IN_FLIGHT,
        timeout: float = defaults.SHADOW_TIMEOUT,
    ) -> Self:
        """Also score batches with ``source``'s version, off the critical path, into
        ``sink``; agreement with the serving version goes to the metrics."""
        plan = ShadowPlan(
            source=source,
            sink=sink,
            tolerance=tolerance,
            max_batches_in_flight=max_batches_in_flight,
            timeout=timeout,
        )
        self._rollout = replace(self._rollout, shadow=plan)
        return self

    def admin(self, token: str | None) -> Self:
        """Enable the admin calls (``POST /admin/...``) on the HTTP server for requests
        bearing ``token``."""
        self._admin_token = token
        return self

    def sink(self, sink: Sink, *, above: float | None = None, below: float | None = None) -> Self:
        """Add a sink; with ``above``/``below`` it takes only outputs past that threshold."""
        keep = threshold(above, below) if above is not None or below is not None else None
        self._spec = replace(self._spec, sinks=(*self._spec.sinks, SinkBinding(sink, keep)))
        return self

    def dead_letter(self, sink: Sink) -> Self:
        """Where records that fail decoding, featurizing or the model go, with the error."""
        self._spec = replace(self._spec, dead_letter=sink)
        return self

    def enrich(self, lookup: Lookup) -> Self:
        """Look values up before the features, once per batch (see
        :class:`~headrace.enrich.lookup.Lookup`); lookups run in the order added."""
        self._spec = replace(self._spec, lookups=(*self._spec.lookups, lookup))
        return self

    def windows(
        self,
        operator: WindowOperator,
        *,
        changelog: Changelog | None = None,
        topic: str | None = None,
        late: Sink | None = None,
    ) -> Self:
        """Score windows of events instead of events: ``operator`` says which windows and
        features; its closed windows are what the model gets. State goes to ``changelog``
        (kept in memory only if none); records no window takes go to ``late`` (the dead-letter
        sink if not given). One input ``topic`` (the source's, if not given)."""
        stage = WindowStage(operator, topic=topic, changelog=changelog)
        self._spec = replace(self._spec, windows=stage, late_sink=late)
        return self

    def priorities(self, priorities: Priorities) -> Self:
        """Score records of higher priority first when batches are assembled."""
        self._spec = replace(self._spec, priorities=priorities)
        return self

    def shedding(self, policy: ShedPolicy, sink: Sink) -> Self:
        """Shed records under ``policy`` instead of scoring them; each goes to ``sink``
        with its reason. Without priorities, use lane 1 in ``policy.lanes``."""
        self._spec = replace(self._spec, shedding=policy, shed_sink=sink)
        return self

    def failures(self, policy: FailurePolicy) -> Self:
        """Retries, model timeout and circuit-breaker backoff."""
        self._spec = replace(self._spec, failures=policy)
        return self

    def flow(
        self,
        *,
        max_in_flight: int = defaults.MAX_IN_FLIGHT,
        max_bytes: int | None = defaults.MAX_IN_FLIGHT_BYTES,
        resume_at: float = defaults.RESUME_AT,
    ) -> Self:
        """Pause reading at ``max_in_flight`` records or ``max_bytes`` in flight; resume
        below ``resume_at`` of both."""
        settings = replace(
            self._spec.settings,
            max_in_flight=max_in_flight,
            max_in_flight_bytes=max_bytes,
            resume_at=resume_at,
        )
        return self.settings(settings)

    def delivery(self, delivery: Delivery) -> Self:
        """How positions are committed; at-least-once unless told otherwise."""
        self._spec = replace(self._spec, delivery=delivery)
        return self

    def settings(self, settings: EngineSettings) -> Self:
        """Every engine setting at once (batching, bounds, commits, timeouts)."""
        self._spec = replace(self._spec, settings=settings)
        return self

    def batching(
        self,
        *,
        max_size: int = defaults.MAX_BATCH_SIZE,
        max_wait: float = defaults.MAX_WAIT,
        max_concurrency: int = defaults.MAX_CONCURRENCY,
        model_calls: Literal["thread", "loop", "process"] = defaults.MODEL_CALLS,
    ) -> Self:
        """A batch fires at ``max_size`` records or ``max_wait`` seconds after its first;
        up to ``max_concurrency`` batches are scored at once; the model is called on an
        inference thread, (``model_calls="loop"``) on the event loop, or
        (``model_calls="process"``) in ``max_concurrency`` processes of its own."""
        settings = replace(
            self._spec.settings,
            max_batch_size=max_size,
            max_wait=max_wait,
            max_concurrency=max_concurrency,
            model_calls=model_calls,
        )
        return self.settings(settings)

    def metrics(
        self, *, port: int = defaults.METRICS_PORT, host: str = defaults.METRICS_HOST
    ) -> Self:
        """Serve the dashboard, /metrics, /health, /ready and /api/status on
        ``host:port`` while running (:mod:`headrace.observe.http`)."""
        self._metrics_at = (host, port)
        return self

    def build(self) -> Engine:
        """The engine, with metrics of its own; raises :class:`ValueError` naming what is
        missing or does not fit together."""
        spec = self._spec
        if spec.source is None:
            raise ValueError("the pipeline has no source: call .source(...)")
        if spec.model is None and self._rollout.source is None:
            raise ValueError("the pipeline has no model: call .model(...) or .model_source(...)")
        # Metrics of its own for each engine: two built from one builder count apart.
        metrics = PipelineMetrics()
        rollout = self._rollout.rollout(metrics)
        return Engine(replace(spec, metrics=metrics, rollout=rollout))

    async def run_async(
        self,
        *,
        install_signal_handlers: bool = True,
        on_start: Callable[[Engine], Any] | None = None,
    ) -> RunSummary:
        """Build and run to the end of the source, or until SIGTERM/SIGINT (a graceful
        stop), in the running event loop; ``on_start`` is called with the engine."""
        engine = self.build()
        return await run_engine(
            engine,
            metrics_at=self._metrics_at,
            admin_token=self._admin_token,
            install_signal_handlers=install_signal_handlers,
            on_start=on_start,
        )

    def run(self, *, install_signal_handlers: bool = True) -> RunSummary:
        """:meth:`run_async` in a new event loop."""
        return asyncio.run(self.run_async(install_signal_handlers=install_signal_handlers))


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
        # Here, not at the top: a run without HTTP does not import aiohttp (observe/api.py).
        from headrace.observe.http import MetricsServer

        server = MetricsServer(
            engine.metrics.registry,
            host=metrics_at[0],
            port=metrics_at[1],
            ops=Operations(engine),
            admin_token=admin_token,
        )
        await server.start()
        engine.served_at = server.url
        log.info("metrics on %smetrics, the dashboard on %s", server.url, server.url)
    signals = (signal.SIGTERM, signal.SIGINT)
    dump: stacks.Previous | None = None
    if install_signal_handlers:
        for sig in signals:
            loop.add_signal_handler(sig, _on_signal, engine)
        dump = stacks.install(loop)
    try:
        if on_start is not None:
            on_start(engine)
        return await engine.run()
    finally:
        if install_signal_handlers:
            for sig in signals:
                loop.remove_signal_handler(sig)
            if dump is not None:
                stacks.uninstall(loop, dump)
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


__all__ = [
    "CanaryPlan",
    "PipelineBuilder",
    "RolloutPlan",
    "ShadowPlan",
    "run_engine",
    "threshold",
]
