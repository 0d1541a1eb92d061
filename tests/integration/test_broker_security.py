"""A real mosquitto with the generated TLS, password and ACL setup (aggregator.broker_config).

Every broker here runs on a config from `write_broker_config`, in a fresh folder under /tmp:
started as root, mosquitto reads its files as the `mosquitto` user, who cannot enter
pytest's 0700 tmp_path. Each broker is our own child, signalled only by its PID.

mosquitto 2.0 drops a publish the ACL forbids without telling the publisher (QoS 1 still
gets its PUBACK), so non-delivery is checked with a control message sent right after it:
the broker handles one client's publishes in order, so once the control message is in,
the forbidden one would have been too.
"""

from __future__ import annotations

import contextlib
import queue
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import paho.mqtt.client as mqtt
import pytest

from aggregator.broker_config import (
    BrokerSecurityFiles,
    BrokerSecurityPlan,
    add_device,
    revoke_device,
    write_broker_config,
)
from aggregator.ingest_workers import shared_filter
from edge_client.shared.protocol import Topics
from edge_client.shared.transport import Connected, Credentials, Inbound, MqttLink, TlsConfig
from fedge.broker import find_mosquitto, free_port

pytestmark = pytest.mark.integration

FED = "fed"
HOST = "127.0.0.1"
TIMEOUT_S = 5.0
QUIET_S = 0.5  # bounded wait for "nothing else arrives"
START_TIMEOUT_S = 10.0
EventT = TypeVar("EventT")


@dataclass
class SecureBroker:
    """A mosquitto child process on a generated config."""

    files: BrokerSecurityFiles
    port: int
    proc: subprocess.Popen[bytes]
    log_path: Path

    def reload(self) -> None:
        """SIGHUP our own broker and wait until it has re-read passwords and ACL."""
        before = self._reloads()
        self.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + TIMEOUT_S
        # mosquitto logs this and then reloads in the same loop pass, before it serves
        # any new connection.
        while self._reloads() <= before:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no reload in the log:\n{self.log()}")
            time.sleep(0.02)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def _reloads(self) -> int:
        return self.log().count("Reloading config.")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=TIMEOUT_S)


def _launch(files: BrokerSecurityFiles, port: int) -> SecureBroker:
    executable = find_mosquitto()
    if executable is None:
        pytest.fail("mosquitto not found: apt-get install mosquitto")
    log_path = files.folder / "broker.log"
    with log_path.open("ab") as log:
        proc = subprocess.Popen([executable, "-c", str(files.conf)], stdin=subprocess.DEVNULL,
                                stdout=log, stderr=subprocess.STDOUT)
    broker = SecureBroker(files, port, proc, log_path)
    try:
        _wait_listening(broker)
    except BaseException:
        broker.stop()
        raise
    return broker


