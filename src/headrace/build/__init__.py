"""From a validated configuration to the objects of a pipeline: sources, models, sinks,
and the delivery guarantee that ties them together.

Building goes one way: :mod:`~headrace.build.assemble` drives the Python builder
(:mod:`headrace.builder`) with what :mod:`~headrace.build.connectors`,
:mod:`~headrace.build.models`, :mod:`~headrace.build.windows` and
:mod:`~headrace.build.enrich` make from their
sections. Import from here: the split is not part of the API.
"""

from headrace.build.assemble import (
    build_failure_policy,
    build_priorities,
    build_settings,
    build_shed_policy,
    configure,
)
from headrace.build.connectors import (
    SINKS,
    SOURCES,
    KafkaParts,
    SinkUse,
    build_delivery,
    build_sink,
    build_source,
)
from headrace.build.enrich import build_lookup, build_lookups
from headrace.build.models import (
    build_featurizer,
    build_model,
    check_model,
    import_function,
    located,
    module_search_path,
    registry_source,
)
from headrace.build.windows import build_aggregator, build_assigner, build_changelog, build_operator

__all__ = [
    "SINKS",
    "SOURCES",
    "KafkaParts",
    "SinkUse",
    "build_aggregator",
    "build_assigner",
    "build_changelog",
    "build_delivery",
    "build_failure_policy",
    "build_featurizer",
    "build_lookup",
    "build_lookups",
    "build_model",
    "build_operator",
    "build_priorities",
    "build_settings",
    "build_shed_policy",
    "build_sink",
    "build_source",
    "check_model",
    "configure",
    "import_function",
    "located",
    "module_search_path",
    "registry_source",
]
