"""The demo/test brokers against a real paho client: no mocks."""

from __future__ import annotations

import queue
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from fedge.broker import BrokerHandle, EmbeddedBroker, MosquittoBroker, start_broker
from tests.mqtt_helpers import close_client, paho_client, publish, subscribe, wait_connected

pytestmark = pytest.mark.integration


@pytest.fixture(params=["mosquitto", "embedded_broker"])
def broker(request: pytest.FixtureRequest) -> BrokerHandle:
    """Run each behaviour test against both broker kinds."""
    return request.getfixturevalue(request.param)


@pytest.fixture
def clients(broker: BrokerHandle) -> Iterator[list[mqtt.Client]]:
    """Clients made by a test, closed afterwards even if it fails."""
    made: list[mqtt.Client] = []
    yield made
    for client in made:
        close_client(client)


def connect(broker: BrokerHandle, clients: list[mqtt.Client], client_id: str) -> mqtt.Client:
    client = paho_client(broker.host, broker.port, client_id)
    clients.append(client)
    return client


def test_qos1_publish_reaches_subscriber(broker: BrokerHandle, clients: list[mqtt.Client]) -> None:
    inbox = subscribe(connect(broker, clients, "sub"), "fedge/test/qos1", qos=1)
    publish(connect(broker, clients, "pub"), "fedge/test/qos1", b"hello", qos=1)

    message = inbox.get()
    assert (message.payload, message.qos, message.retain) == (b"hello", 1, False)


def test_retained_message_reaches_late_subscriber_until_cleared(
    broker: BrokerHandle, clients: list[mqtt.Client]
) -> None:
    topic = "fedge/test/retained"
    publisher = connect(broker, clients, "pub")
    publish(publisher, topic, b"round-7", qos=1, retain=True)

    late = subscribe(connect(broker, clients, "late"), topic, qos=1)
    message = late.get()
    assert (message.payload, message.retain) == (b"round-7", True)

    publish(publisher, topic, b"", qos=1, retain=True)
    after_clear = subscribe(connect(broker, clients, "after-clear"), topic, qos=1)
    with pytest.raises(queue.Empty):
        after_clear.get(timeout=0.5)


def test_300kb_payload_round_trip(broker: BrokerHandle, clients: list[mqtt.Client]) -> None:
    payload = bytes(range(256)) * 1200  # 307,200 bytes, every byte value
    inbox = subscribe(connect(broker, clients, "sub"), "fedge/test/big", qos=1)
    publish(connect(broker, clients, "pub"), "fedge/test/big", payload, qos=1)

    assert inbox.get().payload == payload


def test_mosquitto_restart_same_port_and_clients_reconnect(mosquitto: MosquittoBroker) -> None:
    port = mosquitto.port
    subscriber = paho_client(mosquitto.host, port, "sub")
    publisher = paho_client(mosquitto.host, port, "pub")
    try:
        inbox = subscribe(subscriber, "fedge/test/outage", qos=1)
        publish(publisher, "fedge/test/outage", b"before")
        assert inbox.get().payload == b"before"

        mosquitto.restart()

        assert mosquitto.port == port
        inbox.wait_subacks(2)  # paho reconnected and on_connect resubscribed
        wait_connected(publisher)
        publish(publisher, "fedge/test/outage", b"after")
        assert inbox.get().payload == b"after"
    finally:
        close_client(subscriber)
        close_client(publisher)


def test_mosquitto_stop_is_idempotent_and_removes_own_workdir() -> None:
    broker = MosquittoBroker.start()
    workdir = broker.workdir
    assert workdir.is_dir()

    broker.stop()
    broker.stop()

    assert not workdir.exists()


def test_mosquitto_context_manager_stops(tmp_path: Path) -> None:
    with MosquittoBroker.start(workdir=tmp_path) as broker:
        pid = broker.pid
        assert pid is not None
    assert broker.pid is None
    assert "mosquitto version" in broker.log_path.read_text()  # kept: the workdir is the caller's


def test_mosquitto_bad_config_raises_with_log(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="exited with code") as excinfo:
        MosquittoBroker.start(workdir=tmp_path, extra_conf="no_such_option 42")

    assert "no_such_option" in str(excinfo.value)


def test_embedded_broker_stop_is_idempotent() -> None:
    broker = EmbeddedBroker.start()
    broker.stop()
    broker.stop()


def test_start_broker_auto_prefers_mosquitto() -> None:
    with start_broker("auto") as broker:
        assert broker.kind == "mosquitto"
        client = paho_client(broker.host, broker.port, "auto")
        close_client(client)


def test_start_broker_rejects_unknown_kind() -> None:
    with pytest.raises(ValueError, match="prefer"):
        start_broker("rabbitmq")


def test_a_link_to_a_port_with_no_broker_says_so_in_the_log(caplog) -> None:
    """paho retries quietly; a wrong host or port must not look like a hang."""
    import logging
    import time

    from edge_client.shared.transport import MqttLink
    from fedge.broker import free_port

    port = free_port()  # nothing listens there
    link = MqttLink("lonely", "127.0.0.1", port, queue.Queue(), reconnect_min_s=0.05,
                    reconnect_max_s=0.1)
    with caplog.at_level(logging.WARNING, logger="edge_client.shared.transport"):
        link.start()
        try:
            deadline = time.monotonic() + 20
            while link.connect_failures < 10 and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            link.stop(flush_timeout_s=0)
    said = [r.getMessage() for r in caplog.records if "cannot reach" in r.getMessage()]
    assert link.connect_failures >= 10 and not link.connected
    assert said[:2] == [f"mqtt: cannot reach the broker at 127.0.0.1:{port} (1 attempt so "
                        "far); retrying",
                        f"mqtt: cannot reach the broker at 127.0.0.1:{port} (10 attempts so "
                        "far); retrying"]