def _wait_listening(broker: SecureBroker) -> None:
    """Wait until the TLS port accepts TCP; fail with the log if mosquitto exits first."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if broker.proc.poll() is not None:
            pytest.fail(f"mosquitto exited with {broker.proc.returncode}:\n{broker.log()}")
        with contextlib.suppress(OSError), socket.create_connection((HOST, broker.port), 0.2):
            return
        time.sleep(0.05)
    pytest.fail(f"mosquitto never listened on {broker.port}:\n{broker.log()}")


@pytest.fixture
def start_broker() -> Iterator[Callable[..., SecureBroker]]:
    """Factory: a secured broker for the given devices; stopped and removed afterwards."""
    started: list[SecureBroker] = []

    def start(*devices: str, mtls: bool = False) -> SecureBroker:
        # Under /tmp, not tmp_path: the mosquitto user must be able to reach the folder.
        folder = Path(tempfile.mkdtemp(prefix="fedge-brokersec-"))
        port = free_port(HOST)
        plan = BrokerSecurityPlan(FED, tuple(devices), host=HOST, port=port, mtls=mtls)
        try:
            broker = _launch(write_broker_config(plan, folder), port)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        started.append(broker)
        return broker

    yield start
    for broker in started:
        broker.stop()
        shutil.rmtree(broker.files.folder, ignore_errors=True)


# ------------------------------------------------------------------ plain paho peers
@dataclass
class Peer:
    """A paho client with its CONNACKs, messages and disconnects on queues."""

    name: str
    client: mqtt.Client
    connacks: queue.Queue[mqtt.ReasonCode | None] = field(default_factory=queue.Queue)
    messages: queue.Queue[mqtt.MQTTMessage] = field(default_factory=queue.Queue)
    disconnected: threading.Event = field(default_factory=threading.Event)

    def connack(self, timeout: float = TIMEOUT_S) -> mqtt.ReasonCode | None:
        """The first CONNACK's reason code; None if the connection ended (or timed out)
        without one, as when TLS fails."""
        try:
            return self.connacks.get(timeout=timeout)
        except queue.Empty:
            return None

    def subscribe(self, topic: str) -> None:
        done = threading.Event()
        self.client.on_subscribe = lambda *_args: done.set()
        self.client.subscribe(topic, qos=1)
        assert done.wait(TIMEOUT_S), f"{self.name}: no SUBACK for {topic}"

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        """QoS 1 publish; mosquitto acknowledges it even when the ACL drops it."""
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        info.wait_for_publish(TIMEOUT_S)
        assert info.is_published(), f"{self.name}: no PUBACK for {topic}"

    def received(self, timeout: float = TIMEOUT_S) -> tuple[str, bytes]:
        message = self.messages.get(timeout=timeout)
        return message.topic, bytes(message.payload)

    def quiet(self, wait_s: float = QUIET_S) -> list[tuple[str, bytes]]:
        """Whatever else arrives within a bounded wait (expected: nothing)."""
        time.sleep(wait_s)
        out = []
        while not self.messages.empty():
            message = self.messages.get_nowait()
            out.append((message.topic, bytes(message.payload)))
        return out

    def cut(self) -> None:
        """Drop the TCP connection without DISCONNECT, so the broker sends the last will."""
        sock = self.client.socket()
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self.client.loop_stop()  # before paho's reconnect delay (1 s at least) runs out

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _new_client(name: str, broker: SecureBroker, user: str | None, password: str | None,
                cert: tuple[Path, Path] | None, tls: bool) -> mqtt.Client:
    client = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
                         client_id=f"{name}-{time.monotonic_ns()}", protocol=mqtt.MQTTv311)
    if tls:
        client.tls_set(ca_certs=str(broker.files.ca_cert),
                       certfile=str(cert[0]) if cert else None,
                       keyfile=str(cert[1]) if cert else None,
                       tls_version=ssl.PROTOCOL_TLS_CLIENT)
    if user is not None:
        client.username_pw_set(user, password)
    return client


@pytest.fixture
def connect() -> Iterator[Callable[..., Peer]]:
    """Factory for plain paho peers; every one is closed at the end of the test."""
    peers: list[Peer] = []

    def make(broker: SecureBroker, user: str | None, password: str | None = None, *,
             cert: tuple[Path, Path] | None = None, tls: bool = True,
             will: str | None = None) -> Peer:
        client = _new_client(user or "anonymous", broker, user, password, cert, tls)
        if will is not None:
            client.will_set(will, f"will of {user}".encode(), qos=1, retain=True)
        peer = Peer(user or "anonymous", client)
        client.on_connect = lambda _c, _u, _f, reason, _p: peer.connacks.put(reason)
        client.on_message = lambda _c, _u, message: peer.messages.put(message)
        client.on_disconnect = lambda *_args: _on_disconnect(peer)
        peers.append(peer)
        with contextlib.suppress(OSError):  # a failed TLS handshake: no CONNACK, checked later
            client.connect(HOST, broker.port, keepalive=30)
        client.loop_start()
        return peer

    yield make
    for peer in peers:
        peer.close()


def _on_disconnect(peer: Peer) -> None:
    """A drop before any CONNACK (failed TLS) ends the wait for one at once."""
    peer.disconnected.set()
    peer.connacks.put(None)


def _login(connect: Callable[..., Peer], broker: SecureBroker, user: str, **kwargs) -> Peer:
    """Connect with the generated password and insist on success."""
    peer = connect(broker, user, broker.files.credentials[user], **kwargs)
    reason = peer.connack()
    assert reason is not None and not reason.is_failure, f"{user}: {reason}\n{broker.log()}"
    return peer


def _assert_refused(peer: Peer) -> None:
    reason = peer.connack()
    assert reason is None or reason.is_failure, f"{peer.name} was let in"
    peer.close()


def _topic(kind: str, device: str = "") -> str:
    return f"fedge/{FED}/{kind}/{device}" if device else f"fedge/{FED}/{kind}"


# ------------------------------------------------------------------ tests
def _link(broker: SecureBroker, user: str, events: queue.Queue) -> MqttLink:
    """An MqttLink with hostname verification on: the server's SAN holds 127.0.0.1."""
    return MqttLink(user, HOST, broker.port, events,
                    tls=TlsConfig(ca_file=broker.files.ca_cert),
                    credentials=Credentials(user, broker.files.credentials[user]))


