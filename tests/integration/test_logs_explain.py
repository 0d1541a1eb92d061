"""The logs say what the system does and why, with default settings: real mosquitto,
`fedge aggregator serve` and `fedge device` as subprocesses, read line by line."""

from __future__ import annotations

import time

import numpy as np
import pytest

from fedge.datasets import load_digits
from fedge.profiles import FakeDeviceTree
from tests.integration.fedge_process import LoggedFedge

pytestmark = pytest.mark.integration
MODEL = "[model]\nsizes = [64, 16, 10]\n"
# The device's default eligibility_check_s is 5 s: the reason must show within about one
# interval; the timeouts leave room for a loaded machine.
WITHIN = 15.0


def _aggregator(tmp_path, port: int, federation: str = "plant-7", rounds: int = 2,
                *flags: str, extra: str = "") -> LoggedFedge:
    config = tmp_path / "aggregator.toml"
    config.write_text(f'federation = "{federation}"\nport = {port}\nrounds = {rounds}\n'
                      f'db_path = "{tmp_path / "agg.sqlite3"}"\n{MODEL}'
                      f'[sync]\ntarget_updates = 1\n{extra}')
    return LoggedFedge("aggregator", "serve", *flags, "--config", str(config))


def _device(tmp_path, port: int, name: str, federation: str = "plant-7",
            tree: FakeDeviceTree | None = None, extra: str = "",
            state: str = "") -> LoggedFedge:
    data = tmp_path / f"{name}.npz"
    if not data.exists():
        x, y = load_digits()
        np.savez(data, x=x[:200], y=y[:200])
    eligibility = (f'[eligibility]\nsys_root = "{tree.sys_root}"\n'
                   f'proc_root = "{tree.proc_root}"\n' if tree is not None
                   else "[eligibility]\nenabled = false\n")
    config = tmp_path / f"{name}-{federation}{state}.toml"
    config.write_text(f'device_id = "{name}"\nfederation = "{federation}"\nport = {port}\n'
                      f'state_dir = "{tmp_path / ("state-" + name + federation + state)}"\n'
                      f'{extra}'
                      f'{MODEL}[data]\npath = "{data}"\n{eligibility}')
    return LoggedFedge("device", "--config", str(config))


def test_an_ineligible_device_says_why_and_so_does_the_gateway(mosquitto, tmp_path):
    tree = FakeDeviceTree(tmp_path / "device-tree")
    tree.set_power(battery_pct=80, charging=False, mains_online=False)  # unplugged
    tree.set_network("eth0")
    tree.set_temperature(45)
    aggregator = _aggregator(tmp_path, mosquitto.port)
    device = _device(tmp_path, mosquitto.port, "pi-kitchen", tree=tree)
    try:
        assert "federation 'plant-7'" in device.wait_for("state in", WITHIN)
        device.wait_for("connected to the broker", WITHIN)
        line = device.wait_for("pi-kitchen: not eligible to train: on battery", WITHIN)
        assert "([eligibility] require_charging)" in line  # what to change, if one disagrees
        line = aggregator.wait_for("not eligible (1 on battery)", WITHIN)
        assert "waiting for devices: round 1 needs 1 available" in line
        assert "1 known: 0 offline" in line
        tree.set_power(battery_pct=80, charging=True, mains_online=True)  # plugged in
        # hold_s (60 s by default) must pass before it trains: the device says so
        device.wait_for("holding: ok for", WITHIN)
    finally:
        device.stop()
        aggregator.stop()
    assert "Traceback" not in device.text + aggregator.text


def test_a_healthy_federation_tells_its_story(mosquitto, tmp_path):
    aggregator = _aggregator(tmp_path, mosquitto.port, "plant-7", 2, "--exit-when-done")
    device = _device(tmp_path, mosquitto.port, "pi-hall")
    try:
        aggregator.wait_for("connected to the broker", WITHIN)
        aggregator.wait_for("round 1 opened", 30)
        device.wait_for("invited", 30)
        device.wait_for("training on 200 samples", 30)
        device.wait_for("sent,", 30)
        device.wait_for("accepted by the aggregator", 30)
        aggregator.wait_for("version 1 made from 1 updates of round 1", 30)
        device.wait_for("model version 2 installed", 60)
        aggregator.wait_for("training finished at version 2", 30)
        device.wait_for("the aggregator says the federation finished at version 2", 30)
        assert aggregator.process.wait(30) == 0
        assert device.process.wait(30) == 0  # exit_when_done: it left on its own
    finally:
        device.stop()
        aggregator.stop()


def test_a_mistyped_federation_name_is_named(mosquitto, tmp_path):
    aggregator = _aggregator(tmp_path, mosquitto.port, "plant-7")
    device = _device(tmp_path, mosquitto.port, "pi-shed", federation="plant-8",
                     extra="no_task_warning_s = 2.0\n")
    try:
        line = device.wait_for("no task has arrived on fedge/plant-8/task", WITHIN)
        assert "federation 'plant-8'" in line
        aggregator.wait_for("waiting for devices", WITHIN)
    finally:
        device.stop()
        aggregator.stop()


def test_a_finished_run_on_the_broker_is_explained(mosquitto, tmp_path):
    """A run finished earlier left its retained 'done' task on the broker: a new device
    with the default exit_when_done says what it saw and leaves, instead of silently."""
    first = _aggregator(tmp_path, mosquitto.port, "plant-7", 1, "--exit-when-done")
    device = _device(tmp_path, mosquitto.port, "pi-one")
    try:
        assert first.process.wait(60) == 0
        assert device.process.wait(60) == 0
    finally:
        device.stop()
        first.stop()
    late = _device(tmp_path, mosquitto.port, "pi-late")
    try:
        line = late.wait_for("the aggregator says the federation finished at version 1",
                             WITHIN)
        assert "an earlier run still on the broker?" in line and "leaving" in line
        assert late.process.wait(30) == 0
    finally:
        late.stop()


def test_two_devices_with_one_id_are_told_so(mosquitto, tmp_path):
    """Two boards flashed with the same config knock each other off the broker: each
    sees the other's fresh status on its own topic and says what is going on."""
    aggregator = _aggregator(tmp_path, mosquitto.port, "plant-7", 0)  # until stopped
    one = _device(tmp_path, mosquitto.port, "pi-twin", state="a")
    two = _device(tmp_path, mosquitto.port, "pi-twin", state="b")
    try:
        warning = "another client is running with device_id 'pi-twin'"
        deadline = time.monotonic() + WITHIN
        while not any(warning in p.text for p in (one, two)):
            assert time.monotonic() < deadline, one.text + "\n----\n" + two.text
            time.sleep(0.2)
        aggregator.wait_for("two clients are using device id 'pi-twin'", WITHIN)
    finally:
        one.stop()
        two.stop()
        aggregator.stop()


def test_canaries_beside_differential_privacy_are_called_out_at_start(mosquitto, tmp_path):
    aggregator = _aggregator(tmp_path, mosquitto.port, extra=(
        '[privacy]\nmode = "central"\n[rollout]\ncanary_fraction = 0.5\n'))
    try:
        line = aggregator.wait_for("canary reports", WITHIN)
        assert "WARNING" in line and "outside [privacy]" in line
        aggregator.wait_for("connected to the broker", WITHIN)  # a caution, not a refusal
    finally:
        aggregator.stop()
