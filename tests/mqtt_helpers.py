"""Small paho-mqtt helpers for tests that talk to a real broker."""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass, field

import paho.mqtt.client as mqtt

TIMEOUT_S = 5.0


@dataclass
class Inbox:
    """Messages on one subscribed filter plus a SUBACK count, so tests can await resubscribes."""

    topic: str
    qos: int
    messages: queue.Queue[mqtt.MQTTMessage] = field(default_factory=queue.Queue)
    subacks: int = 0
    _cond: threading.Condition = field(default_factory=threading.Condition, repr=False)

    def get(self, timeout: float = TIMEOUT_S) -> mqtt.MQTTMessage:
        """Next message; raises queue.Empty so a missing message fails the test loudly."""
        return self.messages.get(timeout=timeout)

    def drain(self) -> list[mqtt.MQTTMessage]:
        """Everything received so far, without waiting."""
        out = []
        while not self.messages.empty():
            out.append(self.messages.get_nowait())
        return out

    def count_suback(self) -> None:
        with self._cond:
            self.subacks += 1
            self._cond.notify_all()

    def wait_subacks(self, count: int, timeout: float = TIMEOUT_S) -> None:
        """Block until at least ``count`` SUBACKs arrived (1 = first subscribe)."""
        with self._cond:
            if not self._cond.wait_for(lambda: self.subacks >= count, timeout):
                raise TimeoutError(f"only {self.subacks} SUBACKs for {self.topic!r}, want {count}")


def paho_client(host: str, port: int, client_id: str, timeout: float = TIMEOUT_S) -> mqtt.Client:
    """A connected MQTT 3.1.1 paho client with its network loop running in a thread."""
    client = mqtt.Client(
        callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=mqtt.MQTTv311,
    )
    client.reconnect_delay_set(min_delay=1, max_delay=1)
    connected = threading.Event()
    client.on_connect = lambda *_args: connected.set()
    client.connect(host, port, keepalive=30)
    client.loop_start()
    if not connected.wait(timeout):
        close_client(client)
        raise TimeoutError(f"{client_id}: no CONNACK from {host}:{port} within {timeout}s")
    return client


def subscribe(client: mqtt.Client, topic: str, qos: int = 1) -> Inbox:
    """Subscribe (one filter per client), wait for the SUBACK, resubscribe on every reconnect.

    Only messages matching ``topic`` reach the inbox: amqtt also pushes retained messages
    matching *other* clients' subscriptions to every new connection.
    """
    inbox = Inbox(topic=topic, qos=qos)
    client.message_callback_add(topic, lambda _c, _u, msg: inbox.messages.put(msg))
    client.on_subscribe = lambda *_args: inbox.count_suback()
    client.on_connect = lambda c, *_args: c.subscribe(topic, qos)
    client.subscribe(topic, qos)
    inbox.wait_subacks(1)
    return inbox


def wait_connected(client: mqtt.Client, timeout: float = TIMEOUT_S) -> None:
    """Block until paho's automatic reconnect has succeeded (after a broker restart)."""
    deadline = time.monotonic() + timeout
    while not client.is_connected():
        if time.monotonic() > deadline:
            raise TimeoutError("client did not reconnect")
        time.sleep(0.05)


def publish(
    client: mqtt.Client,
    topic: str,
    payload: bytes,
    qos: int = 1,
    retain: bool = False,
    timeout: float = TIMEOUT_S,
) -> None:
    """Publish and wait until the broker acknowledged it (PUBACK for QoS 1)."""
    info = client.publish(topic, payload, qos=qos, retain=retain)
    info.wait_for_publish(timeout)
    if not info.is_published():
        raise TimeoutError(f"publish to {topic!r} not acknowledged within {timeout}s")


def close_client(client: mqtt.Client) -> None:
    """Disconnect and stop the network thread."""
    client.disconnect()
    client.loop_stop()
