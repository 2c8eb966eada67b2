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

This module is the top of building: it offers both ways in, the builder
(:mod:`headrace.builder`) and a configuration (:mod:`headrace.build`, which drives the
builder), and nothing below imports it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Self

from headrace.build import configure, located
from headrace.builder import PipelineBuilder, run_engine, threshold
from headrace.config import PipelineConfig, load_config


class Pipeline(PipelineBuilder):
    """Builds an :class:`~headrace.runtime.engine.Engine` step by step (the methods of
    :class:`~headrace.builder.PipelineBuilder`), or from a configuration.

    Each method returns the pipeline, so calls chain. ``run()`` runs it to completion in a
    new event loop; ``await pipeline.run_async()`` inside one.
    """

    @classmethod
    def from_config(cls, config: PipelineConfig, *, path: str | Path | None = None) -> Self:
        """The pipeline a validated configuration describes (models are loaded here).

        ``path`` is the YAML file the configuration came from, if any: a ``callable``
        model's module is looked up in its directory first (then in the current directory,
        then on ``sys.path``), and the errors raised name it.
        """
        with located(path):
            return configure(cls(config.name), config, path=path)

    @classmethod
    def from_yaml(cls, path: str | Path) -> Self:
        return cls.from_config(load_config(path), path=path)


__all__ = ["Pipeline", "run_engine", "threshold"]
