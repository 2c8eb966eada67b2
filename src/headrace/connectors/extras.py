"""The error of a connector whose client library, an optional extra, is not installed.

The Kafka, MQTT and PostgreSQL connectors each need a client library that a plain
``pip install headrace`` leaves out. Each package imports its library first thing, so that
a missing one is one line that names the extra to install (what the CLI prints), rather
than a traceback from inside a connect call once the pipeline has started. This module
imports none of them: ``import headrace`` must work without every extra.
"""

from __future__ import annotations

from headrace.errors import HeadraceError


class MissingExtraError(HeadraceError, ModuleNotFoundError):
    """A connector's client library is not installed (``name``: the module that could not
    be imported). Still a :class:`ModuleNotFoundError`: ``except ImportError`` catches it.
    ``part`` says what needs it: a ``connector``, or a ``model type`` (XGBoost, LightGBM).

    >>> str(MissingExtraError("Kafka", "confluent-kafka", "kafka", name="confluent_kafka"))
    "the Kafka connector needs confluent-kafka: pip install 'headrace[kafka]'"
    """

    def __init__(
        self, connector: str, package: str, extra: str, *, name: str, part: str = "connector"
    ) -> None:
        super().__init__(
            f"the {connector} {part} needs {package}: pip install 'headrace[{extra}]'",
            name=name,
        )
        self.extra = extra
