"""Which window(s) an event belongs to, by its event time.

Four kinds, all in integer milliseconds (see :mod:`headrace.windows.window`), all windows
half-open ``[start, end)``:

* :class:`Tumbling`: fixed, adjacent, non-overlapping windows; each event is in exactly one.
* :class:`Hopping`: fixed windows of ``size`` starting every ``hop``; an event is in about
  ``size / hop`` of them.
* :class:`Sliding`: one window per event time, ending at it: the ``size`` seconds of the
  key's events up to and including that event. This is the "left window" of Kafka Streams'
  sliding windows (a window exists only where an event is, so a window's content changes
  only when an event enters it); Kafka Streams also emits "right" windows holding what is
  left after an event drops out, which this definition leaves out: a feature "over the last
  ``size`` as of each event" is what scoring needs. Flink's "sliding" windows are
  :class:`Hopping` here.
* :class:`Session`: per key, events less than ``gap`` apart form one window; windows of one
  key merge when an event bridges them.

Tumbling and hopping windows are *fixed*: where an event falls does not depend on other
events, so :meth:`assign` is the whole story. Sliding and session windows depend on the
key's other events; their :meth:`assign` gives the window the event starts (or ends), and
the operator's store does the rest.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from headrace.windows.window import Window, to_ms


def _positive_ms(name: str, seconds: float) -> int:
    ms = to_ms(seconds)
    if ms < 1:
        raise ValueError(f"{name} must be at least 1 ms, got {seconds!r} s")
    return ms


class Assigner(Protocol):
    """Maps an event time (ms) to the fixed windows it belongs to. User-defined fixed
    windows (calendar months, say) implement this and the operator treats them like
    :class:`Tumbling`."""

    def assign(self, t_ms: int) -> Sequence[Window]: ...


class Tumbling:
    """Windows of ``size`` seconds, back to back, aligned to the epoch plus ``offset``.

    >>> Tumbling(10).assign(to_ms(12.5))
    [Window(start_ms=10000, end_ms=20000)]
    >>> Tumbling(10).assign(to_ms(20.0)), Tumbling(10).assign(-1)
    ([Window(start_ms=20000, end_ms=30000)], [Window(start_ms=-10000, end_ms=0)])
    >>> Tumbling(60, offset=15).assign(to_ms(10))  # windows start at :15
    [Window(start_ms=-45000, end_ms=15000)]
    """

    def __init__(self, size: float, offset: float = 0.0) -> None:
        self.size_ms = _positive_ms("a window size", size)
        self.offset_ms = to_ms(offset)

    def assign(self, t_ms: int) -> list[Window]:
        # Python's % is never negative for a positive divisor, so times before the offset
        # (or the epoch) land in the right window too.
        start = t_ms - (t_ms - self.offset_ms) % self.size_ms
        return [Window(start, start + self.size_ms)]

    def __repr__(self) -> str:
        return f"Tumbling(size={self.size_ms / 1000}, offset={self.offset_ms / 1000})"


class Hopping:
    """Windows of ``size`` seconds starting every ``hop`` seconds (``hop <= size``), aligned
    to the epoch plus ``offset``; an event is in every window that contains it, earliest first.

    ``size`` need not be a multiple of ``hop``. With ``hop == size`` this is :class:`Tumbling`.

    >>> Hopping(10, 5).assign(to_ms(12.5))
    [Window(start_ms=5000, end_ms=15000), Window(start_ms=10000, end_ms=20000)]
    >>> [w.start for w in Hopping(10, 4).assign(to_ms(9))]
    [0.0, 4.0, 8.0]
    """

    def __init__(self, size: float, hop: float, offset: float = 0.0) -> None:
        self.size_ms = _positive_ms("a window size", size)
        self.hop_ms = _positive_ms("a hop", hop)
        if self.hop_ms > self.size_ms:
            # Gaps between windows would drop the events that fall in them.
            raise ValueError(f"the hop ({hop} s) must not exceed the window size ({size} s)")
        self.offset_ms = to_ms(offset)

    def assign(self, t_ms: int) -> list[Window]:
        last = t_ms - (t_ms - self.offset_ms) % self.hop_ms  # the latest start at or before t
        size, hop = self.size_ms, self.hop_ms
        # The earliest start on the grid with t < start + size, i.e. start >= t - size + 1.
        first = last - ((last - (t_ms - size + 1)) // hop) * hop
        return [Window(s, s + size) for s in range(first, last + 1, hop)]

    def __repr__(self) -> str:
        return (
            f"Hopping(size={self.size_ms / 1000}, hop={self.hop_ms / 1000}, "
            f"offset={self.offset_ms / 1000})"
        )


class Sliding:
    """One window per event time: the ``size`` seconds ending at (and including) it, that is
    ``(t - size, t]``, written half-open in milliseconds as ``[t - size + 1 ms, t + 1 ms)``.

    The window of an event at ``t`` holds every event of the same key in that range; events
    with the same millisecond share one window. It closes (and is scored) once the watermark
    passes ``t`` plus the grace, like any window ending at ``t + 1 ms``.

    >>> Sliding(10).assign(to_ms(12.5))
    [Window(start_ms=2501, end_ms=12501)]
    """

    def __init__(self, size: float) -> None:
        self.size_ms = _positive_ms("a window size", size)

    def assign(self, t_ms: int) -> list[Window]:
        return [self.window_at(t_ms)]

    def window_at(self, t_ms: int) -> Window:
        return Window(t_ms - self.size_ms + 1, t_ms + 1)

    def __repr__(self) -> str:
        return f"Sliding(size={self.size_ms / 1000})"


class Session:
    """Per key, a run of events each less than ``gap`` seconds after the previous one; the
    window is ``[first event, last event + gap)``.

    An event starts the window ``[t, t + gap)``; windows of one key that overlap merge, so an
    event arriving between two sessions (out of order) joins them into one. Touching windows
    do not merge: an event exactly ``gap`` after the last one starts a new session (Flink and
    Kafka Streams merge at exactly ``gap``; half-open windows make "less than" the
    consistent rule here).

    >>> s = Session(gap=30)
    >>> s.assign(to_ms(100))
    [Window(start_ms=100000, end_ms=130000)]
    >>> s.merged([Window(100_000, 130_000), Window(120_000, 150_000)])
    Window(start_ms=100000, end_ms=150000)
    """

    def __init__(self, gap: float) -> None:
        self.gap_ms = _positive_ms("a session gap", gap)

    def assign(self, t_ms: int) -> list[Window]:
        return [Window(t_ms, t_ms + self.gap_ms)]

    @staticmethod
    def merged(windows: Sequence[Window]) -> Window:
        """The smallest window covering all of ``windows``."""
        return Window(min(w.start_ms for w in windows), max(w.end_ms for w in windows))

    def __repr__(self) -> str:
        return f"Session(gap={self.gap_ms / 1000})"
