"""The raw broker rate for benchmarks/fleet.py: a plain paho publisher and subscriber.

    python -m benchmarks.fleet_raw HOST PORT CHUNKS.msgpack COUNT   (the publisher)

The publisher, its own process, sends the chunks of one real update COUNT times at QoS 1
as fast as the broker takes them; `raw_rate` subscribes in this process, counts what
arrives, and gives the rate in whole updates per second: what the same mosquitto can
deliver to one Python subscriber, the ceiling for the aggregator's ingest.

With `reply=True` the subscriber also publishes a small acknowledgement (QoS 1, the size
of fedge's ack) for every whole update it receives, from paho's own callback, and does
nothing else: the least any aggregator that answers each device must do, so its rate is
the ceiling for one paho process that verifies, stores and decodes nothing.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
import paho.mqtt.client as mqtt

from edge_client.shared import paho_compat

ROOT = Path(__file__).resolve().parents[1]
TOPIC = "fleetbench/raw"
REPLY_TOPIC = "fleetbench/raw/ack"
REPLY = bytes(64)  # about the size of an encoded Ack
INFLIGHT = 200


@dataclass(frozen=True)
class RawRate:
    updates: int
    chunks_per_update: int
    update_bytes: int
    seconds: float

    @property
    def updates_per_s(self) -> float:
        return self.updates / self.seconds if self.seconds > 0 else 0.0


class _Counter:
    def __init__(self, expected: int, reply_every: int = 0) -> None:
        self.expected = expected
        self.reply_every = reply_every  # > 0: publish an ack after every that many chunks
        self.count = 0
        self.first: float | None = None
        self.last = 0.0
        self.all_in = threading.Event()
        self.subscribed = threading.Event()

    def on_message(self, client: Any, _userdata: Any, _message: Any) -> None:
        now = time.perf_counter()
        if self.first is None:
            self.first = now
        self.count += 1
        if self.reply_every and self.count % self.reply_every == 0:
            client.publish(REPLY_TOPIC, REPLY, qos=1)
        self.last = now
        if self.count >= self.expected:
            self.all_in.set()

    def on_subscribe(self, *_: Any) -> None:
        self.subscribed.set()


def raw_rate(host: str, port: int, chunks: list[bytes], updates: int, workdir: Path,
             timeout_s: float = 300.0, reply: bool = False) -> RawRate:
    """Deliver `updates` copies of `chunks` through the broker and time the subscriber
    (which, with `reply`, acknowledges every whole update with a publish)."""
    counter = _Counter(updates * len(chunks), len(chunks) if reply else 0)
    sub = paho_compat.new_client("fleetbench-raw-reply" if reply else "fleetbench-raw-sub")
    sub.on_message = counter.on_message
    sub.on_subscribe = counter.on_subscribe
    sub.max_inflight_messages_set(INFLIGHT)
    sub.connect(host, port, 60)
    sub.subscribe(TOPIC, qos=1)
    sub.loop_start()
    try:
        if not counter.subscribed.wait(10):
            raise RuntimeError("raw subscriber: no SUBACK from the broker")
        payload = workdir / "raw-chunks.msgpack"
        payload.write_bytes(msgpack.packb(chunks, use_bin_type=True))
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)}
        publisher = subprocess.Popen([sys.executable, "-m", "benchmarks.fleet_raw", host,
                                      str(port), str(payload), str(updates)], cwd=ROOT,
                                     env=env)
        counter.all_in.wait(timeout_s)
        publisher.wait(timeout=30)
    finally:
        sub.disconnect()
        sub.loop_stop()
    seconds = counter.last - counter.first if counter.first is not None else 0.0
    return RawRate(counter.count // max(1, len(chunks)), len(chunks),
                   sum(len(c) for c in chunks), seconds)


def publish(host: str, port: int, chunks: list[bytes], updates: int) -> None:
    """The publisher: every chunk of every copy at QoS 1, at most INFLIGHT unconfirmed."""
    pub = paho_compat.new_client("fleetbench-raw-pub")
    pub.max_inflight_messages_set(INFLIGHT)
    pub.max_queued_messages_set(0)
    pub.connect(host, port, 60)
    pub.loop_start()
    infos: list[mqtt.MQTTMessageInfo] = []
    for _ in range(updates):
        infos += [pub.publish(TOPIC, chunk, qos=1) for chunk in chunks]
    for info in infos:
        info.wait_for_publish(60)
    pub.disconnect()
    pub.loop_stop()


def main() -> None:
    host, port, path, count = sys.argv[1:5]
    chunks = msgpack.unpackb(Path(path).read_bytes(), raw=False)
    publish(host, int(port), list(chunks), int(count))


if __name__ == "__main__":
    main()
