"""Static membership (KIP-345) against a real broker: a worker killed with SIGKILL and
started again with the same instance id gets the group's partitions back, carries on from
the offsets the first one committed, and nothing is missing.

Correctness only: how soon the restarted worker gets its partitions depends on the broker
(DEVELOPERS.md, "Tansu quirks"); ``bench/static_membership.py`` measures it.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import msgspec
import pytest

from kafka_helpers import TansuBroker
from workers import (
    TopicReader,
    Worker,
    committed,
    kafka_pipeline,
    log_text,
    models_env,
    reference_events,
    wait_until,
)

N = 12_000
HALF = N // 2
# Per batch of 64: slow enough that the kill lands mid-run.
DELAY = 0.05
INSTANCE = "scorer-0"


def source_positions(values: list[bytes]) -> list[tuple[int, int]]:
    """The input (partition, offset) of each output."""
    decode = msgspec.json.Decoder().decode
    return [(s["partition"], s["offset"]) for s in (decode(v)["source"] for v in values)]


@pytest.mark.timeout(240)
def test_a_static_member_killed_and_restarted_resumes_from_its_commits(
    tansu: TansuBroker, tmp_path: Path
) -> None:
    tansu.create_topic("events", 4)
    tansu.create_topic("predictions", 4)
    events = reference_events(N)
    # The second half is produced only once the first worker is dead: its outputs can
    # come from the restarted worker alone.
    tansu.produce_json("events", events[:HALF], key_field="entity_id")
    config = kafka_pipeline(
        tmp_path / "p.yaml", tansu.bootstrap, sinks="  - type: kafka\n    topic: predictions"
    )
    # The id from the environment, as a StatefulSet would give it.
    env = {**models_env(tmp_path, DELAY), "HEADRACE_INSTANCE_ID": INSTANCE}
    reader = TopicReader(tansu.bootstrap, "predictions", 4)
    first = Worker(config, env, tmp_path / "first.log").start()
    second = Worker(config, env, tmp_path / "second.log")
    try:
        # Kill only after outputs: on Tansu, a member stopped while still joining can
        # wedge its group for minutes.
        wait_until(lambda: reader.read() >= 2000, 90, "the first worker's outputs", (first,))
        first.kill()
        at_kill = committed(tansu.bootstrap, "scorers", "events", 4)
        tansu.produce_json("events", events[HALF:], key_field="entity_id")
        second.start()
        wait_until(lambda: len(set(reader.read() and reader.ids())) >= N, 120, "all", (second,))
        # A graceful stop of a static member: no LeaveGroup, but everything committed.
        assert second.terminate() == 0, second.tail()
        assert sum(committed(tansu.bootstrap, "scorers", "events", 4).values()) == N
        reader.read()
    finally:
        first.stop()
        second.stop()
        reader.close()
    for worker in (first, second):
        assert f"instance id {INSTANCE}," in log_text(worker), worker.tail()
    assert "assigned events[" in log_text(second)
    ids = reader.ids()
    assert set(ids) >= set(range(N)), f"{N - len(set(ids) & set(range(N)))} inputs missing"
    # The restart read from the committed offsets: what lay below them was scored once,
    # by the first worker, never again.
    assert sum(max(0, o) for o in at_kill.values()) > 0, "the first worker committed nothing"
    seen = Counter(source_positions(reader.values))
    below = {pos: n for pos, n in seen.items() if pos[1] < at_kill[pos[0]]}
    assert below and set(below.values()) == {1}
