"""When a pipeline reads back its outputs after a crash: only where passing over a record
can never lose an output (every sink a Kafka topic taking every output, at-least-once,
no windows). The reading back itself is tested on a real broker
(tests/integration/kafka/test_read_back.py)."""

from __future__ import annotations

from collections.abc import Sequence

from hypothesis import given
from hypothesis import strategies as st

from headrace.connectors.base import PartitionedSource
from headrace.connectors.files import JsonLinesSink
from headrace.connectors.kafka import KafkaProducer, KafkaSink, KafkaSource
from headrace.connectors.kafka.recovery import GROUP_HEADER, split
from headrace.runtime.outputs import SinkBinding, read_back_header


class _Partitioned(PartitionedSource):
    """Records what it was asked to read back."""

    def __init__(self) -> None:
        self.asked: list[tuple[list[str], int]] = []

    def read_back_outputs(
        self, topics: Sequence[tuple[str, str]], depth: int
    ) -> tuple[str, bytes] | None:
        self.asked.append(([t for _, t in topics], depth))
        return ("h", b"v")

    def set_paused(self, paused: bool) -> None: ...

    async def chunks(self):  # type: ignore[no-untyped-def]
        yield []


def _kafka(topic: str, *, transactional: bool = False) -> KafkaSink:
    producer = KafkaProducer(
        {"bootstrap.servers": "127.0.0.1:1"}, transactional_id="t" if transactional else None
    )
    return KafkaSink(topic, producer=producer)


def _header(sinks: list[SinkBinding], source: object = None, **kw: object) -> object:
    args = {"exactly_once": False, "windowed": False, "depth": 100, **kw}
    return read_back_header(source or _Partitioned(), sinks, **args)  # type: ignore[arg-type]


def test_every_output_to_kafka_topics_reads_back_all_of_them() -> None:
    source = _Partitioned()
    assert _header([SinkBinding(_kafka("a")), SinkBinding(_kafka("b"))], source) == ("h", b"v")
    assert source.asked == [(["a", "b"], 100)]


def test_not_where_a_record_could_be_passed_over_with_an_output_missing(tmp_path) -> None:  # type: ignore[no-untyped-def]
    kafka = SinkBinding(_kafka("a"))
    file_sink = SinkBinding(JsonLinesSink(tmp_path / "out.jsonl"))
    alerts = SinkBinding(_kafka("alerts"), keep=lambda p: p > 0.9)
    assert _header([kafka, file_sink]) is None  # not readable back
    assert _header([kafka, alerts]) is None  # takes only some outputs
    assert _header([SinkBinding(_kafka("a", transactional=True))]) is None
    assert _header([kafka], exactly_once=True) is None
    assert _header([kafka], windowed=True) is None
    assert _header([kafka], depth=0) is None
    assert _header([]) is None
    assert _header([kafka], source=object()) is None  # not a partitioned source


def test_the_kafka_source_tags_outputs_with_its_group_unless_it_resets_offsets() -> None:
    from headrace.connectors.kafka.start import Start

    source = KafkaSource(["events"], group_id="scorers", settings={"bootstrap.servers": "x:1"})
    assert source.read_back_outputs([("x:1", "out")], 10) == (GROUP_HEADER, b"scorers")
    # Outputs on other brokers than the source's: not read back.
    assert source.read_back_outputs([("x:1", "out"), ("y:1", "more")], 10) is None
    resetting = KafkaSource(
        ["events"],
        group_id="g",
        settings={"bootstrap.servers": "x:1"},
        start=Start("earliest", reset=True),
    )
    assert resetting.read_back_outputs([("x:1", "out")], 10) is None


@given(st.integers(0, 50), st.sets(st.integers(0, 120)))
def test_split_starts_past_the_written_run_and_keeps_the_rest(
    committed: int, written: set[int]
) -> None:
    start, rest = split(committed, written)
    assert all(o in written for o in range(committed, start))
    assert start not in written
    assert rest == {o for o in written if o > start}


def test_a_broker_that_does_not_answer_costs_the_assignment_at_most_the_timeout() -> None:
    """Reading back runs in the assignment callback: one deadline bounds all of it, and
    failing raises (the source then logs it and writes those records again)."""
    import time

    import pytest

    from headrace.connectors.kafka.recovery import ReadBack, read_back

    what = ReadBack(topics=("out",), tag=b"g", depth=10, timeout=0.5)
    started = time.monotonic()
    with pytest.raises(Exception):  # noqa: B017 - librdkafka's, or the deadline's
        read_back({"bootstrap.servers": "127.0.0.1:1", "group.id": "g"}, what, {("t", 0): 0})
    assert time.monotonic() - started < 3


def test_reading_further_back_stops_where_nothing_older_can_be_missing() -> None:
    """Another window back only while the last one was recent and did not show, for
    every recovered partition seen, an output from below its committed offset."""
    from headrace.connectors.kafka.recovery import ReadBack, _Window

    what = ReadBack(topics=("out",), tag=b"g", depth=100, windows=3, horizon=60.0)
    committed = {("t", 0): 500, ("t", 1): 50}
    w = _Window("out", 0, low=0, high=1000, depth=100)
    w.oldest = 1_000.0
    assert w.further(what, committed, now=1_010.0)  # nothing of ours seen yet
    w.lowest = {("t", 0): 520}
    assert w.further(what, committed, now=1_010.0)  # only outputs at or past the commit
    w.lowest = {("t", 0): 480, ("t", 1): 49}
    assert not w.further(what, committed, now=1_010.0)  # below both: the rest is older
    w.lowest = {}
    assert not w.further(what, committed, now=1_100.0)  # older than the horizon
    w.back(100)
    w.oldest = 1_000.0
    assert (w.lo, w.hi, w.windows) == (800, 900, 2)
    assert w.further(what, committed, now=1_010.0)
    w.back(100)
    assert not w.further(what, committed, now=1_010.0)  # three windows read
    start = _Window("out", 1, low=0, high=50, depth=100)
    assert not start.further(what, committed, now=0.0)  # the partition's start