def _next_event(events: queue.Queue, kind: type[EventT]) -> EventT:
    event = events.get(timeout=TIMEOUT_S)
    assert isinstance(event, kind), event
    return event


def test_mqtt_links_use_tls_and_passwords(start_broker, connect) -> None:
    """The aggregator's retained task reaches the device; the device's update the aggregator."""
    broker = start_broker("dev1")
    watcher = _login(connect, broker, "aggregator")
    watcher.subscribe(_topic("update", "+"))
    agg_events: queue.Queue = queue.Queue()
    dev_events: queue.Queue = queue.Queue()
    aggregator, device = _link(broker, "aggregator", agg_events), _link(broker, "dev1", dev_events)
    device.subscribe(_topic("task"))
    try:
        aggregator.start()
        _next_event(agg_events, Connected)
        assert aggregator.publish(_topic("task"), b"task", retain=True)
        assert aggregator.flush(TIMEOUT_S)
        device.start()
        _next_event(dev_events, Connected)
        task = _next_event(dev_events, Inbound)
        assert (task.topic, task.payload, task.retained) == (_topic("task"), b"task", True)
        assert device.publish(_topic("update", "dev1"), b"chunk")
        assert watcher.received() == (_topic("update", "dev1"), b"chunk")
    finally:
        device.stop()
        aggregator.stop()


def test_device_cannot_write_another_devices_topics(start_broker, connect) -> None:
    broker = start_broker("dev1", "dev2")
    aggregator = _login(connect, broker, "aggregator")
    aggregator.subscribe(f"fedge/{FED}/#")
    dev1 = _login(connect, broker, "dev1")
    dev1.publish(_topic("update", "dev2"), b"forged update")
    dev1.publish(_topic("status", "dev2"), b"forged status", retain=True)
    dev1.publish(_topic("ack", "dev1"), b"forged ack")
    dev1.publish(_topic("update", "dev1"), b"control")
    assert aggregator.received() == (_topic("update", "dev1"), b"control")
    assert aggregator.quiet() == []


def test_device_cannot_write_model_task_or_invitations(start_broker, connect) -> None:
    broker = start_broker("dev1")
    aggregator = _login(connect, broker, "aggregator")
    aggregator.publish(_topic("task"), b"real task", retain=True)
    aggregator.subscribe(f"fedge/{FED}/#")
    assert aggregator.received() == (_topic("task"), b"real task")  # retained copy
    dev1 = _login(connect, broker, "dev1")
    dev1.publish(_topic("model"), b"forged manifest", retain=True)
    dev1.publish(f"fedge/{FED}/model/1/0", b"forged chunk", retain=True)
    dev1.publish(_topic("task"), b"forged task", retain=True)
    dev1.publish(_topic("invite", "dev1"), b"forged invitation", retain=True)
    dev1.publish(_topic("invite", "dev2"), b"forged invitation", retain=True)
    dev1.publish(_topic("status", "dev1"), b"control")
    assert aggregator.received() == (_topic("status", "dev1"), b"control")
    assert aggregator.quiet() == []
    late = _login(connect, broker, "aggregator")  # the retained task was not replaced
    late.subscribe(_topic("task"))
    assert late.received() == (_topic("task"), b"real task")


