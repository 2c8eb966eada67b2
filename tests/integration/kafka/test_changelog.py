"""The window state changelog on a real broker: the topic it creates or checks, and state
written in several commits restored whole."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from headrace.connectors.kafka import KafkaProducer
from headrace.record import Record
from headrace.windows import Count, Sum, Tumbling, WindowOperator
from headrace.windows.changelog import ChangelogError, KafkaChangelog
from headrace.windows.stage import WindowStage
from kafka_helpers import TansuBroker

_names = itertools.count()


def changelog(tansu: TansuBroker, input_topic: str, **kw: Any) -> KafkaChangelog:
    topic = kw.pop("topic", f"state-{next(_names)}")
    producer = KafkaProducer(tansu.client_config(**{"linger.ms": 5}))
    return KafkaChangelog(
        topic, input_topic=input_topic, producer=producer, client=tansu.client_config(), **kw
    )


def stage(log: KafkaChangelog) -> WindowStage:
    op = WindowOperator(
        Tumbling(10), {"n": (None, Count()), "s": ("x", Sum())}, key_field="k", time_source="t"
    )
    return WindowStage(op, topic="in", changelog=log)


async def test_the_topic_is_created_compacted_and_partitioned_like_the_input(
    tansu: TansuBroker,
) -> None:
    tansu.create_topic("in", partitions=3)
    log = changelog(tansu, "in")
    await log.open()
    await log.open()  # already there: nothing to do
    md = tansu.admin.list_topics(timeout=10)
    assert len(md.topics[log.topic].partitions) == 3
    await log.close()


async def test_a_changelog_it_cannot_use_is_refused_with_the_reason(tansu: TansuBroker) -> None:
    tansu.create_topic("in", partitions=3)
    tansu.create_topic("small", partitions=2)
    with pytest.raises(ChangelogError, match="'small' has 2 partitions, input topic 'in' 3"):
        await changelog(tansu, "in", topic="small").open()
    with pytest.raises(ChangelogError, match="does not exist; create it compacted"):
        await changelog(tansu, "in", create=False).open()
    with pytest.raises(ChangelogError, match="input topic 'nope' not found"):
        await changelog(tansu, "nope").open()


async def test_state_written_over_several_commits_is_restored_whole(tansu: TansuBroker) -> None:
    tansu.create_topic("in", partitions=3)
    log = changelog(tansu, "in", settle=0.3)
    await log.open()
    writer = stage(log)
    offsets = {p: 0 for p in range(3)}
    for commit in range(4):  # several flushes: several batches per partition
        records = []
        for i in range(300):
            p = i % 3
            t = commit * 3 + i / 100  # windows [0, 10) close during the third commit
            records.append(
                Record(
                    key=None,
                    value={"k": f"p{p}-{i % 7}", "t": t, "x": i},
                    event_time=0,
                    topic="in",
                    partition=p,
                    offset=offsets[p],
                )
            )
            offsets[p] += 1
        writer.absorb(records, now=0.0)
        changes = writer.changes({("in", p): o for p, o in offsets.items()})
        writer.write(changes)
        await log.flush()
    reader = stage(changelog(tansu, "in", topic=log.topic))
    starts = await reader.restore([("in", 0), ("in", 1), ("in", 2)])
    assert starts == {("in", p): 400 for p in range(3)}
    assert reader.operator.live_states == writer.operator.live_states > 0

    def flushed(s: WindowStage) -> list[tuple[Any, ...]]:
        return sorted((w.key, w.window_start, w.count, w.value["s"]) for w in s.close_all())

    assert flushed(reader) == flushed(writer)
    await log.close()
