"""Event-time watermarks: how far event time has got, so that windows can close.

A partition's watermark is the latest event time it has delivered minus
``allowed_lateness``: events up to that much out of order are still on time. The worker's
watermark is the minimum over its partitions, since any of them may still deliver events
down to its own watermark. It never goes back while the worker keeps its partitions; a
partition assigned to it (a rebalance) that is behind pulls it back, since its events are
on time by its own watermark (windows other partitions closed stay closed: each
partition's state keeps its own horizon).

A partition that has delivered nothing for longer than ``idle_timeout`` (by the clock the
caller passes in as ``now``, so tests control it) stops holding the worker's watermark back:
without that rule one quiet partition would keep every window open forever. When it
delivers again it counts again, but the watermark does not go back: its events behind the
watermark may be late. When *every* partition is idle the watermark moves to the most
advanced of them, so a stream that goes quiet still closes what its partitions have passed.

A partition that has not delivered anything yet has no watermark and holds everything back
until it does, or until it has been idle for ``idle_timeout`` since it was assigned.

Times are integer microseconds (see :mod:`headrace.windows.window`); ``now`` is float
seconds of the caller's clock (wall time in the engine). Event times come in as
:func:`~headrace.windows.window.event_us` (the µs whose bound is at or before the time),
which makes the integer comparisons exact: ``max_us - lateness >= end_us + grace`` holds
exactly when the latest event time, as given, is at or past the float bound of ``end +
lateness + grace``, and an event at the watermark itself is on time for the windows after it.

>>> S = 1_000_000  # µs
>>> wm = Watermarks(allowed_lateness=2.0, idle_timeout=30.0)
>>> wm.assign(0); wm.assign(1)
>>> wm.observe(0, 10 * S, now=100.0) is None  # partition 1 has not delivered yet
True
>>> wm.observe(1, 15 * S, now=100.0) / S  # min(10 s, 15 s) - 2 s
8.0
>>> wm.refresh(now=131.0) / S  # both idle for more than 30 s: the most advanced one counts
13.0
"""

from __future__ import annotations

from headrace.windows.window import Window, to_us


def is_closed(window: Window, watermark_us: int | None, grace_us: int) -> bool:
    """Whether a window has closed: the watermark is at or past its end plus the grace.

    >>> is_closed(Window(0, 10_000), 12_000, grace_us=2_000), is_closed(Window(0, 10), None, 0)
    (True, False)
    """
    return watermark_us is not None and watermark_us >= window.end_us + grace_us


class _Partition:
    __slots__ = ("last_seen", "max_us")

    def __init__(self, max_us: int | None) -> None:
        self.max_us = max_us
        # When the partition last delivered (caller's clock); None until the first refresh
        # or record after it was assigned, which starts its idle clock.
        self.last_seen: float | None = None


class Watermarks:
    """Per-partition and worker watermarks (see the module docstring for the rules)."""

    def __init__(self, allowed_lateness: float = 0.0, idle_timeout: float | None = None):
        if allowed_lateness < 0:
            raise ValueError(f"allowed_lateness must be 0 or more, got {allowed_lateness}")
        if idle_timeout is not None and idle_timeout <= 0:
            raise ValueError(f"idle_timeout must be positive (or None), got {idle_timeout}")
        self.lateness_us = to_us(allowed_lateness)
        self.idle_timeout = idle_timeout
        self._partitions: dict[int, _Partition] = {}
        self._idle: set[int] = set()
        self._current: int | None = None

    @property
    def current(self) -> int | None:
        """The worker's watermark in µs; ``None`` until every active partition has one."""
        return self._current

    @property
    def partitions(self) -> list[int]:
        return list(self._partitions)

    @property
    def idle(self) -> set[int]:
        """The partitions idle as of the last :meth:`refresh`."""
        return set(self._idle)

    def assign(self, partition: int, max_us: int | None = None) -> None:
        """Track ``partition`` (again), with the latest event time it had delivered if it is
        being restored. A restored partition starts active, its idle clock at the next
        refresh: how long it was quiet before the restart is not known."""
        # No recomputation here: restoring partitions one by one must not let the first
        # one move the watermark before the others are back. The next refresh or event does.
        self._partitions[partition] = _Partition(max_us)
        self._idle.discard(partition)
        current = self._current
        if current is not None and (max_us is None or max_us - self.lateness_us < current):
            # A partition behind the worker's watermark (moved here by a rebalance, with its
            # state) pulls it back: its records up to its own watermark are on time. What
            # the other partitions closed stays closed: each store keeps its own horizon.
            self._current = None  # the next refresh or event recomputes it

    def forget(self, partition: int) -> None:
        self._partitions.pop(partition, None)
        self._idle.discard(partition)

    def max_us(self, partition: int) -> int | None:
        """The latest event time ``partition`` has delivered."""
        p = self._partitions.get(partition)
        return None if p is None else p.max_us

    def partition_watermark(self, partition: int) -> int | None:
        m = self.max_us(partition)
        return None if m is None else m - self.lateness_us

    def refresh(self, now: float) -> int | None:
        """Re-evaluate which partitions are idle at ``now``; the worker's watermark."""
        timeout = self.idle_timeout
        idle: set[int] = set()
        for pid, p in self._partitions.items():
            if p.last_seen is None:
                p.last_seen = now
            elif timeout is not None and now - p.last_seen > timeout:
                idle.add(pid)
        self._idle = idle
        self._recompute()
        return self._current

    def observe(self, partition: int, t_us: int, now: float) -> int | None:
        """An event at ``t_us`` from ``partition`` (tracked from now on if it was not);
        the worker's watermark after it."""
        p = self._partitions.get(partition)
        if p is None:
            p = self._partitions[partition] = _Partition(None)
        p.last_seen = now
        changed = False
        if p.max_us is None or t_us > p.max_us:
            p.max_us = t_us
            changed = True
        if partition in self._idle:
            self._idle.discard(partition)
            changed = True
        if changed:
            self._recompute()
        return self._current

    def _recompute(self) -> None:
        lowest: int | None = None
        held_back = False
        highest: int | None = None
        for pid, p in self._partitions.items():
            m = p.max_us
            if m is not None and (highest is None or m > highest):
                highest = m
            if pid in self._idle:
                continue
            if m is None:
                held_back = True
            elif lowest is None or m < lowest:
                lowest = m
        if held_back:
            candidate = None
        elif lowest is not None:
            candidate = lowest
        else:  # every partition idle (or none tracked): the most advanced one
            candidate = highest
        if candidate is not None:
            candidate -= self.lateness_us
            if self._current is None or candidate > self._current:
                self._current = candidate
