"""Helpers the MQTT tests share: publishing numbered messages, and reading a source up to
a *fence*. ``from mqtt_helpers import Reader, ids_of, publish``.

To see what a broker still holds for a session, a test publishes a fence message and
reads until it arrives: the broker resends a session's unacknowledged messages when the
client connects, before anything published later, so whatever comes before the fence is
exactly what was left unacknowledged. No waiting for silence, no sleeps.
"""

from __future__ import annotations

import asyncio

import msgspec
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from headrace.connectors.mqtt import MqttSource
from headrace.record import Record

FENCE = -1  # the id of a fence message

encode = msgspec.json.encode
decode = msgspec.json.Decoder().decode


def publish(topic: str, ids: range | list[int], *, host: str, port: int) -> None:
    """Publish ``{"id": i, "features": [i, 1]}`` at QoS 1 (plain TCP); return once the
    broker has acknowledged every one (so it holds them for every subscribed session)."""
    c = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv311)
    c.max_inflight_messages_set(100)
    c.connect(host, port)
    c.loop_start()
    try:
        infos = [c.publish(topic, encode({"id": i, "features": [float(i), 1.0]}), 1) for i in ids]
        for info in infos:
            info.wait_for_publish(10)
            assert info.is_published(), "the broker did not acknowledge a publish"
    finally:
        c.disconnect()
        c.loop_stop()


def ids_of(records: list[Record]) -> list[int]:
    return [decode(r.raw)["id"] for r in records if r.raw is not None]


class Reader:
    """Reads a source's chunks in the test's own pace. Fences are published to
    ``publish_at`` (host, port: a plain TCP listener of the same broker), by default to
    the source's own host and port."""

    def __init__(self, source: MqttSource, publish_at: tuple[str, int] | None = None) -> None:
        self.source = source
        self.fence: Record | None = None
        self.publish_at = publish_at or (source.host, source.port)
        self._chunks = source.chunks().__aiter__()

    async def take(self, n: int, timeout: float = 10) -> list[Record]:  # noqa: ASYNC109
        """Exactly the next ``n`` records."""
        out: list[Record] = []
        async with asyncio.timeout(timeout):
            while len(out) < n:
                out.extend(await self._chunks.__anext__())
        assert len(out) == n, f"expected {n} records, got {len(out)}: {ids_of(out)}"
        return out

    async def until_fence(self, topic: str, timeout: float = 10) -> list[Record]:  # noqa: ASYNC109
        """Publish a fence and return every record that came before it (the fence is
        kept in ``self.fence``)."""
        host, port = self.publish_at
        await asyncio.to_thread(publish, topic, [FENCE], host=host, port=port)
        out: list[Record] = []
        async with asyncio.timeout(timeout):
            while True:
                for r in await self._chunks.__anext__():
                    if ids_of([r]) == [FENCE]:
                        self.fence = r
                        return out
                    out.append(r)