def test_device_reads_model_task_and_only_its_own_acks_and_invite(start_broker, connect) -> None:
    broker = start_broker("dev1", "dev2")
    aggregator = _login(connect, broker, "aggregator")
    retained = {
        _topic("model"): b"manifest",
        f"fedge/{FED}/model/3/0": b"chunk",
        _topic("task"): b"task",
        _topic("ack", "dev1"): b"ack for dev1",
        _topic("ack", "dev2"): b"ack for dev2",
        _topic("invite", "dev1"): b"invitation for dev1",
        _topic("invite", "dev2"): b"invitation for dev2",
        _topic("update", "dev2"): b"dev2's update",
    }
    for topic, payload in retained.items():
        aggregator.publish(topic, payload, retain=True)
    dev1 = _login(connect, broker, "dev1")
    # mosquitto 2.0 grants the wide subscription and filters each message by `read`.
    dev1.subscribe(f"fedge/{FED}/#")
    got = {dev1.received() for _ in range(5)}
    assert got == {(t, p) for t, p in retained.items() if "dev2" not in t}
    assert dev1.quiet() == []
    aggregator.publish(_topic("ack", "dev2"), b"live ack for dev2")
    aggregator.publish(_topic("ack", "dev1"), b"control")
    assert dev1.received() == (_topic("ack", "dev1"), b"control")
    assert dev1.quiet() == []


def test_last_will_only_on_the_devices_own_status(start_broker, connect) -> None:
    broker = start_broker("dev1", "dev2")
    aggregator = _login(connect, broker, "aggregator")
    aggregator.subscribe(_topic("status", "+"))
    forger = _login(connect, broker, "dev1", will=_topic("status", "dev2"))
    honest = _login(connect, broker, "dev2", will=_topic("status", "dev2"))
    forger.cut()
    time.sleep(0.2)
    honest.cut()
    assert aggregator.received() == (_topic("status", "dev2"), b"will of dev2")
    assert aggregator.quiet() == []


def test_wrong_password_unknown_user_and_anonymous_are_refused(start_broker, connect) -> None:
    broker = start_broker("dev1")
    # mosquitto 2.0 answers all three with MQTT 3.1.1 CONNACK code 5 (not 4, "bad
    # username or password"); paho reports it as the MQTT 5 reason "Not authorized".
    for user, password in [("dev1", "wrong"), ("dev9", "anything"), (None, None)]:
        peer = connect(broker, user, password)
        reason = peer.connack()
        assert reason is not None and reason == "Not authorized", (user, reason)
        peer.close()


def test_plain_mqtt_to_the_tls_port_fails(start_broker, connect) -> None:
    broker = start_broker("dev1")
    _assert_refused(connect(broker, "dev1", broker.files.credentials["dev1"], tls=False))
    assert "wrong version number" in broker.log()


def test_mtls_needs_a_certificate_and_the_password(start_broker, connect) -> None:
    broker = start_broker("dev1", mtls=True)
    files = broker.files
    _assert_refused(connect(broker, "dev1", files.credentials["dev1"]))
    assert "peer did not return a certificate" in broker.log()
    _assert_refused(connect(broker, "dev1", "wrong", cert=files.client_certs["dev1"]))
    dev1 = _login(connect, broker, "dev1", cert=files.client_certs["dev1"])
    dev1.close()


def test_revoked_device_is_cut_off_after_sighup(start_broker, connect) -> None:
    broker = start_broker("dev1", "dev2")
    folder = broker.files.folder
    dev1 = _login(connect, broker, "dev1")
    revoke_device(folder, FED, "dev1")
    broker.reload()
    assert dev1.disconnected.wait(TIMEOUT_S), "mosquitto kept the revoked device connected"
    dev1.close()
    _assert_refused(connect(broker, "dev1", broker.files.credentials["dev1"]))
    _login(connect, broker, "dev2")  # the others are unaffected
    access = add_device(folder, FED, "dev3")
    broker.reload()
    aggregator = _login(connect, broker, "aggregator")
    aggregator.subscribe(_topic("update", "+"))
    dev3 = connect(broker, "dev3", access.password)
    reason = dev3.connack()
    assert reason is not None and not reason.is_failure, reason
    dev3.publish(_topic("update", "dev3"), b"hello")
    assert aggregator.received() == (_topic("update", "dev3"), b"hello")


def test_the_aggregators_shared_subscription_gets_device_updates(start_broker, connect) -> None:
    """Parallel ingest's workers log in as the aggregator and subscribe through
    `$share/...`: the ACL lets that through (aggregator/ingest_workers.py)."""
    broker = start_broker("dev1")
    worker = _login(connect, broker, "aggregator")
    worker.subscribe(shared_filter(Topics(FED)))
    device = _login(connect, broker, "dev1")
    device.publish(_topic("update", "dev1"), b"chunk")
    assert worker.received() == (_topic("update", "dev1"), b"chunk"), broker.log()
