"""Manual acks of received messages (the aggregator's link): acked once taken in, only
on the connection that brought them; paho 1.6 falls back to paho's own acks."""

from __future__ import annotations

from types import SimpleNamespace

from edge_client.shared import paho_compat
from edge_client.shared.transport import Inbound, InboundAcks


class FakeClient:
    def __init__(self) -> None:
        self.manual = False
        self.acked: list[tuple[int, int]] = []

    def manual_ack_set(self, on: bool) -> None:
        self.manual = on

    def ack(self, mid: int, qos: int) -> None:
        self.acked.append((mid, qos))


def _message(mid: int, qos: int = 1) -> SimpleNamespace:
    return SimpleNamespace(topic="t", payload=b"x", retain=False, mid=mid, qos=qos)


def test_a_message_is_acked_when_taken_in_and_only_on_its_own_connection():
    client = FakeClient()
    acks = InboundAcks(client, wanted=True)  # type: ignore[arg-type]
    assert acks.enabled and client.manual
    acks.new_session()
    first = acks.inbound(_message(7))
    assert client.acked == []  # not on receipt
    acks.ack(first, connected=True)
    assert client.acked == [(7, 1)]
    old = acks.inbound(_message(8))
    acks.new_session()  # reconnected: the broker forgot mid 8 (clean session)
    acks.ack(old, connected=True)
    acks.ack(acks.inbound(_message(9, qos=0)), connected=True)  # QoS 0: nothing to ack
    acks.ack(acks.inbound(_message(10)), connected=False)
    assert client.acked == [(7, 1)]


def test_devices_and_paho_1_6_keep_paho_s_own_acks(monkeypatch):
    client = FakeClient()
    assert not InboundAcks(client, wanted=False).enabled  # type: ignore[arg-type]
    monkeypatch.setattr(paho_compat, "PAHO_MAJOR", 1)
    acks = InboundAcks(client, wanted=True)  # type: ignore[arg-type]
    assert not acks.enabled and not client.manual
    event = acks.inbound(_message(5))
    assert event == Inbound("t", b"x", False)
    acks.ack(event, connected=True)
    assert client.acked == []
