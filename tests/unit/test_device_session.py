"""The device session without a broker, threads or disk: events in, actions out, time
scripted (tests/unit/session_driver.py plays the shell)."""

from __future__ import annotations

import logging

import pytest

from edge_client.outbox import OutboxEntry
from edge_client.session import actions as act
from edge_client.session.events import AckReceived, LinkUp, ManifestReceived, Resumed, TaskReceived
from edge_client.session.held_model import HeldModel
from edge_client.shared.protocol import Ack, Status, Update, decode
from edge_client.shared.protocol.chunking import sha256_hex
from tests.unit import session_driver as drv
from tests.unit.session_driver import ScriptedDevice


def _ready(device: ScriptedDevice | None = None, version: int = 0) -> ScriptedDevice:
    """Connected, eligibility known, holding model `version`."""
    device = device or ScriptedDevice()
    device.feed(LinkUp())
    device.advance(0)  # the first tick checks eligibility
    device.install(version, drv.weights(version))
    assert device.session.model_version == version
    return device


def _trained(device: ScriptedDevice, task_id: str = "r1") -> act.PublishUpdate:
    sent = device.of(act.PublishUpdate, device.feed(TaskReceived(drv.task(task_id))))
    assert len(sent) == 1
    return sent[0]


# ---------------------------------------------------------------- the uplink
def test_an_update_is_resent_after_a_lost_ack_until_its_ack_arrives():
    device = _ready(ScriptedDevice(drv.config(ack_timeout_s=30.0)))
    first = _trained(device)
    update = decode(device.outbox[first.nonce], expect=Update)
    assert update.task_id == "r1" and update.base_version == 0
    assert device.session.poll_timeout(device.t) == 0.5
    assert device.of(act.PublishUpdate, device.advance(29.0)) == []
    [again] = device.of(act.PublishUpdate, device.advance(1.5))  # the ack was lost
    assert again == first  # the same bytes, chunk for chunk
    assert device.of(act.PublishUpdate, device.advance(10.0)) == []
    ack = Ack(status="accepted", task_id="r1", nonce=first.nonce)
    assert device.feed(AckReceived(ack)) == [act.RemoveUpdate(first.nonce)]
    assert device.outbox == {} and device.session.stats.acks["accepted"] == 1
    assert device.of(act.PublishUpdate, device.advance(100.0)) == []


def test_a_duplicate_ack_changes_nothing():
    device = _ready()
    sent = _trained(device)
    ack = Ack(status="accepted", task_id="r1", nonce=sent.nonce)
    device.feed(AckReceived(ack))
    assert device.feed(AckReceived(ack)) == []
    assert device.feed(AckReceived(Ack(status="duplicate", nonce=sent.nonce))) == []
    assert device.session.stats.acked == [(sent.nonce, "accepted")]


def test_a_rejected_update_is_dropped_and_its_task_not_trained_again(caplog):
    device = _ready()
    sent = _trained(device)
    device.feed(AckReceived(Ack(status="rejected", task_id="r1", nonce=sent.nonce,
                                reason="norm too large")))
    assert device.outbox == {} and device.session.stats.acks["rejected"] == 1
    assert "rejected: norm too large" in caplog.text
    assert device.of(act.StartFit, device.feed(TaskReceived(drv.task("r1")))) == []


def test_a_task_before_its_model_waits_for_the_model_and_an_old_task_is_ignored():
    device = ScriptedDevice()
    device.feed(LinkUp())
    device.advance(0)
    assert device.of(act.StartFit, device.feed(TaskReceived(drv.task("r1")))) == []
    done = device.install(0, drv.weights(0))
    assert len(device.of(act.StartFit, done)) == 1 and len(device.of(act.PublishUpdate, done)) == 1
    device.install(1, drv.weights(1))
    stale = device.feed(TaskReceived(drv.task("r0-old", version=0)))  # for a model we left
    assert device.of(act.StartFit, stale) == []


def test_a_late_ack_clears_the_update_like_any_other():
    device = _ready()
    sent = _trained(device)
    device.feed(AckReceived(Ack(status="late", task_id="r1", nonce=sent.nonce)))
    assert device.session.stats.acks["late"] == 1 and device.outbox == {}


