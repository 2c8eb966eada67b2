"""A window of event time, and the unit the windows package counts time in.

Times arrive as float seconds since the epoch (``Record.event_time``), but every
window computation here works in **integer microseconds**, so that window arithmetic
(``start + size``, ``t - size``, a session's ``last + gap``) is exact and the same on every
machine, and state stays small integers (today's epoch in µs, 1.7e15, is well inside the
64-bit integers a snapshot stores).

An event time becomes the microsecond *whose bound is at or before it* (:func:`event_us`):
the ``u`` with ``u / 10**6 <= t < (u + 1) / 10**6``, where ``u / 10**6`` is the float a
window bound at ``u`` µs shows as its ``start`` or ``end`` (an integer divided by an integer
is correctly rounded: a bound at 10 s shows as ``10.0``). So an event is in ``[start, end)``
exactly when ``window.start <= t < window.end`` compares true on the floats the output
carries: no event crosses a bound on the way to integers. Rounding to the nearest unit moves
events in the last half unit before a bound into the next window; flooring ``t * 10**6``
is not safe either: ``1.000001 * 1e6`` is ``1000000.9999999999``, yet ``1.000001`` is the
bound of 1,000,001 µs.

For the decimal times events carry (a Kafka timestamp in ms, an ISO 8601 string in
microseconds, a JSON number with up to six decimals) this is the same as comparing the
decimal itself with the bound, exactly, as long as floats there are finer than a
microsecond: a float near today's epoch steps by 0.24 µs, and by at most 0.95 µs until
``2**33`` s, the year 2242. It holds for every kind of window, including the ones built from
event times: a session's ``last + gap`` and a sliding window's ``(t - size, t]`` are then
exact too. (With milliseconds, two events 29.9992 s apart, at 100.0009 s and 130.0001 s, fell
a whole 30 s gap apart.) A time finer than a microsecond is taken at the microsecond it is
in.

Event times beyond ``2**61`` µs either side of the epoch (about the year 75,000) are out of
range (``OverflowError``): windows beyond them would not fit the 64-bit integers a snapshot
stores (a microsecond timestamp read as seconds lands there).

Configured durations (sizes, hops, offsets, gaps, lateness, grace) are the nearest whole
microsecond instead (:func:`to_us`): ``0.1 + 0.2`` s is a 300,000 µs window, not
300,000.00000000006.
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import NamedTuple

US = 1_000_000  # microseconds in a second: an int, so that ``u / US`` is correctly rounded

# Below this many seconds (the year 2242) floats step by at most 2**-20 s (0.95 µs): the
# bounds of distinct microseconds are distinct floats, ``seconds * 1e6`` is within a µs of
# the exact product, and every microsecond is exactly a float (below 2**53).
_FINE_BELOW = float(2**33)
# The range of event times: windows and horizons stay within 64-bit integers (see store.py).
_RANGE = float(2**61 / US)


def event_us(seconds: float) -> int:
    """An event time (float seconds) as the microsecond it is in: the largest ``u`` whose
    bound ``u / 10**6`` (the float a window starting or ending at ``u`` µs shows) is at or
    before ``seconds``, so ``u / 10**6 <= seconds < (u + 1) / 10**6``.

    >>> event_us(12.5), event_us(0.3), event_us(0.1 + 0.2), event_us(0.7 - 0.4)
    (12500000, 300000, 300000, 299999)
    >>> event_us(1700000000.9999997), event_us(-0.0000004)  # never rounded up into the next µs
    (1700000000999999, -1)
    """
    u = math.floor(seconds * 1e6 + 0.5)  # the nearest µs, give or take one; OverflowError
    b = u / US  # past 1e302 s
    # The hot path (once per event). Measured at 1.8e9 s, 20,000 times each on a busy
    # machine: 255 ns a call for ms and µs timestamps, 410 ns for other floats; the
    # event_ms it replaces took 560 ns for ms timestamps (every one near a ms bound) and
    # 365 ns for the others.
    if -_FINE_BELOW < seconds < _FINE_BELOW:
        if b == seconds:
            # A time given in whole µs or ms, as nearly every source gives it, is the float
            # of its bound: its microsecond.
            return u
        # Off the grid: u's bound is on one side, and the answer most often u or u - 1.
        if b < seconds:
            if seconds < (u + 1) / US:
                return u
        elif (u - 1) / US <= seconds:
            return u - 1
    return _near(seconds, u, b)


def _near(seconds: float, u: int, b: float) -> int:
    """:func:`event_us` where the µs nearest ``seconds * 1e6``, ``u`` (its bound ``b``),
    is not the answer or its neighbour, or floats are coarser than a µs."""
    if not -_FINE_BELOW < seconds < _FINE_BELOW:
        return _coarse(seconds)
    # Compare with the bounds themselves; u is within a µs or two of the answer here.
    if b > seconds:
        u -= 1
        while u / US > seconds:
            u -= 1
    else:
        while (u + 1) / US <= seconds:
            u += 1
    return u


def _coarse(seconds: float) -> int:
    """:func:`event_us` where floats are coarser than a microsecond, so that several
    microseconds have the same bound: the last of them, with exact rational arithmetic (a
    search would step through them: up to 488 at the end of the range)."""
    if not -_RANGE < seconds < _RANGE:
        raise OverflowError(f"event time {seconds!r} s is out of range (|t| < {_RANGE:.4g} s)")
    # u / 10**6 rounds to ``seconds`` or below exactly when u / 10**6 is below the midpoint
    # between ``seconds`` and the next float up. Never exactly at it: that would need floats
    # stepping by 2**-5 s or more (from 2**47 s), far out of range.
    above = math.nextafter(seconds, math.inf)
    return math.floor((Fraction(seconds) + Fraction(above)) * (US // 2))


def to_us(seconds: float) -> int:
    """A duration (float seconds) in whole microseconds, the nearest (exactly: a whole
    number of µs written in decimal comes back as that number): for sizes, hops, offsets,
    gaps, lateness and grace, not event times (see :func:`event_us`).

    >>> to_us(12.5), to_us(0.1 + 0.2), to_us(-0.0000004), to_us(1700000000.000001)
    (12500000, 300000, 0, 1700000000000001)
    """
    return round(Fraction(seconds) * US)


def to_seconds(us: int) -> float:
    """Microseconds back to float seconds, for outputs: the float nearest the exact value.

    >>> to_seconds(12_500_000), to_seconds(10_000_000), to_seconds(300_000)
    (12.5, 10.0, 0.3)
    """
    return us / US


class Window(NamedTuple):
    """The half-open interval ``[start_us, end_us)`` of event time, in microseconds.

    An event at ``t`` belongs to the window when ``start_us <= t < end_us``. A tuple, so it is
    cheap, hashable (a dictionary key together with an entity's key) and ordered by start.

    >>> w = Window(10_000_000, 20_000_000)
    >>> w.start, w.end, w.contains(event_us(19.999999)), w.contains(event_us(20.0))
    (10.0, 20.0, True, False)
    """

    start_us: int
    end_us: int

    @property
    def start(self) -> float:
        """The start in seconds (inclusive)."""
        return self.start_us / US

    @property
    def end(self) -> float:
        """The end in seconds (exclusive)."""
        return self.end_us / US

    def contains(self, t_us: int) -> bool:
        return self.start_us <= t_us < self.end_us

    def overlaps(self, other: Window) -> bool:
        """Whether the two share any instant (touching ends do not count: half-open).

        >>> Window(0, 10).overlaps(Window(9, 20)), Window(0, 10).overlaps(Window(10, 20))
        (True, False)
        """
        return self.start_us < other.end_us and other.start_us < self.end_us
