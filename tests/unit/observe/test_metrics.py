"""The bulk histogram agrees with Prometheus histogram semantics."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from headrace.observe.metrics import BulkHistogram


@given(st.lists(st.floats(min_value=0, max_value=20, allow_nan=False), max_size=200))
def test_bucket_counts_match_a_plain_count(values: list[float]) -> None:
    bounds = (0.1, 1.0, 5.0)
    h = BulkHistogram("h", "doc", bounds)
    h.observe_many(np.array(values[: len(values) // 2], dtype=np.float64))
    for v in values[len(values) // 2 :]:
        h.observe(v)
    (family,) = h.collect()
    buckets = {s.labels["le"]: s.value for s in family.samples if s.name == "h_bucket"}
    for b in bounds:
        assert buckets[repr(b)] == sum(1 for v in values if v <= b)
    assert buckets["+Inf"] == len(values)
    total = next(s.value for s in family.samples if s.name == "h_sum")
    assert abs(total - sum(values)) < 1e-6 * max(1.0, sum(values))