def test_the_outbox_refusing_an_update_loses_nothing_and_the_task_is_tried_again(caplog):
    device = _ready()
    device.disk_full = True
    done = device.feed(TaskReceived(drv.task("r1")))
    assert device.of(act.PublishUpdate, done) == [] and device.outbox == {}
    assert not device.session.book.is_done("r1")
    assert "nothing sent, trying again in 5 s" in caplog.text
    device.disk_full = False
    assert len(device.of(act.PublishUpdate, device.advance(5.0))) == 1  # the next re-check


def test_unusable_task_settings_make_the_task_done_once(caplog):
    device = _ready()
    done = device.feed(TaskReceived(drv.task("r1", codec={"sparsify": "magic"})))
    assert device.of(act.StartFit, done) == []
    assert act.SaveTasks(("r1",), 0) in done and device.session.book.is_done("r1")


# ---------------------------------------------------------------- restarts
def test_a_restarted_device_resends_its_outbox_and_does_not_train_twice():
    before = _ready()
    sent = _trained(before)
    held = HeldModel(0, drv.weights(0), {}, before.session.downlink.model.sha256)
    after = ScriptedDevice()
    aside = after.of(act.SetAsideUpdate, after.feed(Resumed(done_tasks=(), model=held, outbox=(
        OutboxEntry(sent.nonce, before.outbox[sent.nonce]),
        OutboxEntry("ab" * 8, b"not an update")))))
    assert aside == [act.SetAsideUpdate("ab" * 8, aside[0].why)]
    assert after.session.model_version == 0 and after.session.book.is_done("r1")
    [resent] = after.of(act.PublishUpdate, after.feed(LinkUp()))
    assert resent.chunks == sent.chunks
    after.advance(0)
    assert after.of(act.StartFit, after.feed(TaskReceived(drv.task("r1")))) == []
    after.feed(AckReceived(Ack(status="accepted", task_id="r1", nonce=sent.nonce)))
    assert after.session.stats.acks["accepted"] == 1


def test_a_federation_that_started_over_is_followed_from_the_start(caplog):
    device = _ready(version=3)
    device.feed(TaskReceived(drv.task("r4", version=3)))
    assert device.session.book.is_done("r4")
    manifest, _ = drv.model_messages(1, drv.weights(1))
    done = device.feed(ManifestReceived(manifest))
    assert "the federation started over" in caplog.text
    assert done[0] == act.SaveTasks((), None) and device.session.model_version is None
    assert act.Subscribe(device.topics.model_chunks(1)) in done


# ---------------------------------------------------------------- the downlink
def test_a_device_that_skipped_versions_installs_the_newest_through_the_delta_chain():
    from tests.unit.test_model_chain import ARCH, TOPICS, History

    history = History(6)

    class AnyModel:
        def set_weights(self, weights) -> None:
            self.weights = weights

    device = ScriptedDevice(drv.config(federation="chain"), trainer=AnyModel())
    held = HeldModel(3, history.weights[3], ARCH, sha256_hex(history.blob(3)))
    device.feed(Resumed(model=held))
    todo = device.of(act.Subscribe, device.feed(ManifestReceived(history.manifest(6))))
    installed = []
    while todo:
        prefix = todo.pop(0).topic[:-1]
        for topic in sorted(t for t in history.retained if t.startswith(prefix)
                            and "/" not in t[len(prefix):]):
            done = device.feed(drv.ModelChunkReceived(topic, history.retained[topic]))
            todo += device.of(act.Subscribe, done)
            installed += device.of(act.InstallModel, done)
    assert [m.version for m in installed] == [6] and device.session.model_version == 6
    assert device.session.stats.models_via_delta == 1
    assert [s.version for s in device.of(act.SaveModel)] == [6]
    assert [s.topic for s in device.of(act.Subscribe)] == [
        TOPICS.model_delta_chunks(v) for v in (4, 5, 6)]


def test_a_model_the_trainer_refuses_is_not_installed(caplog):
    device = _ready()
    done = device.install(1, {"other": drv.weights(1)["dense0.weight"]})
    assert device.session.model_version == 0 and device.of(act.SaveModel, done) == []
    assert "ignored model 1: it does not fit this device's trainer" in caplog.text
    assert device.session.stats.bad_messages == 1


