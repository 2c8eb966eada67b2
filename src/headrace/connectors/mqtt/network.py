"""The half of the MQTT source that runs on paho's network thread: connections, the
subscription, arriving messages, and the state it shares with the event loop.

paho calls these callbacks on its own thread; everything they share with the reader on
the event loop is guarded by one lock, and the event loop is woken with
``call_soon_threadsafe``. An exception in a callback fails the source (left alone, it
would end paho's thread, and the source would wait forever).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Literal, TypeVar, cast

import paho.mqtt.client as paho
from paho.mqtt.subscribeoptions import SubscribeOptions

from headrace.errors import HeadraceError
from headrace.record import Record, source_record

log = logging.getLogger("headrace.mqtt")
paho_log = logging.getLogger("headrace.mqtt.paho")


class _QuietCleanStop(logging.Filter):
    """paho's network thread logs an ERROR ("Client is not connected") as it ends after a
    clean DISCONNECT; lost connections are reported by the source itself. Demote it."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR and str(record.msg).startswith(
            "Client is not connected"
        ):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return paho_log.isEnabledFor(logging.DEBUG)
        return True


paho_log.addFilter(_QuietCleanStop())

Protocol = Literal[5, "3.1.1"]

# paho's log line for a TLS alert the broker sent: "[SSL: ...] tlsv13 alert certificate
# required (_ssl.c:2576)".
_TLS_ALERT = re.compile(r"\[SSL: [A-Z0-9_]*ALERT[A-Z0-9_]*\] ([^(]*?alert[^(]*?)\s*(?:\(|$)")


class MqttError(HeadraceError, RuntimeError):
    """The broker refused the connection or a subscription, or granted less than asked."""


_Callback = TypeVar("_Callback", bound=Callable[..., None])


def _guarded(callback: _Callback) -> _Callback:
    """Turn an exception in a paho callback into a failure of the source: left alone, it
    would end paho's network thread, and the source would wait forever."""

    @functools.wraps(callback)
    def guarded(self: PahoCallbacks, *args: Any) -> None:
        try:
            callback(self, *args)
        except Exception as exc:
            log.exception("mqtt source %s: %s failed", self.name, callback.__name__)
            self._fail(exc)

    return cast(_Callback, guarded)


