"""Operator tools that sit beside a pipeline rather than in it.

``loadgen`` produces the reference sensor events (and, on request, malformed ones) to a
Kafka topic at a known rate, and ``audit`` checks afterwards that every input position
reached an output or a dead letter exactly once (or at least once). They exist so that
delivery guarantees are measured against a real broker, not asserted. ``replay``
re-produces dead letters' original records to a topic a pipeline can score again (the
audit follows them back). ``commands`` exposes them as ``headrace loadgen``, ``headrace
audit`` and ``headrace dead-letters replay``.
"""
