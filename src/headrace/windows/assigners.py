"""Which window(s) an event belongs to, by its event time.

Four kinds, all in integer microseconds (see :mod:`headrace.windows.window`: an event time
``t`` is the µs ``u`` with ``u / 10**6 <= t < (u + 1) / 10**6``, :func:`event_us`), all
windows half-open ``[start, end)``, so an event is in a window exactly when
``start <= t < end`` on the bounds the output shows:

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

from headrace.windows.window import US, Window, to_us
from headrace.windows.window import event_us as event_us  # what the examples below use


def _positive_us(name: str, seconds: float) -> int:
    us = to_us(seconds)
    if us < 1:
        raise ValueError(f"{name} must be at least 1 µs, got {seconds!r} s")
    return us


class Assigner(Protocol):
    """Maps an event time (µs, from :func:`~headrace.windows.window.event_us`) to the fixed
    windows it belongs to. User-defined fixed windows (calendar months, say) implement this
    and the operator treats them like :class:`Tumbling`."""

    def assign(self, t_us: int) -> Sequence[Window]: ...


class Tumbling:
    """Windows of ``size`` seconds, back to back, aligned to the epoch plus ``offset``.

    >>> Tumbling(10).assign(event_us(12.5))
    [Window(start_us=10000000, end_us=20000000)]
    >>> Tumbling(10).assign(event_us(20.0)), Tumbling(10).assign(-1)
    ([Window(start_us=20000000, end_us=30000000)], [Window(start_us=-10000000, end_us=0)])
    >>> [w.start for w in Tumbling(60, offset=15).assign(event_us(10))]  # windows start at :15
    [-45.0]
    """

    def __init__(self, size: float, offset: float = 0.0) -> None:
        self.size_us = _positive_us("a window size", size)
        self.offset_us = to_us(offset)

    def assign(self, t_us: int) -> list[Window]:
        # Python's % is never negative for a positive divisor, so times before the offset
        # (or the epoch) land in the right window too.
        start = t_us - (t_us - self.offset_us) % self.size_us
        return [Window(start, start + self.size_us)]

    def __repr__(self) -> str:
        return f"Tumbling(size={self.size_us / US}, offset={self.offset_us / US})"


class Hopping:
    """Windows of ``size`` seconds starting every ``hop`` seconds (``hop <= size``), aligned
    to the epoch plus ``offset``; an event is in every window that contains it, earliest first.

    ``size`` need not be a multiple of ``hop``. With ``hop == size`` this is :class:`Tumbling`.

    >>> [(w.start, w.end) for w in Hopping(10, 5).assign(event_us(12.5))]
    [(5.0, 15.0), (10.0, 20.0)]
    >>> [w.start for w in Hopping(10, 4).assign(event_us(9))]
    [0.0, 4.0, 8.0]
    """

    def __init__(self, size: float, hop: float, offset: float = 0.0) -> None:
        self.size_us = _positive_us("a window size", size)
        self.hop_us = _positive_us("a hop", hop)
        if self.hop_us > self.size_us:
            # Gaps between windows would drop the events that fall in them.
            raise ValueError(f"the hop ({hop} s) must not exceed the window size ({size} s)")
        self.offset_us = to_us(offset)

    def assign(self, t_us: int) -> list[Window]:
        last = t_us - (t_us - self.offset_us) % self.hop_us  # the latest start at or before t
        size, hop = self.size_us, self.hop_us
        # The earliest start on the grid with t < start + size, i.e. start >= t - size + 1.
        first = last - ((last - (t_us - size + 1)) // hop) * hop
        return [Window(s, s + size) for s in range(first, last + 1, hop)]

    def __repr__(self) -> str:
        return (
            f"Hopping(size={self.size_us / US}, hop={self.hop_us / US}, "
            f"offset={self.offset_us / US})"
        )


class Sliding:
    """One window per event time: the ``size`` seconds ending at (and including) it, that is
    ``(t - size, t]``, written half-open in microseconds as ``[t - size + 1 µs, t + 1 µs)``.

    The window of an event at ``t`` holds every event of the same key in that range; events
    with the same microsecond share one window. On microsecond times (see
    :mod:`headrace.windows.window`) the range is exact: the window of an event at 12.5004 s
    is ``(2.5004, 12.5004]``, shown as ``[2.500401, 12.500401)``, so it holds an event at
    2.5005 s and not one at 2.5004 s. It closes (and is scored) once the watermark passes
    ``t`` plus the grace, like any window ending at ``t + 1 µs``.

    >>> [(w.start, w.end) for w in Sliding(10).assign(event_us(12.5004))]
    [(2.500401, 12.500401)]
    """

    def __init__(self, size: float) -> None:
        self.size_us = _positive_us("a window size", size)

    def assign(self, t_us: int) -> list[Window]:
        return [self.window_at(t_us)]

    def window_at(self, t_us: int) -> Window:
        return Window(t_us - self.size_us + 1, t_us + 1)

    def __repr__(self) -> str:
        return f"Sliding(size={self.size_us / US})"


class Session:
    """Per key, a run of events each less than ``gap`` seconds after the previous one; the
    window is ``[first event, last event + gap)``, its bounds in whole microseconds: an
    event opens ``[u, u + gap)`` for the µs ``u`` it is in, so on microsecond times (see
    :mod:`headrace.windows.window`) "less than ``gap``" and the bounds are exact: events at
    100.0009 s and 130.0001 s, 29.9992 s apart, are one session with a 30 s gap.

    An event starts the window ``[t, t + gap)``; windows of one key that overlap merge, so an
    event arriving between two sessions (out of order) joins them into one. Touching windows
    do not merge: an event exactly ``gap`` after the last one starts a new session (Flink and
    Kafka Streams merge at exactly ``gap``; half-open windows make "less than" the
    consistent rule here).

    >>> s = Session(gap=30)
    >>> [(w.start, w.end) for w in s.assign(event_us(100.0009))]
    [(100.0009, 130.0009)]
    >>> s.merged([Window(100, 130), Window(120, 150)])
    Window(start_us=100, end_us=150)
    """

    def __init__(self, gap: float) -> None:
        self.gap_us = _positive_us("a session gap", gap)

    def assign(self, t_us: int) -> list[Window]:
        return [Window(t_us, t_us + self.gap_us)]

    @staticmethod
    def merged(windows: Sequence[Window]) -> Window:
        """The smallest window covering all of ``windows``."""
        return Window(min(w.start_us for w in windows), max(w.end_us for w in windows))

    def __repr__(self) -> str:
        return f"Session(gap={self.gap_us / US})"
