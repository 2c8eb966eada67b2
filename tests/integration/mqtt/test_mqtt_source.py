"""The MQTT source against a real Mosquitto (127.0.0.1:1883, or ``HEADRACE_TEST_MQTT`` as
``host:port``): no mocks.

Oracle: every message carries a unique ``id``; missing = published - output, duplicates =
outputs - distinct outputs. At-least-once promises missing == 0, duplicates bounded by
what was written but not yet acknowledged when a worker died; a graceful stop, no
duplicates at all.

To see what a broker still holds for a session, a test publishes a *fence* message and
reads until it arrives: the broker resends a session's unacknowledged messages when the
client connects, before anything published later, so whatever comes before the fence is
exactly what was left unacknowledged. No waiting for silence, no sleeps.
"""

from __future__ import annotations

import asyncio
import os
import re
import socket
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from headrace import CallableModel
from headrace.build import KafkaParts, build_source
from headrace.config import ConfigError, MqttSourceConfig, parse_config
from headrace.connectors.mqtt import MqttSource
from headrace.runtime.decode import JsonDecoder
from headrace.runtime.engine import Engine, EngineSettings
from headrace.runtime.spec import PipelineSpec
from helpers import MemorySink, wait_for
from mqtt_helpers import Reader, ids_of
from mqtt_helpers import publish as publish_to
from workers import Worker, models_env, wait_until

paho = pytest.importorskip("paho.mqtt.client")
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402
from paho.mqtt.packettypes import PacketTypes  # noqa: E402
from paho.mqtt.properties import Properties  # noqa: E402

BROKER = os.environ.get("HEADRACE_TEST_MQTT", "127.0.0.1:1883")
HOST, _, _PORT = BROKER.rpartition(":")
PORT = int(_PORT)
decode = msgspec.json.Decoder().decode


# -- fixtures and helpers ----------------------------------------------------------------


@pytest.fixture(scope="module")
def mqtt_broker() -> str:
    """The broker's address; skips (fails on CI) when nothing listens there."""
    try:
        socket.create_connection((HOST, PORT), timeout=2).close()
    except OSError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"Mosquitto not reachable at {BROKER}: {exc}")
        pytest.skip(f"Mosquitto not reachable at {BROKER}: {exc}")
    return BROKER


class Names:
    """A topic and a client id no other test (or earlier run) uses."""

    def __init__(self) -> None:
        tag = uuid.uuid4().hex[:12]
        self.topic = f"headrace-test/{tag}"
        self.client_id = f"headrace-test-{tag}"
        self.position_topic = f"mqtt:{self.client_id}"


@pytest.fixture
def names(mqtt_broker: str) -> Iterator[Names]:
    n = Names()
    yield n
    drop_session(n.client_id)


def drop_session(client_id: str) -> None:
    """End a session on the broker: connect with a clean start and expiry 0."""
    c = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5)
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    props.SessionExpiryInterval = 0
    c.connect(HOST, PORT, clean_start=True, properties=props)
    c.loop_start()
    c.disconnect()
    c.loop_stop()


def create_session(client_id: str, topic: str, expiry_s: int = 300) -> None:
    """Create the persistent session a worker will use, with its subscription: messages
    published from now on are kept for it, whether or not a worker is connected."""
    done: list[Any] = []
    c = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5)
    c.on_subscribe = lambda *args: done.append(args)
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    props.SessionExpiryInterval = expiry_s
    c.connect(HOST, PORT, clean_start=True, properties=props)
    c.loop_start()
    c.subscribe(topic, qos=1)
    wait_until(lambda: bool(done), 10, "SUBACK")
    c.disconnect()
    c.loop_stop()


def publish(topic: str, ids: range | list[int]) -> None:
    """Publish numbered messages to the broker under test (see :mod:`mqtt_helpers`)."""
    publish_to(topic, ids, host=HOST, port=PORT)


class RecordingSource(MqttSource):
    """Records every acknowledgement it sends, in order, as (mid, qos)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.acks: list[tuple[int, int]] = []

    def _send_ack(self, client: Any, mid: int, qos: int) -> None:
        self.acks.append((mid, qos))
        super()._send_ack(client, mid, qos)

    def unacked(self) -> list[tuple[int, int, int]]:
        """(offset, mid, qos) of the current connection's unacknowledged messages."""
        with self._lock:
            return list(self._pending)


def source(
    names: Names, cls: type[MqttSource] = MqttSource, *, topic: str | None = None, **kw: Any
) -> Any:
    kw.setdefault("session_expiry_s", 300)
    topics = [topic or names.topic]
    return cls(topics, client_id=names.client_id, host=HOST, port=PORT, **kw)


# -- the source on its own ---------------------------------------------------------------


