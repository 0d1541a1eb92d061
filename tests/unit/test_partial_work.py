"""Partial work (edge_client/session/partial_work.py): a fit cut short at the task's
deadline, by a work bound or (when configured) by eligibility sends the update it has,
its sample count scaled by the share of the whole fit it did; "off" keeps the old rules."""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
import pytest

from edge_client.session import actions as act
from edge_client.session.events import LinkUp, TaskReceived
from edge_client.shared.protocol import Task, Update, decode, encode
from edge_client.training import FitResult, TrainConfig, mlp_trainer
from tests.unit import session_driver as drv
from tests.unit.session_driver import ScriptedDevice


class SlowTrainer:
    """The MLP trainer on a device whose every batch takes one scripted second."""

    def __init__(self) -> None:
        self.inner = mlp_trainer(drv.SIZES, seed=1)
        self.device: ScriptedDevice | None = None

    def get_weights(self):  # type: ignore[no-untyped-def]
        return self.inner.get_weights()

    def set_weights(self, weights) -> None:  # type: ignore[no-untyped-def]
        self.inner.set_weights(weights)

    def evaluate(self, x: np.ndarray, y: np.ndarray) -> dict[str, float]:
        return self.inner.evaluate(x, y)

    def fit(self, x: np.ndarray, y: np.ndarray, config: TrainConfig,
            should_stop: Callable[[], bool] | None = None) -> FitResult:
        def slow() -> bool:
            assert self.device is not None
            self.device.t += 1.0
            return should_stop() if should_stop is not None else False
        return self.inner.fit(x, y, config, should_stop=slow)


def _slow_device(**config: object) -> ScriptedDevice:
    trainer = SlowTrainer()
    device = ScriptedDevice(drv.config(**config), trainer=trainer)
    trainer.device = device
    device.feed(LinkUp())
    device.advance(0)
    device.install(0, drv.weights(0))
    return device


def _sent(device: ScriptedDevice) -> list[Update]:
    return [decode(payload, expect=Update) for payload in device.outbox.values()]


# 40 samples in batches of 4 for 3 epochs: a whole fit is 30 batches.
TRAIN = TrainConfig(epochs=3, batch_size=4)


def test_a_fit_stops_at_the_deadline_and_sends_what_it_has_weighted_by_work(caplog):
    caplog.set_level(logging.INFO)
    device = _slow_device(deadline_margin_s=1.0)
    deadline = device.now.wall + 4.5  # checks at +1 .. +4; +4 >= deadline - 1: stop
    train = TrainConfig(epochs=3, batch_size=4, partial_work="deadline")
    device.feed(TaskReceived(drv.task("r1", train=train, deadline=deadline)))
    assert len(device.of(act.StopFit)) == 1
    (update,) = _sent(device)
    assert update.metrics["work_done"] == pytest.approx(3 / 30)
    assert update.num_samples == 4  # 40 samples x 3/30 of the work
    assert device.session.stats.partial_updates == 1
    assert "stopping training to send the partial update" in caplog.text
    assert "stopped at the task's deadline after 3 batches" in caplog.text


def test_a_task_already_at_its_deadline_is_not_trained_for_again(caplog):
    caplog.set_level(logging.INFO)
    device = _slow_device(deadline_margin_s=5.0)
    train = TrainConfig(epochs=3, batch_size=4, partial_work="deadline")
    device.feed(TaskReceived(drv.task("r1", train=train, deadline=device.now.wall + 2.0)))
    assert device.outbox == {} and device.session.book.is_done("r1")
    assert "stopped before its first batch, at the task's deadline" in caplog.text
    assert device.of(act.StartFit, device.advance(5.0)) == []


def test_without_partial_work_the_deadline_does_not_stop_the_fit():
    device = _slow_device(deadline_margin_s=1.0)
    device.feed(TaskReceived(drv.task("r1", train=TRAIN, deadline=device.now.wall + 4.5)))
    assert device.of(act.StopFit) == []
    (update,) = _sent(device)
    assert update.num_samples == 40 and "work_done" not in update.metrics


def test_a_fit_bounded_by_max_batches_counts_for_its_share(tmp_path):
    """Through the real shell (DeviceIO bounds the trainer's batches)."""
    client = drv.offline_device(tmp_path / "dev")
    train = TrainConfig(epochs=2, batch_size=8, max_batches=5, partial_work="deadline")
    drv.offer(client, Task(task_id="r1", mode="sync", round=1, model_version=0,
                           train=train, invited=("dev-0",)))
    [entry] = client.outbox.entries()
    update = decode(entry.payload, expect=Update)
    assert update.metrics["work_done"] == pytest.approx(0.5)  # 5 of 2 x 5 batches
    assert update.num_samples == 20


@pytest.mark.parametrize(("mode", "sent"), [("deadline", 0), ("always", 1)])
def test_a_device_no_longer_eligible_sends_only_when_configured(mode: str, sent: int):
    device = _slow_device()
    device.between_batches = [drv.ELIGIBLE, drv.ELIGIBLE, drv.ineligible("on battery")]
    train = TrainConfig(epochs=3, batch_size=4, partial_work=mode)
    device.feed(TaskReceived(drv.task("r1", train=train)))
    assert len(device.of(act.StopFit)) == 1
    updates = _sent(device)
    assert len(updates) == sent
    assert device.session.stats.stopped_mid_training == 1
    if sent:
        assert updates[0].metrics["work_done"] == pytest.approx(2 / 30)


def test_the_settings_travel_in_the_task_and_are_absent_when_off():
    plain = drv.task("r1", train=TrainConfig())
    assert b"partial_work" not in encode(plain) and b"max_batches" not in encode(plain)
    asked = drv.task("r1", train=TrainConfig(partial_work="always", max_batches=7))
    assert decode(encode(asked), expect=Task).train == asked.train


@pytest.mark.parametrize(("fields", "message"), [
    ({"partial_work": "sometimes"}, "partial_work must be one of"),
    ({"max_batches": -1}, "max_batches must be an int >= 0"),
])
def test_bad_partial_work_settings_are_refused(fields: dict, message: str):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**fields)


def test_work_done_is_batches_over_a_whole_fit():
    config = TrainConfig(epochs=2, batch_size=32)
    assert config.full_batches(100) == 8
    assert config.work_done(100, 2) == 0.25 and config.work_done(100, 9) == 1.0