class PahoCallbacks:
    """What paho calls, and the state it shares with the event loop: the base of
    :class:`~headrace.connectors.mqtt.source.MqttSource`, which adds what the engine
    calls."""

    def __init__(
        self,
        topics: list[str],
        *,
        client_id: str,
        host: str,
        port: int,
        qos: int,
        protocol: Protocol,
        max_inflight: int,
        name: str,
    ) -> None:
        self.topics = topics
        self.client_id = client_id
        self.host = host
        self.port = port
        self.qos = qos
        self.protocol: Protocol = protocol
        self.max_inflight = max_inflight
        self.name = name
        self.topic = f"mqtt:{client_id}"
        self.dropped = 0  # QoS 0 messages dropped because the buffer was full
        self._loop: asyncio.AbstractEventLoop | None = None
        # Shared with paho's network thread; every field below is guarded by _lock.
        self._lock = threading.Lock()
        # Arrived, not yet handed to the engine: (record, connection epoch, qos).
        self._buffer: deque[tuple[Record, int, int]] = deque()
        # Handed over or not, not yet acknowledged, in arrival order: (offset, mid, qos).
        # Only messages of the current connection: packet ids are per connection, so an
        # entry from before a reconnect is dropped, never acknowledged.
        self._pending: deque[tuple[int, int, int]] = deque()
        self._epoch = 0
        self._next_offset = 0
        self._notify = False  # the reader waits: the next arrival must wake it
        self._connected_once = False
        self._connected = False
        self._closing = False
        self._fatal: BaseException | None = None
        self._wakeup = asyncio.Event()
        self._ready: asyncio.Future[None] | None = None
        self._sub_mid: int | None = None
        self._barrier: asyncio.Future[None] | None = None
        self._barrier_mid: int | None = None

    # -- paho callbacks, on its network thread --------------------------------------------

    @_guarded
    def _on_pre_connect(self, client: paho.Client, userdata: Any) -> None:
        self._new_epoch()

    @_guarded
    def _on_disconnect(
        self, client: paho.Client, userdata: Any, flags: Any, reason: Any, properties: Any
    ) -> None:
        self._connected = False
        self._new_epoch()
        if not self._closing:
            log.warning(
                "mqtt source %s: connection lost (%s); reconnecting. Unacknowledged messages "
                "come again from the broker (at-least-once)",
                self.name,
                reason,
            )

    @_guarded
    def _on_log(self, client: paho.Client, userdata: Any, level: int, buf: str) -> None:
        """A TLS alert from the broker before it ever accepted this client (it wants a
        client certificate, or does not trust the one given) reaches paho only as a log
        line, after which paho would retry until open() times out: fail at once. Set until
        the first CONNACK only."""
        if self._connected_once or self._closing or level != paho.MQTT_LOG_ERR:
            return
        alert = _TLS_ALERT.search(buf)
        if alert is None:
            return
        self._fail(
            MqttError(
                f"mqtt {self.host}:{self.port}: TLS: the broker refused this client "
                f"({alert.group(1)}); if it authenticates clients by certificate, set "
                "source.tls.cert_file and source.tls.key_file to a certificate it trusts"
            )
        )

    def _new_epoch(self) -> None:
        """Packet ids belong to a connection: forget those of the one that ended."""
        with self._lock:
            self._epoch += 1
            self._pending.clear()

    @_guarded
    def _on_connect(
        self, client: paho.Client, userdata: Any, flags: Any, reason: Any, properties: Any
    ) -> None:
        if reason.is_failure:
            error = MqttError(f"mqtt {self.host}:{self.port} refused the connection: {reason}")
            if not self._connected_once:
                self._fail(error)
            else:
                log.error("mqtt source %s: %s; retrying", self.name, error)
            return
        # Only the first connection's TLS alerts matter (see _on_log); with on_log set,
        # paho formats every log line, one per message received, whether logged or not.
        client.on_log = None
        session_present = bool(flags.session_present)
        with self._lock:
            epoch = self._epoch
            if session_present:
                # The broker resends every unacknowledged message of the session, those not
                # yet handed to the engine included: keep one copy, the resent one.
                self._buffer = deque(e for e in self._buffer if e[2] == 0 or e[1] == epoch)
            else:
                # Nothing will be resent: what is buffered is the only copy.
                self._buffer = deque((r, epoch, q) for r, _, q in self._buffer)
            wake = bool(self._buffer) and self._notify
            if wake:
                self._notify = False
        if wake:
            self._call_soon(self._wakeup.set)
        if session_present:
            if not self._connected_once:
                log.info("mqtt source %s: resumed session %s", self.name, self.client_id)
        elif self._connected_once:
            log.warning(
                "mqtt source %s: the broker no longer had session %s (expired, or the broker "
                "lost it): messages published while disconnected are lost",
                self.name,
                self.client_id,
            )
        else:
            log.info(
                "mqtt source %s: the broker had no session %s, a new one starts now (if this "
                "client_id ran before, its session expired and what was queued in it is gone)",
                self.name,
                self.client_id,
            )
        self._connected_once = self._connected = True
        self._subscribe(client)

    def _subscribe(self, client: paho.Client) -> None:
        """Subscribe on every connection: it is idempotent, and adds filters that were added
        to the configuration since the session began (removed ones stay subscribed until
        the session ends). MQTT 5 sends retained messages only for a new subscription."""
        topics: list[tuple[str, Any]]
        if self.protocol == 5:
            topics = [
                (
                    t,
                    SubscribeOptions(
                        qos=self.qos, retainHandling=SubscribeOptions.RETAIN_SEND_IF_NEW_SUB
                    ),
                )
                for t in self.topics
            ]
        else:
            topics = [(t, self.qos) for t in self.topics]
        result, mid = client.subscribe(topics)
        if result != 0:
            # Not connected after all (the connection dropped again): the next CONNACK
            # subscribes again.
            log.warning("mqtt source %s: subscribe not sent (%s)", self.name, result)
            return
        self._sub_mid = mid

    @_guarded
    def _on_subscribe(
        self, client: paho.Client, userdata: Any, mid: int, reasons: list[Any], properties: Any
    ) -> None:
        if mid != self._sub_mid:
            return
        for topic, reason in zip(self.topics, reasons, strict=False):
            if reason.is_failure:
                self._fail(MqttError(f"mqtt subscription to {topic!r} refused: {reason}"))
                return
            granted = int(reason.value)
            if granted < self.qos:
                self._fail(
                    MqttError(
                        f"mqtt subscription to {topic!r}: asked QoS {self.qos}, the broker "
                        f"granted only QoS {granted}, which does not keep at-least-once"
                    )
                )
                return
        self._call_soon(self._set_ready)

    @_guarded
    def _on_unsubscribe(
        self, client: paho.Client, userdata: Any, mid: int, reasons: list[Any], properties: Any
    ) -> None:
        with self._lock:
            barrier = self._barrier if mid == self._barrier_mid else None
        if barrier is not None:
            self._call_soon(_resolve, barrier)

    @_guarded
    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        now = time.time()
        topic_bytes = msg._topic  # the MQTTMessage.topic property raises on invalid UTF-8
        topic = topic_bytes.decode("utf-8", "replace")
        headers: list[tuple[str, bytes]] = [("mqtt-topic", topic_bytes)]
        if msg.dup:
            headers.append(("mqtt-dup", b"1"))
        if msg.retain:
            headers.append(("mqtt-retain", b"1"))
        props = getattr(msg, "properties", None)
        for key, value in getattr(props, "UserProperty", None) or ():
            headers.append((str(key), str(value).encode()))
        qos = msg.qos
        payload = msg.payload if isinstance(msg.payload, bytes) else bytes(msg.payload)
        with self._lock:
            if self._closing:
                return  # not acknowledged: the broker sends it again next time
            if qos == 0 and len(self._buffer) >= self.max_inflight:
                self.dropped += 1
                if self.dropped == 1 or self.dropped % 10_000 == 0:
                    log.warning(
                        "mqtt source %s: %s QoS 0 messages dropped so far: they arrive "
                        "faster than the pipeline reads (QoS 0 is at most once)",
                        self.name,
                        self.dropped,
                    )
                return
            offset = self._next_offset
            self._next_offset += 1
            record = source_record(
                key=topic,
                value=None,
                event_time=now,
                topic=self.topic,
                partition=0,
                offset=offset,
                raw=payload,
                headers=headers,
            )
            self._buffer.append((record, self._epoch, qos))
            if qos > 0:
                self._pending.append((offset, msg.mid, qos))
            wake, self._notify = self._notify, False
        if wake:
            self._call_soon(self._wakeup.set)

    # -- helpers -------------------------------------------------------------------------

    def _fail(self, error: BaseException) -> None:
        self._fatal = error
        self._call_soon(self._fail_on_loop, error)

    def _fail_on_loop(self, error: BaseException) -> None:
        if self._ready is not None and not self._ready.done():
            self._ready.set_exception(error)
        self._wakeup.set()

    def _set_ready(self) -> None:
        if self._ready is not None:
            _resolve(self._ready)

    def _call_soon(self, fn: Any, *args: Any) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(fn, *args)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