@pytest.mark.mqtt
async def test_commit_acknowledges_exactly_the_messages_below_the_position(
    names: Names,
) -> None:
    """Acknowledgements go out in arrival order, for messages below the position only;
    the broker then resends exactly the others, flagged as duplicates, to the next
    connection of the session."""
    first = source(names, RecordingSource)
    await first.open()
    try:
        await asyncio.to_thread(publish, names.topic, range(10))
        reader = Reader(first)
        records = await reader.take(10)
        assert ids_of(records) == list(range(10))
        offsets = [r.offset for r in records]
        assert offsets == sorted(set(offsets)), "offsets increase"
        assert {(r.topic, r.partition) for r in records} == {(names.position_topic, 0)}
        assert records[0].key == names.topic
        assert records[0].headers is not None
        assert ("mqtt-topic", names.topic.encode()) in records[0].headers
        unacked = first.unacked()
        assert [o for o, _, _ in unacked] == offsets

        position = records[4].offset
        await first.commit({(names.position_topic, 0): position})
        assert first.acks == [(mid, qos) for o, mid, qos in unacked if o < position]
        assert len(first.acks) == 4
        await first.commit({(names.position_topic, 0): position})  # again: nothing new
        await first.commit({("another", 0): records[-1].offset + 1})  # not ours
        assert len(first.acks) == 4
    finally:
        await first.close()

    second = source(names, RecordingSource)
    await second.open()
    try:
        reader = Reader(second)
        again = await reader.until_fence(names.topic)
        assert ids_of(again) == [4, 5, 6, 7, 8, 9]
        assert all(("mqtt-dup", b"1") in (r.headers or ()) for r in again)
        assert min(r.offset for r in again) > records[-1].offset, "positions never repeat"
        assert reader.fence is not None
        await second.commit({(names.position_topic, 0): reader.fence.offset + 1})
    finally:
        await second.close()

    third = source(names)
    await third.open()
    try:
        assert ids_of(await Reader(third).until_fence(names.topic)) == []
    finally:
        await third.close()


@pytest.mark.mqtt
async def test_after_a_lost_connection_old_packet_ids_are_never_acknowledged(
    names: Names,
) -> None:
    """Packet ids belong to a connection. After a reconnect the broker resends what was
    unacknowledged; a commit covering the old copies must not acknowledge anything (an old
    id may name another message by then), and buffered copies not yet read are dropped
    in favour of the resent ones, so each message is read once more, not twice."""
    src = source(names, RecordingSource)
    await src.open()
    try:
        reader = Reader(src)
        await asyncio.to_thread(publish, names.topic, range(5))
        old = await reader.take(5)
        await asyncio.to_thread(publish, names.topic, range(5, 8))
        await wait_for(lambda: len(src._buffer) == 3)  # arrived, not read yet

        client = src.client
        assert client is not None
        sock = client.socket()
        assert isinstance(sock, socket.socket)
        sock.shutdown(socket.SHUT_RDWR)  # the network drops; paho reconnects
        await wait_for(lambda: not src.connected)

        resent = await reader.take(8, timeout=20)
        assert ids_of(resent) == list(range(8))
        assert min(r.offset for r in resent) > old[-1].offset
        await src.commit({(names.position_topic, 0): old[-1].offset + 1})
        assert src.acks == [], "an old connection's packet id was acknowledged"
        await src.commit({(names.position_topic, 0): resent[-1].offset + 1})
        assert len(src.acks) == 8
    finally:
        await src.close()
    check = source(names)
    await check.open()
    try:
        assert ids_of(await Reader(check).until_fence(names.topic)) == []
    finally:
        await check.close()


@pytest.mark.mqtt
async def test_close_leaves_uncommitted_messages_to_the_next_connection(names: Names) -> None:
    src = source(names, RecordingSource, protocol="3.1.1")
    await src.open()
    try:
        await asyncio.to_thread(publish, names.topic, range(3))
        await Reader(src).take(3)
    finally:
        await src.close()
    assert src.acks == []
    again = source(names, protocol="3.1.1")
    await again.open()
    try:
        assert ids_of(await Reader(again).until_fence(names.topic)) == [0, 1, 2]
    finally:
        await again.close()


@pytest.mark.mqtt
async def test_qos_0_is_never_acknowledged_and_bounded_by_dropping(names: Names) -> None:
    """QoS 0 promises at most once: nothing to acknowledge, and rather than grow without
    bound the source drops what arrives while ``max_inflight`` messages wait to be read."""
    src = source(names, RecordingSource, qos=0, max_inflight=5)
    await src.open()
    try:
        await asyncio.to_thread(publish, names.topic, range(20))
        await wait_for(lambda: src.dropped + len(src._buffer) == 20)
        assert (src.dropped, len(src._buffer)) == (15, 5)
        records = await Reader(src).take(5)
        assert ids_of(records) == [0, 1, 2, 3, 4]
        await src.commit({(names.position_topic, 0): records[-1].offset + 1})
        assert src.acks == [] and src.unacked() == []
    finally:
        await src.close()


