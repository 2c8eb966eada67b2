"""Incremental aggregations over a window: constant memory, mergeable, serialisable.

An :class:`Aggregator` never keeps a window's raw events. It folds each value into a small
state (:meth:`~Aggregator.add`), combines two states into the state of both
(:meth:`~Aggregator.merge`: session windows merge, sliding windows are built from per-event
panes), turns a state into the feature (:meth:`~Aggregator.result`) and into plain
msgpack-encodable data and back (:meth:`~Aggregator.dump`, :meth:`~Aggregator.load`), which
is what a snapshot (and the changelog) stores.

``add`` also receives the event time in microseconds (``at``): :class:`First`,
:class:`Last` and :class:`LastN` order by it, everything else ignores it. Ties in event
time go by arrival: a later ``add`` is a later arrival, and ``merge(a, b)`` treats ``b``'s
events as arriving after ``a``'s.

Every aggregation here gives the same result whatever order its events arrive in and however
they are split and merged (up to float rounding for sums, means and deviations, which use
compensated arithmetic to keep that rounding tiny). That is what makes a streaming result
equal a batch recomputation.

* :mod:`~headrace.windows.aggregators.base`: the :class:`Aggregator` protocol;
* :mod:`~headrace.windows.aggregators.numeric`: sums, means, extremes, deviations;
* :mod:`~headrace.windows.aggregators.ordered`: values by event time (first, last, last n);
* :mod:`~headrace.windows.aggregators.counts`: counts of values, distinct values, types.

>>> m = Mean()
>>> a = m.add(m.add(m.init(), 2, at=0), 4, at=1)
>>> b = m.add(m.init(), 9, at=2)
>>> m.result(m.merge(a, b))
5.0
"""

from headrace.windows.aggregators.base import Aggregator
from headrace.windows.aggregators.counts import Count, CountsByType, DistinctCount
from headrace.windows.aggregators.numeric import Max, Mean, Min, Std, Sum
from headrace.windows.aggregators.ordered import First, Last, LastN

__all__ = [
    "Aggregator",
    "Count",
    "CountsByType",
    "DistinctCount",
    "First",
    "Last",
    "LastN",
    "Max",
    "Mean",
    "Min",
    "Std",
    "Sum",
]
