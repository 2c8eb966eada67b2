"""The pipeline spec: everything an engine is made of, as one frozen value.

Building goes one way. A YAML configuration (:mod:`headrace.config`) is turned by
:mod:`headrace.build` into calls on the Python builder (:mod:`headrace.builder`); the
builder edits a :class:`PipelineSpec`; the :class:`~headrace.runtime.engine.Engine` takes
it. Each of these imports only the ones after it, so a new setting is added in one place
per layer, and the spec is the one form every way of building ends in.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from headrace import defaults
from headrace.connectors.base import Sink, Source
from headrace.enrich.lookup import Lookup
from headrace.models.base import Model
from headrace.models.featurizer import Featurizer
from headrace.observe.metrics import PipelineMetrics
from headrace.runtime.decode import JsonDecoder
from headrace.runtime.delivery import Delivery
from headrace.runtime.outputs import SinkBinding
from headrace.runtime.priority import Priorities, ShedPolicy
from headrace.runtime.rollout import Rollout
from headrace.runtime.scoring import FailurePolicy
from headrace.runtime.settings import EngineSettings
from headrace.windows.stage import WindowStage


@dataclass(frozen=True, kw_only=True)
class PipelineSpec:
    """What an :class:`~headrace.runtime.engine.Engine` is made of: one field per argument
    of its constructor, with the same meaning. Edit a copy with
    :func:`dataclasses.replace`.

    ``source`` is ``None`` only while a builder is being filled in; the engine refuses
    it. ``model`` and ``rollout`` are exclusive: one fixed model, or versions
    from a model source.
    """

    source: Source | None = None
    model: Model | None = None
    sinks: tuple[Sink | SinkBinding, ...] = ()
    featurizer: Featurizer | None = None
    decoder: JsonDecoder | None = None
    dead_letter: Sink | None = None
    settings: EngineSettings = field(default_factory=EngineSettings)
    metrics: PipelineMetrics | None = None
    delivery: Delivery | None = None
    priorities: Priorities | None = None
    shedding: ShedPolicy | None = None
    shed_sink: Sink | None = None
    failures: FailurePolicy | None = None
    rollout: Rollout | None = None
    windows: WindowStage | None = None
    late_sink: Sink | None = None
    lookups: tuple[Lookup, ...] = ()
    name: str = defaults.NAME

    def checked(self) -> Source:
        """Refuse a combination that cannot run, saying what to change; the source."""
        if self.source is None:
            raise ValueError("the pipeline has no source")
        if not self.sinks:
            raise ValueError("a pipeline needs at least one sink")
        if (self.model is None) == (self.rollout is None):
            raise ValueError("give a model, or a rollout that manages versions, not both")
        if self.shedding is not None and self.shed_sink is None:
            raise ValueError("a shedding policy needs a shed sink to write shed records to")
        if self.windows is not None and (self.priorities is not None or self.shedding is not None):
            raise ValueError(
                "priorities and shedding apply to events, not to windows: a windowed "
                "pipeline takes neither"
            )
        if self.windows is not None and self.lookups:
            raise ValueError(
                "lookups (enrich) apply to events, not to windows: a windowed pipeline takes none"
            )
        names = [lk.name for lk in self.lookups]
        intos = [lk.into or lk.name for lk in self.lookups]
        for what, seen in (("name", names), ("into", intos)):
            if len(set(seen)) != len(seen):
                raise ValueError(f"two lookups have the same {what}")
        return self.source


__all__ = ["PipelineSpec"]