def test_an_invalid_topic_filter_is_refused_before_connecting() -> None:
    """paho would raise inside its network thread, out of sight."""
    with pytest.raises(ValueError, match="'#' must be the last level"):
        MqttSource(["a/#/b"], client_id="c")
    with pytest.raises(ValueError, match="shared subscription"):
        MqttSource(["$share//t"], client_id="c")


async def test_an_unreachable_broker_is_an_error_at_open() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: connections are refused
        src = MqttSource(["t"], client_id="headrace-test-unreachable", port=port)
        with pytest.raises(ConnectionRefusedError):
            await src.open()


# -- end to end ------------------------------------------------------------------------


@pytest.mark.mqtt
async def test_records_are_scored_end_to_end_and_all_acknowledged(names: Names) -> None:
    n = 600
    # Two topics under one filter: the key is each message's own topic.
    src = source(names, topic=f"{names.topic}/#", max_inflight=100)
    sink = MemorySink()
    engine = Engine(
        PipelineSpec(
            source=src,
            model=CallableModel(lambda xs: [x["id"] * 2 for x in xs], name="double"),
            sinks=[sink],
            decoder=JsonDecoder(),
            settings=EngineSettings(max_batch_size=64, max_wait=0.005, commit_interval=0.05),
        )
    )
    run = asyncio.create_task(engine.run())
    await wait_for(lambda: engine.healthy or run.done(), 10)
    await asyncio.to_thread(publish, f"{names.topic}/a", range(0, n, 2))
    await asyncio.to_thread(publish, f"{names.topic}/b", range(1, n, 2))
    await wait_for(lambda: len(sink.outputs) >= n or run.done(), 20)
    engine.stop()
    summary = await run
    ids = [o["input"]["id"] for o in sink.outputs]
    assert sorted(ids) == list(range(n)), "every message scored exactly once"
    assert all(o["prediction"] == 2 * o["input"]["id"] for o in sink.outputs)
    assert {o["key"] for o in sink.outputs} == {f"{names.topic}/a", f"{names.topic}/b"}
    last = max(o["source"]["offset"] for o in sink.outputs)
    assert summary.committed[(names.position_topic, 0)] == last + 1

    check = MqttSource([f"{names.topic}/#"], client_id=names.client_id, host=HOST, port=PORT)
    await check.open()
    try:
        assert ids_of(await Reader(check).until_fence(f"{names.topic}/a")) == []
    finally:
        await check.close()


# -- a real worker, killed -------------------------------------------------------------

MAX_INFLIGHT = 100  # the source's window (a hint to the broker)
MAX_IN_FLIGHT = 64  # the engine's: records between source and sink


def mqtt_pipeline(tmp_path: Path, names: Names, out: Path) -> Path:
    path = tmp_path / "mqtt.yaml"
    path.write_text(
        f"""
name: mqtt-test
source:
  type: mqtt
  host: {HOST}
  port: {PORT}
  topics: [{names.topic}]
  client_id: {names.client_id}
  session_expiry_s: 300
  max_inflight: {MAX_INFLIGHT}
  max_records: 16
model:
  type: callable
  name: feature-sum
  version: "1"
  function: workermodels:score
  features:
    vector: features
batching:
  max_size: 8
  max_wait_ms: 5
flow:
  max_in_flight: {MAX_IN_FLIGHT}
runtime:
  commit_interval_ms: 50
  shutdown_timeout_s: 20
sinks:
  - type: jsonl
    path: {out}
"""
    )
    return path


def output_ids(out: Path) -> list[int]:
    """Ids in the output file's complete lines (a SIGKILL can leave half a line)."""
    if not out.exists():
        return []
    lines = out.read_bytes().split(b"\n")[:-1]
    return [decode(line)["input"]["id"] for line in lines]


