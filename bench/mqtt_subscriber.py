"""The MQTT subscriber a user would write instead of Headrace: paho, QoS 1, the light model,
each output a JSON line in a file.

``--mode message`` scores each message in ``on_message`` (paho acknowledges it when the
callback returns: a crash loses what was buffered in the file); ``--mode batch`` has
``on_message`` queue the message and the main thread score up to ``--batch`` at once
(waiting at most 5 ms for more), write them, and only then acknowledge them
(``manual_ack``: at-least-once, as Headrace). Both use a persistent session named by
``--client-id`` with a Receive Maximum of 1,000 (Headrace's default ``max_inflight``).

``--count 0`` only creates the session (connect, subscribe, disconnect), so that a
backlog can be published into it; otherwise it prints ``first TIME CPU`` when its first
output is written and ``done TIME CPU N`` when ``--count`` are, and exits.

    python -m bench.mqtt_subscriber --port P --topic T --client-id C --out F --count N
        [--mode message|batch] [--batch 256]
"""

from __future__ import annotations

import argparse
import json
import queue
import threading
import time
from typing import Any

import numpy as np
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from bench.plain_loop import light

MODEL = {"name": "logistic", "version": "1"}


def _cpu() -> float:
    return time.process_time()


def _output(topic: str, v: dict[str, Any], p: float, processed_at: float) -> str:
    return json.dumps(
        {
            "key": v["entity_id"],
            "input": v,
            "prediction": p,
            "model": MODEL,
            "source": {"topic": topic},
            "event_time": v["ts"],
            "processed_at": processed_at,
        }
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--client-id", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--mode", choices=["message", "batch"], default="batch")
    parser.add_argument("--batch", type=int, default=256)
    args = parser.parse_args()
    batch_mode = args.mode == "batch"
    client = paho.Client(
        CallbackAPIVersion.VERSION2,
        client_id=args.client_id,
        protocol=paho.MQTTv5,
        manual_ack=batch_mode,
    )
    subscribed = threading.Event()
    client.on_subscribe = lambda *_: subscribed.set()
    out = open(args.out, "w")  # noqa: SIM115 - closed at the end of main
    written = 0
    first: float | None = None
    done = threading.Event()

    def mark(n: int) -> None:
        nonlocal written, first
        if first is None:
            first = time.time()
            print(f"first {first} {_cpu()}", flush=True)
        written += n
        if written >= args.count:
            print(f"done {time.time()} {_cpu()} {written}", flush=True)
            done.set()

    inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
    if batch_mode:
        client.on_message = lambda _c, _u, m: inbox.put(m)
    else:

        def on_message(_c: Any, _u: Any, m: Any) -> None:
            v = json.loads(m.payload)
            p = float(light(np.array([v["features"]], dtype=np.float32))[0])
            out.write(_output(m.topic, v, p, time.time()) + "\n")
            mark(1)

        client.on_message = on_message
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    props.SessionExpiryInterval = 600
    props.ReceiveMaximum = 1000
    client.connect("127.0.0.1", args.port, 30, clean_start=False, properties=props)
    client.subscribe(args.topic, qos=1)
    client.loop_start()
    if not subscribed.wait(30):
        raise SystemExit("no SUBACK within 30 s")
    if args.count == 0:
        client.disconnect()
        client.loop_stop()
        return
    while batch_mode and not done.is_set():
        try:
            msgs = [inbox.get(timeout=1.0)]
        except queue.Empty:
            continue
        while len(msgs) < args.batch:
            try:
                msgs.append(inbox.get(timeout=0.005))
            except queue.Empty:
                break
        values = [json.loads(m.payload) for m in msgs]
        x = np.array([v["features"] for v in values], dtype=np.float32)
        preds = light(x).tolist()
        now = time.time()
        out.write(
            "".join(
                _output(m.topic, v, p, now) + "\n"
                for m, v, p in zip(msgs, values, preds, strict=True)
            )
        )
        out.flush()
        for m in msgs:
            client.ack(m.mid, 1)
        mark(len(msgs))
    done.wait()
    out.close()
    client.disconnect()
    client.loop_stop()


if __name__ == "__main__":
    main()
