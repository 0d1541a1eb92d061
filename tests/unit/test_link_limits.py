"""MqttLink's bound on unconfirmed publishes (a fake paho publish; no broker)."""

from __future__ import annotations

import queue

from edge_client.shared.transport import MqttLink


class _Info:
    rc = 0

    def __init__(self) -> None:
        self.published = False

    def is_published(self) -> bool:
        return self.published


def _link(max_unconfirmed: int) -> tuple[MqttLink, list[_Info]]:
    link = MqttLink("t", "127.0.0.1", 1, queue.Queue(), max_unconfirmed=max_unconfirmed)
    infos: list[_Info] = []

    def publish(topic, payload, qos, retain):
        infos.append(_Info())
        return infos[-1]

    link._client.publish = publish  # type: ignore[method-assign]
    link._connected.set()
    return link, infos


def test_acks_are_refused_past_the_bound_but_retained_state_still_goes(caplog):
    link, infos = _link(max_unconfirmed=3)
    assert all(link.publish(f"ack/{i}", b"a") for i in range(3))
    with caplog.at_level("WARNING"):
        assert not link.publish("ack/4", b"a")  # an ack: the device resends, answered then
        assert not link.publish("ack/5", b"a")
    assert link.publish("model", b"m", retain=True)  # models and tasks are never refused
    assert link.refused == 2 and len(caplog.records) == 1  # logged once per 10 s
    for info in infos:
        info.published = True
    assert link.publish("ack/6", b"a")  # confirmed ones leave from the front
    assert len(link._unconfirmed) == 1
