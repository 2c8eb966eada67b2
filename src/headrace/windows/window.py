"""A window of event time, and the unit the windows package counts time in.

Times arrive as float seconds since the epoch (``Record.event_time``), but every
window computation here works in **integer milliseconds**. Floats drift at boundaries:
``0.1 + 0.2`` is ``0.30000000000000004``, and ``1700000010.0 - 10.0`` need not land on the
value a division by 10 s expects, so an event exactly on a window edge could fall on either
side of it depending on how its time was computed. Rounding each time once, to the nearest
millisecond, and doing all arithmetic on integers makes window membership exact and the same
on every machine. The cost is that times closer than half a millisecond are equal here.
"""

from __future__ import annotations

from typing import NamedTuple


def to_ms(seconds: float) -> int:
    """Seconds (float) to whole milliseconds, rounded to the nearest.

    >>> to_ms(12.5), to_ms(0.1 + 0.2), to_ms(-0.0004)
    (12500, 300, 0)
    """
    return round(seconds * 1000)


def to_seconds(ms: int) -> float:
    """Milliseconds back to float seconds, for outputs.

    >>> to_seconds(12500)
    12.5
    """
    return ms / 1000


class Window(NamedTuple):
    """The half-open interval ``[start_ms, end_ms)`` of event time, in milliseconds.

    An event at ``t`` belongs to the window when ``start_ms <= t < end_ms``. A tuple, so it is
    cheap, hashable (a dictionary key together with an entity's key) and ordered by start.

    >>> w = Window(10_000, 20_000)
    >>> w.start, w.end, w.contains(to_ms(19.999)), w.contains(to_ms(20.0))
    (10.0, 20.0, True, False)
    """

    start_ms: int
    end_ms: int

    @property
    def start(self) -> float:
        """The start in seconds (inclusive)."""
        return self.start_ms / 1000

    @property
    def end(self) -> float:
        """The end in seconds (exclusive)."""
        return self.end_ms / 1000

    def contains(self, t_ms: int) -> bool:
        return self.start_ms <= t_ms < self.end_ms

    def overlaps(self, other: Window) -> bool:
        """Whether the two share any instant (touching ends do not count: half-open).

        >>> Window(0, 10).overlaps(Window(9, 20)), Window(0, 10).overlaps(Window(10, 20))
        (True, False)
        """
        return self.start_ms < other.end_ms and other.start_ms < self.end_ms
