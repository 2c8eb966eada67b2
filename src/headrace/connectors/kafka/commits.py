"""Offset commits sent without waiting, at most one in flight per partition.

The engine hands positions over on the event loop (:meth:`SoonCommits.add`); the consumer's
poll thread sends them between two polls (:meth:`SoonCommits.take`) and hears back in
librdkafka's commit callback, during a later poll (:meth:`SoonCommits.done`). Holding one
commit per partition in flight keeps them in order: an older position can never land
after a newer one. A commit that fails, or whose answer never comes (the partition moved
in a rebalance), only leaves the partition where it was: the next one covers it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Collection, Mapping
from typing import Any

from headrace.connectors.base import PartitionKey

#: A commit unanswered for this long is taken as lost (its partition was revoked, the
#: coordinator moved): the partition may be committed again.
IN_FLIGHT_LIMIT = 10.0


class SoonCommits:
    """Positions waiting to be sent, and those sent and not yet answered.

    >>> c = SoonCommits()
    >>> c.add({("t", 0): 5})
    >>> c.take({("t", 0)}, now=0.0)
    ({('t', 0): 5}, [])
    >>> c.add({("t", 0): 9})
    >>> c.take({("t", 0)}, now=1.0)  # 5 is still in flight: 9 waits
    ({}, [])
    >>> c.done([("t", 0, 5, True)])
    ({('t', 0): 5}, [])
    >>> c.take({("t", 0)}, now=2.0)
    ({('t', 0): 9}, [])
    >>> c.take({("t", 0)}, now=99.0)  # unanswered for too long: lost
    ({}, [('t', 0)])
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()  # add() on the event loop, the rest in the poll thread
        self._waiting: dict[PartitionKey, int] = {}
        self._in_flight: dict[PartitionKey, tuple[int, float]] = {}
        # The highest position handed over per partition (sent or not): records read past
        # it will be committed soon, which is what the poll thread listens for.
        self._handed: dict[PartitionKey, int] = {}
        self._used = False  # whether anything was ever handed over: the engine commits here

    def add(self, positions: Mapping[PartitionKey, int]) -> None:
        """Positions to commit: each replaces one of its partition still waiting."""
        with self._lock:
            self._waiting.update(positions)
            self._used = True
            handed = self._handed
            for key, position in positions.items():
                if position > handed.get(key, -1):
                    handed[key] = position

    @property
    def busy(self) -> bool:
        """Whether anything waits to be sent or answered."""
        return bool(self._waiting or self._in_flight)

    def expecting(self, following: Mapping[PartitionKey, int], at_least: int = 1) -> bool:
        """Whether positions are on their way: commits were handed over before (the engine
        commits as it goes) and at least ``at_least`` records were read past the last
        positions handed over, or a partition never handed over was read
        (``following``: the offset after the last record read, per partition).

        >>> c = SoonCommits()
        >>> c.add({("t", 0): 100})
        >>> c.expecting({("t", 0): 150}, at_least=100), c.expecting({("t", 0): 200}, 100)
        (False, True)
        >>> c.expecting({("t", 0): 150, ("t", 1): 5}, at_least=100)  # never handed over
        True
        """
        if not self._used:
            return False
        handed = self._handed
        ahead = 0
        for key, end in list(following.items()):
            before = handed.get(key)
            if before is None:
                return True
            ahead += max(0, end - before)
            if ahead >= at_least:
                return True
        return False

    def take(
        self, assigned: Collection[PartitionKey], *, now: float | None = None
    ) -> tuple[dict[PartitionKey, int], list[PartitionKey]]:
        """What to send now: the waiting positions of ``assigned`` partitions with no
        commit in flight (waiting positions of partitions no longer assigned are dropped:
        their new owner commits them); and the partitions whose commit in flight went
        unanswered too long (taken as lost)."""
        now = time.monotonic() if now is None else now
        in_flight = self._in_flight
        lost = [key for key, (_, sent) in in_flight.items() if now - sent > IN_FLIGHT_LIMIT]
        for key in lost:
            del in_flight[key]
        out: dict[PartitionKey, int] = {}
        with self._lock:
            waiting = self._waiting
            for key in list(waiting):
                if key not in assigned:
                    del waiting[key]
                elif key not in in_flight:
                    out[key] = waiting.pop(key)
        for key, offset in out.items():
            in_flight[key] = (offset, now)
        return out, lost

    def done(
        self, answers: list[tuple[str, int, int, bool]]
    ) -> tuple[dict[PartitionKey, int], list[PartitionKey]]:
        """The broker answered ``(topic, partition, offset, ok)``: the positions it
        confirmed (for commits sent here or elsewhere, e.g. synchronously), and the
        partitions whose commit failed."""
        confirmed: dict[PartitionKey, int] = {}
        failed: list[PartitionKey] = []
        in_flight = self._in_flight
        for topic, partition, offset, ok in answers:
            key = (topic, partition)
            sent = in_flight.get(key)
            if sent is not None and sent[0] == offset:
                del in_flight[key]
            if ok:
                confirmed[key] = offset
            else:
                failed.append(key)
        return confirmed, failed

    def forget(self, keys: Collection[PartitionKey]) -> None:
        """Partitions that left this worker: nothing of theirs is sent any more."""
        with self._lock:
            for key in keys:
                self._waiting.pop(key, None)
                self._handed.pop(key, None)
        for key in keys:
            self._in_flight.pop(key, None)


def answers(err: Any, partitions: list[Any]) -> list[tuple[str, int, int, bool]]:
    """librdkafka's commit callback arguments as ``(topic, partition, offset, ok)``."""
    return [(p.topic, p.partition, p.offset, err is None and p.error is None) for p in partitions]
