"""The attacker of benchmarks/abuse.py: one process with one broker login, flooding.

    python benchmarks/abuse_attacks.py KIND --port PORT [--federation abuse]

Publishes as fast as the broker takes it (QoS 1, at most 1,000 unconfirmed) until SIGTERM,
then prints {"kind": ..., "sent": n, "bytes": b} on stdout. Its own process, so that its
Python does not share a GIL with anything it measures.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import threading
from collections.abc import Callable, Iterator

import paho.mqtt.client as mqtt

from edge_client.shared.protocol import Status, encode
from edge_client.shared.protocol.chunking import Chunk, encode_chunk, split

Message = tuple[str, bytes, bool]  # topic, payload, retain
WINDOW = 1000  # unconfirmed publishes at most


def junk_large(fed: str) -> Iterator[Message]:
    """60 KB of random bytes on one device's update topic: not even a chunk."""
    block = os.urandom(60_000)
    for i in range(10**9):
        yield f"fedge/{fed}/update/mallory", i.to_bytes(8, "big") + block, False


def junk_small(fed: str) -> Iterator[Message]:
    """Many tiny undecodable messages."""
    for i in range(10**9):
        yield f"fedge/{fed}/update/mallory", b"\xc1junk" + i.to_bytes(8, "big"), False


def unfinished_uploads(fed: str) -> Iterator[Message]:
    """First chunks of 150-byte uploads that never finish, from 5,000 device ids."""
    for i in range(10**9):
        chunk = Chunk(f"t{i}", 0, 2, 150, "0" * 64, os.urandom(75))
        yield f"fedge/{fed}/update/ghost{i % 5000}", encode_chunk(chunk), False


def rejected_updates(fed: str) -> Iterator[Message]:
    """Whole, well-chunked uploads of junk from one device: each one is a rejection."""
    for i in range(10**9):
        body = os.urandom(200)
        yield f"fedge/{fed}/update/mallory", split(body, f"r{i}")[0], False


def fake_statuses(fed: str) -> Iterator[Message]:
    """Retained "online and eligible" statuses of devices that do not exist."""
    for i in range(10**9):
        device = f"ghost{i % 20_000}"
        status = Status(device_id=device, online=True, eligible=True, model_version=0)
        yield f"fedge/{fed}/status/{device}", encode(status), True


ATTACKS: dict[str, Callable[[str], Iterator[Message]]] = {
    f.__name__: f for f in (junk_large, junk_small, unfinished_uploads, rejected_updates,
                            fake_statuses)}


def flood(kind: str, port: int, federation: str, stop: threading.Event) -> dict:
    client = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
                         client_id=f"mallory-{kind}", protocol=mqtt.MQTTv311)
    client.max_inflight_messages_set(WINDOW)
    connected = threading.Event()
    client.on_connect = lambda *_: connected.set()
    client.connect("127.0.0.1", port)
    client.loop_start()
    connected.wait(10)
    sent = size = 0
    last = None
    try:
        for topic, payload, retain in ATTACKS[kind](federation):
            if stop.is_set():
                break
            info = client.publish(topic, payload, qos=1, retain=retain)
            sent, size = sent + 1, size + len(payload)
            if sent % WINDOW == 0 and last is not None:
                while not stop.is_set() and not last.is_published():
                    last.wait_for_publish(0.2)  # the broker pushes back on us too
            if sent % WINDOW == 0:
                last = info
    finally:
        client.disconnect()
        client.loop_stop()
    return {"kind": kind, "sent": sent, "bytes": size}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("kind", choices=sorted(ATTACKS))
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--federation", default="abuse")
    args = parser.parse_args()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    print(json.dumps(flood(args.kind, args.port, args.federation, stop)), flush=True)


if __name__ == "__main__":
    main()
