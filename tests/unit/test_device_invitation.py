"""A device invited by name through its own invite topic (an Invitation), not by the
task's cohort: it trains for that task; a device neither drawn nor invited stays idle
and says why at INFO."""

from __future__ import annotations

import logging

import pytest

from edge_client.session import actions as act
from edge_client.session.events import InvitationReceived, LinkUp, TaskReceived
from edge_client.session.inbound import decode_inbound
from edge_client.session.keys import DeviceKeys
from edge_client.shared.protocol import Invitation, RemoteProtocolError, Topics, encode
from edge_client.shared.protocol.cohort import Cohort
from tests.unit import session_driver as drv
from tests.unit.session_driver import ScriptedDevice

NOBODY = Cohort(seed=5, cutoff=0, size=0, candidates=10_000)  # a draw without dev-0
TOPIC = Topics("default").invite("dev-0")


def _ready() -> ScriptedDevice:
    device = ScriptedDevice(drv.config(federation="default"))
    device.feed(LinkUp())
    device.advance(0)
    device.install(0, drv.weights(0))
    return device


def _cohort_task(task_id: str = "r1"):
    return drv.task(task_id, invited=None, cohort=NOBODY)


def _invite(device: ScriptedDevice, task_id: str, to: str = "dev-0") -> list[act.Action]:
    return device.receive(TOPIC, encode(Invitation(task_id=task_id, device_id=to)))


def test_the_device_subscribes_to_its_own_invite_topic_before_the_task():
    device = ScriptedDevice(drv.config(federation="default"))
    topics = [a.topic for a in device.of(act.Subscribe, device.feed(LinkUp()))]
    assert TOPIC in topics and topics.index(TOPIC) < topics.index("fedge/default/task")


def test_an_invitation_before_the_task_makes_the_device_train_for_it(caplog):
    device = _ready()
    caplog.set_level(logging.INFO)
    assert _invite(device, "r1") == []  # the task is not here yet: kept
    actions = device.feed(TaskReceived(_cohort_task("r1")))
    assert len(device.of(act.StartFit, actions)) == 1
    assert len(device.of(act.PublishUpdate, actions)) == 1
    assert "task r1 (round 1, model version 0): invited" in caplog.text
    assert device.session.stats.skipped == {}


def test_an_invitation_after_the_task_still_gets_the_device_training():
    device = _ready()
    assert device.of(act.StartFit, device.feed(TaskReceived(_cohort_task("r1")))) == []
    actions = _invite(device, "r1")
    assert len(device.of(act.StartFit, actions)) == 1
    assert _invite(device, "r1") == []  # the same invitation again (a reconnect): nothing


def test_a_device_neither_drawn_nor_invited_stays_idle_and_says_why(caplog):
    device = _ready()
    caplog.set_level(logging.INFO)
    _invite(device, "r0")  # an invitation to another task does not count for this one
    assert device.of(act.StartFit, device.feed(TaskReceived(_cohort_task("r1")))) == []
    assert ("task r1 (round 1): not invited this time: not in its cohort (0 of 10000 "
            "devices drawn)") in caplog.text
    assert device.session.stats.skipped == {"not invited": 1}


def test_an_invitation_for_another_device_or_a_done_task_is_not_used(caplog):
    device = _ready()
    assert _invite(device, "r1", to="dev-9") == []
    assert device.session.stats.bad_messages == 1
    assert "ignored an invitation meant for dev-9" in caplog.text
    assert device.of(act.StartFit, device.feed(TaskReceived(_cohort_task("r1")))) == []
    done = drv.task("r2", invited=(), done=True)
    _invite(device, "r2")
    assert device.of(act.StartFit, device.feed(TaskReceived(done))) == []


def test_a_bad_or_cleared_invitation():
    device = _ready()
    assert device.receive(TOPIC, b"") == []  # cleared when the round closed
    with pytest.raises(RemoteProtocolError):
        device.receive(TOPIC, b"\x81\xa1v\x01")


def test_a_task_naming_the_device_still_invites_it_without_an_invitation():
    """Older aggregators named top-ups in the task: that still works."""
    device = _ready()
    named = drv.task("r1", invited=("dev-0",), cohort=NOBODY)
    assert len(device.of(act.StartFit, device.feed(TaskReceived(named)))) == 1


def test_a_device_that_pins_the_aggregator_key_takes_only_a_signed_invitation():
    from edge_client.shared.identity import Identity, parse_public_key
    from edge_client.shared.protocol.signing import seal

    aggregator, mallory = Identity.generate(), Identity.generate()
    keys = DeviceKeys(pinned=parse_public_key(aggregator.public_text))
    topics = Topics("default")
    body = encode(Invitation(task_id="r1", device_id="dev-0"))
    for forged in (body, seal(body, mallory)):
        with pytest.raises(RemoteProtocolError):
            decode_inbound(TOPIC, forged, topics, "dev-0", keys)
    event = decode_inbound(TOPIC, seal(body, aggregator), topics, "dev-0", keys)
    assert event == InvitationReceived(Invitation(task_id="r1", device_id="dev-0"))
