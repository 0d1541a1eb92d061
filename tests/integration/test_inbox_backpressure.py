"""Backpressure through real paho and mosquitto: a full inbox holds paho's network thread,
nothing is lost, and the owner can still publish on the same client meanwhile."""

from __future__ import annotations

import threading
import time

import pytest

from edge_client.shared.inbox import Inbox
from edge_client.shared.transport import Connected, Inbound, MqttLink
from fedge.broker import MosquittoBroker
from tests.mqtt_helpers import close_client, paho_client, subscribe

pytestmark = pytest.mark.integration
WAIT_S = 10.0
FLOOD = 300
SIZE = 10_000


def _until(condition, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def test_a_full_inbox_pushes_back_loses_nothing_and_publishing_still_works(
        mosquitto: MosquittoBroker) -> None:
    inbox = Inbox(max_bytes=5 * SIZE, block_s=60)
    link = MqttLink("owner", mosquitto.host, mosquitto.port, inbox)
    link.subscribe("flood/#")
    link.start()
    sender = paho_client(mosquitto.host, mosquitto.port, "sender")
    watcher = paho_client(mosquitto.host, mosquitto.port, "watcher")
    try:
        assert isinstance(inbox.get(timeout=WAIT_S), Connected)
        acks = subscribe(watcher, "out/ack")
        for i in range(FLOOD):
            sender.publish("flood/x", i.to_bytes(4, "big") + bytes(SIZE - 4), qos=1)
        _until(lambda: inbox.blocked >= 1, "paho's thread to wait for room")
        assert inbox.held_bytes <= inbox.max_bytes

        # The owner publishes while the network thread is held: publish() must return.
        done = threading.Event()
        threading.Thread(target=lambda: (link.publish("out/ack", b"hello"), done.set()),
                         daemon=True).start()
        assert done.wait(WAIT_S), "publish() hung behind the full inbox"

        received = []
        while len(received) < FLOOD:  # the loop drains; paho reads on; all arrive in order
            event = inbox.get(timeout=WAIT_S)
            if isinstance(event, Inbound):
                received.append(int.from_bytes(event.payload[:4], "big"))
        assert received == list(range(FLOOD))
        assert inbox.peak_bytes <= inbox.max_bytes and inbox.over_bound == 0
        assert acks.get().payload == b"hello"  # written once the thread ran again
    finally:
        link.stop(flush_timeout_s=2)
        close_client(sender)
        close_client(watcher)


def test_stop_releases_a_network_thread_waiting_on_a_full_inbox(
        mosquitto: MosquittoBroker) -> None:
    inbox = Inbox(max_bytes=2 * SIZE, block_s=60)
    link = MqttLink("owner", mosquitto.host, mosquitto.port, inbox)
    link.subscribe("flood/#")
    link.start()
    sender = paho_client(mosquitto.host, mosquitto.port, "sender")
    try:
        assert isinstance(inbox.get(timeout=WAIT_S), Connected)
        for _ in range(20):
            sender.publish("flood/x", bytes(SIZE), qos=1)
        _until(lambda: inbox.blocked >= 1, "paho's thread to wait for room")
        stopper = threading.Thread(target=link.stop, kwargs={"flush_timeout_s": 2},
                                   daemon=True)
        stopper.start()
        stopper.join(WAIT_S)
        assert not stopper.is_alive(), "stop() hung on the waiting network thread"
        assert inbox.dropped >= 1
    finally:
        close_client(sender)
