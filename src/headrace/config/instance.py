"""A Kafka source's instance id (static membership, KIP-345): where it comes from, and the
checks it gets.

``source.instance_id`` comes from the file (where ``${NAME}`` works as in any string),
else from the environment variable ``HEADRACE_INSTANCE_ID``, else there is none: dynamic
membership. From either place, ``hostname`` stands for the machine's name, which a
Kubernetes StatefulSet keeps stable across restarts of a pod. The id in effect replaces
the key's value in the loaded configuration: the build and the source see one value,
checked once, here, with the file's name in any error.
"""

from __future__ import annotations

import socket
from collections.abc import Mapping
from dataclasses import dataclass

import msgspec

from headrace.config.base import ConfigError
from headrace.config.components import KafkaSourceConfig
from headrace.config.schema import PipelineConfig
from headrace.connectors.kafka_ids import INSTANCE_ID_RULE, instance_id_problem

#: The environment variable that gives the id when the file does not.
INSTANCE_ID_ENV = "HEADRACE_INSTANCE_ID"
#: Set by ``headrace run --workers N`` for each worker: its index, appended to the id
#: (the machine's name when none is given), so that every worker has its own.
WORKER_ENV = "HEADRACE_WORKER"
#: The value that stands for the machine's hostname.
HOSTNAME = "hostname"


@dataclass(frozen=True, kw_only=True)
class _Given:
    """An instance id as given, and how an error names where it came from."""

    value: str
    where: str


def resolve_instance_id(
    config: PipelineConfig, env: Mapping[str, str], origin: str
) -> PipelineConfig:
    """``config`` with its Kafka source's ``instance_id`` set to the id in effect (or
    ``None``), checked against Kafka's rule and the librdkafka settings."""
    src = config.source
    if not isinstance(src, KafkaSourceConfig):
        return config
    given = _given(src, env)
    worker = env.get(WORKER_ENV)
    if worker is not None:
        given = _hostname(given or _Given(value=HOSTNAME, where=""))
        given = _Given(value=f"{given.value}-{worker}", where=f"{given.where}worker {worker}: ")
    if given is None:
        return config
    given = _hostname(given)
    problem = instance_id_problem(given.value)
    if problem is not None:
        raise ConfigError(
            f"{origin}: at source.instance_id: {given.where}{_shown(given.value)} {problem}; "
            f"{INSTANCE_ID_RULE}"
        )
    _check_passthrough(config, given, origin)
    source = msgspec.structs.replace(src, instance_id=given.value)
    return msgspec.structs.replace(config, source=source)


def _given(src: KafkaSourceConfig, env: Mapping[str, str]) -> _Given | None:
    if src.instance_id is not None:
        return _Given(value=src.instance_id, where="")
    if INSTANCE_ID_ENV in env:
        return _Given(value=env[INSTANCE_ID_ENV], where=f"environment variable {INSTANCE_ID_ENV}: ")
    return None


def _hostname(given: _Given) -> _Given:
    if given.value != HOSTNAME:
        return given
    where = f"{given.where}{HOSTNAME}: this machine's name "
    return _Given(value=socket.gethostname(), where=where)


def _check_passthrough(config: PipelineConfig, given: _Given, origin: str) -> None:
    """The same id in the librdkafka settings is harmless; another one is ambiguous."""
    k = config.kafka
    sections = {"settings": k.settings, "consumer": k.consumer} if k is not None else {}
    for section, settings in sections.items():
        other = settings.get("group.instance.id")
        if other is not None and str(other) != given.value:
            raise ConfigError(
                f"{origin}: at source.instance_id: {given.where}{_shown(given.value)} differs from "
                f"kafka.{section}.group.instance.id {str(other)!r}; set the id in one place "
                "(source.instance_id)"
            )


def _shown(value: str) -> str:
    """The id for an error line: an id too long for Kafka is too long to print whole."""
    return repr(value) if len(value) <= 60 else f"{value[:40]!r}..."