# ---------------------------------------------------------------- eligibility
def test_a_device_that_turns_ineligible_stops_its_fit_and_trains_later(caplog):
    caplog.set_level(logging.INFO)
    device = _ready()
    device.between_batches = [drv.ELIGIBLE, drv.ineligible("on battery")]
    device.feed(TaskReceived(drv.task("r1", train=drv.TrainConfig(epochs=3, batch_size=4))))
    assert len(device.of(act.StopFit)) == 1 and device.outbox == {}
    assert device.session.stats.stopped_mid_training == 1
    assert device.session.stats.skipped == {"stopped: on battery": 1}
    assert "training stopped at a batch boundary: on battery; nothing sent" in caplog.text
    said = [decode(s.payload, expect=Status) for s in device.statuses()]
    assert [s.eligible for s in said][-1] is False  # said at once, mid-fit
    device.decision = drv.ineligible("on battery")
    assert device.of(act.StartFit, device.advance(5.0)) == []
    device.decision = drv.ELIGIBLE
    assert len(device.of(act.PublishUpdate, device.advance(5.0))) == 1


def test_a_task_that_finds_the_device_ineligible_is_counted_once(caplog):
    caplog.set_level(logging.INFO)
    device = _ready()
    device.decision = drv.ineligible("battery 12% < 20%")
    for _ in range(3):
        assert device.of(act.StartFit, device.feed(TaskReceived(drv.task("r1")))) == []
    assert device.session.stats.skipped == {"battery": 1}
    assert "task r1: not training now: battery 12% < 20%" in caplog.text
    device.decision = drv.ELIGIBLE
    device.feed(TaskReceived(drv.task("r2", invited=("dev-9",))))  # one reason per round
    device.feed(TaskReceived(drv.task("r3", invited=("dev-9",))))
    assert device.session.stats.skipped == {"battery": 1, "not invited": 2}


def test_the_status_is_republished_once_its_interval_has_passed():
    device = ScriptedDevice(drv.config(status_interval_s=3600.0))
    device.feed(LinkUp())
    assert len(device.statuses()) == 1
    assert len(device.statuses(device.advance(0))) == 1  # the first decision: a change
    assert device.statuses(device.advance(5.0)) == []  # nothing new, interval not passed
    assert len(device.statuses(device.advance(3600.0))) == 1
    status = decode(device.statuses()[-1].payload, expect=Status)
    assert status.online and status.time == pytest.approx(drv.WALL + device.t)


# ---------------------------------------------------------------- pacing
def test_a_device_sleeps_until_the_check_in_and_then_reconnects():
    device = _ready(ScriptedDevice(drv.config(sleep_between_tasks=True)))
    sent = _trained(device)
    done = device.feed(AckReceived(Ack(status="accepted", task_id="r1", nonce=sent.nonce,
                                       next_checkin_s=60.0)))
    [goodbye] = device.statuses(done)
    status = decode(goodbye.payload, expect=Status)
    assert not status.online and status.reason == "sleeping 60 s"
    assert device.of(act.SleepUntil, done) == [act.SleepUntil(device.t + 60.0)]
    assert device.session.sleeping and device.session.stats.sleeps == 1
    assert device.advance(30.0) == []  # no re-check, no resend while asleep
    assert 0.01 <= device.session.poll_timeout(device.t) <= 0.5
    woke = device.advance(31.0)
    assert woke[0] == act.Wake() and not device.session.sleeping
    assert len(device.of(act.CheckEligibility, woke)) == 1


def test_the_session_is_finished_when_the_final_model_is_here():
    device = _ready(version=2)
    device.feed(TaskReceived(drv.task("r-end", version=3, done=True)))
    assert not device.session.finished
    device.install(3, drv.weights(3))
    assert device.session.finished


def test_the_session_never_reads_a_clock(monkeypatch):
    """Time is what the events say: a session works with the clocks broken."""
    import time

    device = _ready()

    def no_clock() -> float:
        raise AssertionError("the session read a clock")

    monkeypatch.setattr(time, "monotonic", no_clock)
    monkeypatch.setattr(time, "time", no_clock)
    sent = _trained(device)
    device.advance(31.0)
    device.feed(AckReceived(Ack(status="accepted", nonce=sent.nonce)))
    assert device.session.stats.acks["accepted"] == 1
    assert len(device.of(act.PublishUpdate)) == 2  # sent, resent


def test_no_module_of_the_session_imports_a_clock_or_does_io():
    from pathlib import Path

    import edge_client.session as package

    for path in Path(package.__file__).parent.glob("*.py"):
        source = path.read_text()
        for banned in ("import time", "from time", "open(", "paho", "socket", "threading"):
            assert banned not in source, f"{path.name} uses {banned}"