@pytest.mark.mqtt
@pytest.mark.parametrize("signal", ["KILL", "TERM"])
def test_a_stopped_worker_loses_nothing_and_a_graceful_one_duplicates_nothing(
    names: Names, tmp_path: Path, signal: str
) -> None:
    """A worker is stopped mid-stream (SIGKILL or SIGTERM) while messages keep coming; a
    worker restarted with the same client_id gets what the first left unacknowledged and
    what arrived meanwhile. Acknowledging on receipt would lose the records the first
    worker held but had not written; acknowledging late duplicates only what was written
    but not yet committed, and a graceful stop commits everything it wrote."""
    first_batch, second_batch = range(400), range(400, 600)
    out = tmp_path / "out.jsonl"
    config = mqtt_pipeline(tmp_path, names, out)
    # A batch of 8 takes 50 ms, and the engine holds 64 records at most: the first
    # worker is stopped mid-stream, with records read and not yet written.
    env = models_env(tmp_path, delay=0.05)
    create_session(names.client_id, names.topic)
    publish(names.topic, first_batch)

    first = Worker(config, env, tmp_path / "first.log").start()
    try:
        wait_until(lambda: len(output_ids(out)) >= 100, 30, "first outputs", (first,))
        if signal == "KILL":
            first.kill()
        else:
            assert first.terminate() == 0, first.tail()
    finally:
        first.stop()
    stopped_at = len(set(output_ids(out)))
    assert stopped_at < len(first_batch), "the worker should have been stopped mid-stream"
    publish(names.topic, second_batch)

    second = Worker(config, env, tmp_path / "second.log").start()
    try:
        wait_until(lambda: set(output_ids(out)) >= set(range(600)), 30, "every output", (second,))
        assert second.terminate() == 0, second.tail()
    finally:
        second.stop()

    ids = Counter(output_ids(out))
    assert set(ids) == set(range(600)), f"missing: {sorted(set(range(600)) - set(ids))}"
    duplicates = sum(ids.values()) - len(ids)
    if signal == "TERM":
        assert duplicates == 0, "a graceful stop must acknowledge everything it wrote"
        assert "connection lost" not in first.tail() + second.tail()
    else:
        # Only what was written after the last commit is read again.
        assert duplicates <= MAX_INFLIGHT, f"{duplicates} duplicates"
    # Nothing is left unacknowledged in the session.
    leftover = MqttSource([names.topic], client_id=names.client_id, host=HOST, port=PORT)

    async def check() -> list[int]:
        await leftover.open()
        try:
            return ids_of(await Reader(leftover).until_fence(names.topic))
        finally:
            await leftover.close()

    assert asyncio.run(check()) == []


# -- configuration -----------------------------------------------------------------------

BASE: dict[str, Any] = {
    "model": {"type": "callable", "name": "m", "version": "1", "function": "mod:fn"},
    "sinks": [{"type": "stdout"}],
}


def test_the_configuration_builds_a_source_and_keeps_the_password_out_of_sight() -> None:
    config = parse_config(
        {
            **BASE,
            "source": {
                "type": "mqtt",
                "host": "broker.example",
                "port": "${MQTT_PORT}",
                "topics": ["plant/+/sensors", "$share/scorers/alerts/#"],
                "client_id": "scorer-1",
                "username": "${MQTT_USERNAME}",
                "password": "${MQTT_PASSWORD}",
                "protocol": "3.1.1",
                "max_inflight": 500,
                "key_field": "device",
            },
        },
        env={"MQTT_USERNAME": "user-7f3a", "MQTT_PASSWORD": "hunter2", "MQTT_PORT": "8883"},
    )
    c = config.source
    assert isinstance(c, MqttSourceConfig)
    assert (c.port, c.qos, c.session_expiry_s, c.keepalive_s) == (8883, 1, 86_400, 30)
    assert "hunter2" not in repr(c) and "hunter2" not in str(c) and "user-7f3a" not in repr(c)
    src, decoder = build_source(c, KafkaParts(config))
    assert isinstance(src, MqttSource)
    assert (src.host, src.port, src.protocol, src.max_inflight) == (
        "broker.example",
        8883,
        "3.1.1",
        500,
    )
    assert src.topics == ["plant/+/sensors", "$share/scorers/alerts/#"]
    assert decoder is not None and decoder.key_field == "device"
    assert "hunter2" not in repr(src) and "hunter2" not in repr(vars(src).get("password"))


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ({"qos": 2}, "at source.qos: qos 2 is refused"),
        ({"qos": 3}, "expected one of: 0, 1, 2"),
        ({"protocol": 3}, "expected one of: 5, '3.1.1'"),
        ({"topics": []}, "source.topics"),
        ({"client_id": ""}, "source.client_id"),
        ({"max_inflight": 70_000}, "source.max_inflight"),
        ({"topics": ["plant/sensor+"]}, "at source.topics: topic filter 'plant/sensor+' (entry 0)"),
        ({"topics": ["plant/sensor+"]}, "'+' must be a level alone"),
    ],
)
def test_configuration_mistakes_name_the_key(source: dict[str, Any], message: str) -> None:
    section = {"type": "mqtt", "topics": ["t"], "client_id": "c", **source}
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_config({**BASE, "source": section})


def test_protocol_5_is_the_default_and_may_be_written_as_a_number_or_a_string() -> None:
    for value in (5, "5"):
        section = {"type": "mqtt", "topics": ["t"], "client_id": "c", "protocol": value}
        c = parse_config({**BASE, "source": section}).source
        assert isinstance(c, MqttSourceConfig) and c.protocol == 5
