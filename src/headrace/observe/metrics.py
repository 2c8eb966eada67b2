"""Prometheus metrics for one pipeline, updated once per batch."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator, Sequence

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.registry import Collector

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
INFERENCE_BUCKETS = (0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)


class BulkHistogram(Collector):
    """A histogram that takes a whole array of observations at once.

    prometheus-client's Histogram locks and bisects per observation; one end-to-end latency
    per record would cost more than the rest of the engine. This one bins a batch with NumPy.
    """

    def __init__(self, name: str, documentation: str, buckets: Sequence[float]) -> None:
        self.name = name
        self.documentation = documentation
        self.bounds = np.asarray(buckets, dtype=np.float64)
        self.counts = np.zeros(len(buckets) + 1, dtype=np.int64)
        self.total = 0.0
        # One observation at a time, `bisect` on a list: NumPy's searchsorted on a scalar
        # cost 1.5 us (measured), with two observations per batch.
        self._edges = self.bounds.tolist()
        self._single = [0] * len(self.counts)

    def observe_many(self, values: np.ndarray) -> None:
        """Observe an array of values (the bins are ``le`` bounds: a value equal to a
        bound falls in it).

        >>> h = BulkHistogram("h", "doc", [1.0, 2.0])
        >>> h.observe_many(np.array([0.5, 1.0, 1.5, 3.0])); h.observe(2.0)
        >>> [s.value for s in next(h.collect()).samples[:3]], h.total
        ([2, 4, 5], 8.0)
        """
        if not len(values):
            return
        # The methods and ufuncs themselves: NumPy's function wrappers cost as much as the
        # work on a batch of a few hundred values.
        self.counts += np.bincount(self.bounds.searchsorted(values), minlength=len(self.counts))
        self.total += float(np.add.reduce(values))

    def observe(self, value: float) -> None:
        self._single[bisect_left(self._edges, value)] += 1
        self.total += value

    def _counts(self) -> np.ndarray:
        return self.counts + np.asarray(self._single, dtype=np.int64)

    def collect(self) -> Iterator[HistogramMetricFamily]:
        cumulative = np.cumsum(self._counts()).tolist()
        labels = [*(repr(float(b)) for b in self.bounds), "+Inf"]
        yield HistogramMetricFamily(
            self.name,
            self.documentation,
            buckets=list(zip(labels, cumulative, strict=True)),
            sum_value=self.total,
        )


class LabelledBulkHistogram(Collector):
    """A :class:`BulkHistogram` per value of one label (a lookup's name), exported as one
    histogram family; a label value appears with its first observation."""

    def __init__(self, name: str, documentation: str, label: str, buckets: Sequence[float]) -> None:
        self.name = name
        self.documentation = documentation
        self.label = label
        self.buckets = tuple(buckets)
        self.children: dict[str, BulkHistogram] = {}

    def labels(self, value: str) -> BulkHistogram:
        child = self.children.get(value)
        if child is None:
            child = self.children[value] = BulkHistogram(self.name, "", self.buckets)
        return child

    def collect(self) -> Iterator[HistogramMetricFamily]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=[self.label])
        for value, child in sorted(self.children.items()):
            cumulative = np.cumsum(child._counts()).tolist()
            bounds = [*(repr(float(b)) for b in child.bounds), "+Inf"]
            family.add_metric(
                [value], list(zip(bounds, cumulative, strict=True)), sum_value=child.total
            )
        yield family


class PipelineMetrics:
    """Every metric a pipeline exports, in a registry of its own."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.records_in = Counter("headrace_records_in", "Records read from the source", registry=r)
        self.records_out = Counter(
            "headrace_records_out", "Records scored and written to every sink", registry=r
        )
        self.records_failed = Counter(
            "headrace_records_failed",
            "Records that failed, by stage (dead-lettered)",
            ["stage"],
            registry=r,
        )
        self.in_flight = Gauge(
            "headrace_in_flight_records", "Records read and not yet finished", registry=r
        )
        self.in_flight_bytes = Gauge(
            "headrace_in_flight_bytes",
            "Encoded bytes of the records read and not yet finished",
            registry=r,
        )
        self.uncommitted = Gauge(
            "headrace_uncommitted_records",
            "Records whose outputs were written and whose positions no confirmed commit "
            "covers yet: what a crash now could write twice (at most max_uncommitted; moved "
            "only while positions are committed as their outputs are acknowledged)",
            registry=r,
        )
        self.records_read_back = Counter(
            "headrace_records_read_back",
            "Records not written again after a crash: their outputs were read back from "
            "the output topics (runtime.read_back)",
            registry=r,
        )
        self.source_paused = Gauge(
            "headrace_source_paused",
            "1 while reading is paused (in-flight bound reached, the model or a lookup store down)",
            ["reason"],
            registry=r,
        )
        self.paused_partitions = Gauge(
            "headrace_paused_partitions", "Source partitions paused by flow control", registry=r
        )
        self.records_shed = Counter(
            "headrace_records_shed",
            "Records shed under the shedding policy, by reason and priority",
            ["reason", "priority"],
            registry=r,
        )
        self.lag_records = Gauge(
            "headrace_consumer_lag_records",
            "Records between the read position and the end of the partition",
            ["topic", "partition"],
            registry=r,
        )
        self.lag_seconds = Gauge(
            "headrace_consumer_lag_seconds",
            "Age of the last record read from a partition that still has records to read",
            ["topic", "partition"],
            registry=r,
        )
        self.model_errors = Counter(
            "headrace_model_errors",
            "Model calls that raised or timed out, by error type",
            ["error_type"],
            registry=r,
        )
        self.model_retries = Counter(
            "headrace_model_retries", "Retries of a record that failed alone", registry=r
        )
        self.model_timeouts = Counter(
            "headrace_model_timeouts", "Model calls that exceeded the timeout", registry=r
        )
        self.circuit_open = Gauge(
            "headrace_model_circuit_open",
            "1 while the model is down and the circuit breaker holds records back",
            registry=r,
        )
        self.model_updates = Counter(
            "headrace_model_updates",
            "Model versions swapped in, rejected before serving, or rolled back",
            ["outcome"],
            registry=r,
        )
        self.model_info = Gauge(
            "headrace_model_info",
            "The serving model version (1)",
            ["name", "version", "sha256"],
            registry=r,
        )
        self.shadow_records = Counter(
            "headrace_shadow_records",
            "Records scored by the shadow version, by agreement with the serving version",
            ["outcome"],
            registry=r,
        )
        self.shadow_seconds = BulkHistogram(
            "headrace_shadow_inference_seconds",
            "Time of one shadow predict_batch call",
            INFERENCE_BUCKETS,
        )
        r.register(self.shadow_seconds)
        self.batch_size = BulkHistogram(
            "headrace_batch_size", "Records per inference batch", BATCH_BUCKETS
        )
        self.inference_seconds = BulkHistogram(
            "headrace_inference_seconds", "Time of one predict_batch call", INFERENCE_BUCKETS
        )
        self.latency = BulkHistogram(
            "headrace_end_to_end_latency_seconds",
            "From a record's event time to its acknowledgement by every sink",
            LATENCY_BUCKETS,
        )
        for c in (self.batch_size, self.inference_seconds, self.latency):
            r.register(c)
        self.alerts_suppressed = Counter(
            "headrace_alerts_suppressed",
            "Alerts a webhook sink did not send because their key alerted within its "
            "cooldown_s (counted as written), by sink",
            ["sink"],
            registry=r,
        )
        # Windows (only moved by a windowed pipeline).
        self.windows_closed = Counter(
            "headrace_windows_closed",
            "Windows the watermark closed and sent to the model",
            registry=r,
        )
        self.window_rejected = Counter(
            "headrace_window_records_rejected",
            "Records no window took, by reason (late: behind the watermark beyond the grace; "
            "missing-field, wrong-type, not-an-object, invalid-time: no usable key, event "
            "time or feature)",
            ["reason"],
            registry=r,
        )
        self.windows_open = Gauge(
            "headrace_windows_open", "Window states held (panes, for sliding windows)", registry=r
        )
        self.watermark = Gauge(
            "headrace_watermark_seconds",
            "The worker's watermark (event time, seconds since the epoch); 0 until known",
            registry=r,
        )
        self.state_restore_seconds = Gauge(
            "headrace_state_restore_seconds",
            "Time the last restore of window state from the changelog took",
            registry=r,
        )
        self.changelog_records = Counter(
            "headrace_changelog_records",
            "Records written to the window state changelog",
            registry=r,
        )
        self.window_output_delay = BulkHistogram(
            "headrace_window_output_delay_seconds",
            "From a window's close (the watermark passing it) to its output written to every "
            "sink (queued there; acknowledged by the broker at the next commit)",
            LATENCY_BUCKETS,
        )
        r.register(self.window_output_delay)
        # Lookups before the features (only moved by a pipeline with `enrich`).
        self.enrich_seconds = LabelledBulkHistogram(
            "headrace_enrich_seconds",
            "Time of one lookup round trip to a store (one per batch with keys not cached)",
            "lookup",
            INFERENCE_BUCKETS,
        )
        r.register(self.enrich_seconds)
        self.enrich_cache = Counter(
            "headrace_enrich_cache",
            "Keys looked up in a lookup's cache, by outcome (hit, miss), once per distinct "
            "key of a batch",
            ["lookup", "outcome"],
            registry=r,
        )
