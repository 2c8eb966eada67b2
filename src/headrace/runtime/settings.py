"""How the engine batches, bounds and commits (values from :mod:`headrace.defaults`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from headrace import defaults


@dataclass(frozen=True)
class EngineSettings:
    """How the engine batches, bounds and commits. Times are in seconds.

    ``commit_interval``: how often finished positions are committed (0: as soon as
    anything finished, one commit at a time); ``None``: the source's own
    (:attr:`~headrace.connectors.base.Source.commit_interval`: 1 s, MQTT 0.1 s).
    ``window_tick``: how often time alone may close windows (idle partitions);
    ``commit_point_timeout``: how long a windowed periodic commit waits for a commit point
    before trying again later. ``commit_as_acknowledged``: at-least-once from a
    partitioned source into sinks that all acknowledge (Kafka), commit each position as
    soon as its outputs are acknowledged, without waiting, instead of every
    ``commit_interval``; ``max_uncommitted`` then bounds the records written and not yet
    committed (``None``: no bound). ``read_back``: at-least-once into Kafka topics only,
    how many of the last records of each output partition a worker reads back on
    assignment, to pass over what a crashed worker wrote and did not commit (0: none;
    see :mod:`headrace.connectors.kafka.recovery`). ``model_calls``: where a model that is not a
    coroutine is called, ``"thread"`` (an inference thread), ``"loop"`` (on the event
    loop: no thread hand-off, and no timeout; see :class:`~headrace.runtime.scoring.ModelCaller`)
    or ``"process"`` (``max_concurrency`` processes of its own, for a model that holds the
    GIL; see :mod:`headrace.runtime.processes`).
    """

    max_batch_size: int = defaults.MAX_BATCH_SIZE
    max_wait: float = defaults.MAX_WAIT
    max_concurrency: int = defaults.MAX_CONCURRENCY
    model_calls: Literal["thread", "loop", "process"] = defaults.MODEL_CALLS
    max_in_flight: int = defaults.MAX_IN_FLIGHT
    max_in_flight_bytes: int | None = defaults.MAX_IN_FLIGHT_BYTES
    resume_at: float = defaults.RESUME_AT
    commit_interval: float | None = None
    commit_as_acknowledged: bool = defaults.COMMIT_AS_ACKNOWLEDGED
    max_uncommitted: int | None = defaults.MAX_UNCOMMITTED
    read_back: int = defaults.READ_BACK
    shutdown_timeout: float = defaults.SHUTDOWN_TIMEOUT
    revoke_timeout: float = defaults.REVOKE_TIMEOUT
    window_tick: float = defaults.WINDOW_TICK
    commit_point_timeout: float = defaults.COMMIT_POINT_TIMEOUT

    def __post_init__(self) -> None:
        if self.model_calls not in ("thread", "loop", "process"):
            raise ValueError(
                f"model_calls must be 'thread', 'loop' or 'process', got {self.model_calls!r}"
            )
        if self.read_back < 0:
            raise ValueError(f"read_back must be 0 or more, got {self.read_back}")
