"""Models that change shape, on the device (issue 18): a model it cannot run (too
large, an architecture its trainer cannot take, an unsupported layer) is refused with a
one-line reason in its status; it keeps the model it holds and is not eligible for the
refused model's tasks until a model it can run arrives."""

from __future__ import annotations

import logging

import pytest

from edge_client.device_io import DeviceIO
from edge_client.narration import DeviceNarrator
from edge_client.session import actions as act
from edge_client.session.events import LinkUp
from edge_client.shared.protocol import Status, decode, encode
from edge_client.training import mlp_trainer
from tests.unit import session_driver as drv
from tests.unit.session_driver import ScriptedDevice, model_messages


def _ready(device: ScriptedDevice) -> ScriptedDevice:
    device.feed(LinkUp())
    device.advance(0)
    device.install(0, drv.weights(0))
    assert device.session.model_version == 0
    return device


def _status(actions) -> Status:
    [published] = [a for a in actions if isinstance(a, act.Publish) and "/status/" in a.topic]
    return decode(published.payload, expect=Status)


def test_a_model_the_trainer_cannot_take_is_refused_in_the_status_once(caplog):
    caplog.set_level(logging.INFO)
    device = _ready(ScriptedDevice())
    wider = mlp_trainer([8, 12, 3], seed=2).get_weights()  # another architecture
    said = _status(device.install(1, wider))
    assert not said.eligible and said.model_version == 0
    assert said.reason.startswith("model refused: version 1: ")
    assert said.reason.endswith("; serving version 0") and "\n" not in said.reason
    assert "model refused: version 1" in caplog.text
    manifest, _ = model_messages(1, wider)
    assert device.receive(device.topics.model, encode(manifest)) == []  # said already
    back = _status(device.install(2, drv.weights(2)))  # a model it runs: eligible again
    assert back.eligible and back.reason == "" and back.model_version == 2


def test_a_model_over_max_model_bytes_is_refused_without_fetching_it():
    device = _ready(ScriptedDevice(drv.config(max_model_bytes=2000)))
    big = mlp_trainer([8, 64, 3], seed=2).get_weights()
    manifest, _ = model_messages(1, big)
    assert manifest.size > 2000
    done = device.receive(device.topics.model, encode(manifest))
    assert device.of(act.Subscribe, done) == []  # no chunk fetched
    said = _status(done)
    assert not said.eligible and said.model_version == 0
    assert said.reason == (f"model refused: version 1: it is {manifest.size} bytes, over "
                           f"max_model_bytes 2000; serving version 0")


class _Plain:
    """A trainer that knows one architecture only (no `adopt`)."""

    def __init__(self) -> None:
        self.inner = mlp_trainer([8, 6, 3])

    def set_weights(self, weights) -> None:
        self.inner.set_weights(weights)


def test_device_io_adopts_a_new_architecture_it_can_run_and_refuses_the_rest(tmp_path):
    config = drv.config(state_dir=tmp_path)
    narrator = DeviceNarrator("dev-0", "default", "fedge/default/task")
    served: list[tuple[int, dict]] = []
    io = DeviceIO(config, mlp_trainer([8, 6, 3]), narrator,
                  lambda v, arch, w: served.append((v, arch)))
    wider_arch = {"kind": "mlp", "sizes": [8, 12, 3]}
    wider = mlp_trainer([8, 12, 3], seed=3).get_weights()
    assert isinstance(io.execute(act.InstallModel(1, wider, wider_arch), None, None, None),
                      drv.ModelInstalled)
    assert io.trainer.get_weights()["dense0.weight"].shape == (8, 12)
    assert served == []  # what the app serves follows ServeModel (session/serving.py)
    odd = {"kind": "sequential", "input_shape": [8], "layers": [{"type": "conv2d"}]}
    refused = io.execute(act.InstallModel(2, drv.weights(0), odd), None, None, None)
    assert isinstance(refused, drv.ModelRefused)
    assert refused.reason.startswith("this device cannot run its architecture (")
    assert io.trainer.get_weights()["dense0.weight"].shape == (8, 12)  # kept
    plain = DeviceIO(config, _Plain(), narrator, None)
    refused = plain.execute(act.InstallModel(3, wider, wider_arch), None, None, None)
    assert refused.reason.startswith("it does not fit this device's trainer (")


def test_adopt_keeps_the_old_model_when_the_weights_do_not_fit():
    trainer = mlp_trainer([8, 6, 3])
    with pytest.raises(ValueError):
        trainer.adopt({"kind": "mlp", "sizes": [8, 12, 3]}, drv.weights(0))
    assert trainer.get_weights()["dense0.weight"].shape == (8, 6)


def test_a_device_that_refused_the_last_line_still_finishes_when_told():
    device = _ready(ScriptedDevice())
    device.install(1, mlp_trainer([8, 12, 3], seed=2).get_weights())
    assert not device.session.finished
    device.receive(device.topics.task, encode(drv.task("r9", version=1, done=True)))
    assert device.session.finished and device.session.model_version == 0
