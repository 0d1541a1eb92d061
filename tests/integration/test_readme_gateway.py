"""The README's "Run the aggregator on a gateway" walk-through, followed as a user would:
the shipped mosquitto.conf, aggregator.toml and device.toml, edited only where the README
says to (federation, [model], [sync]) and where this machine differs (ports, folders),
then `fedge aggregator serve` and two `fedge device`. It ends with a trained model, and
the logs say so at the default level."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fedge.broker import MosquittoBroker, free_port
from fedge.datasets import load_digits
from tests.integration.fedge_process import LoggedFedge

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


def _edited(text: str, changes: dict[str, str]) -> str:
    """Set `key = value` lines of a TOML file the way a user edits them in place."""
    for key, value in changes.items():
        text, count = re.subn(rf"(?m)^{re.escape(key)} = .*$", f"{key} = {value}", text,
                              count=1)
        assert count == 1, f"the example has no line {key!r}"
    return text


def test_the_gateway_walk_through_trains_a_model(tmp_path):
    # 1. mosquitto with the shipped config (its port and folder moved for this machine).
    port = free_port()
    conf = (REPO / "examples/gateway/mosquitto.conf").read_text()
    conf = conf.replace("listener 1883", f"listener {port} 127.0.0.1")
    conf = conf.replace("/var/lib/mosquitto/", f"{tmp_path / 'mosquitto'}/")
    (tmp_path / "mosquitto").mkdir()
    (tmp_path / "mosquitto.conf").write_text(conf)
    broker = MosquittoBroker.start_with_conf(tmp_path / "mosquitto.conf", port)
    # 3. aggregator.toml: federation, [model] and [sync] set as the README says.
    aggregator_toml = _edited((REPO / "examples/gateway/aggregator.toml").read_text(), {
        "port": str(port), "db_path": f'"{tmp_path / "aggregator.sqlite3"}"',
        "rounds": "3", "sizes": "[64, 32, 10]", "target_updates": "2",
        "round_timeout_s": "60"})
    (tmp_path / "aggregator.toml").write_text(aggregator_toml)
    # The devices: the shipped device.toml with their own ids, folders and data. Their
    # eligibility is off here: this machine is a busy CI box, not an idle charging Pi.
    x, y = load_digits()
    devices = []
    for i, name in enumerate(("pi-kitchen", "pi-hall")):
        np.savez(tmp_path / f"{name}.npz", x=x[i::2][:400], y=y[i::2][:400])
        device_toml = _edited((REPO / "examples/device_app/device.toml").read_text(), {
            "device_id": f'"{name}"', "host": '"127.0.0.1"', "port": str(port),
            "state_dir": f'"{tmp_path / name}"', "exit_when_done": "true",
            "enabled": "false", "sizes": "[64, 32, 10]",
            "path": f'"{tmp_path / f"{name}.npz"}"'})
        (tmp_path / f"{name}.toml").write_text(device_toml)
    serve = LoggedFedge("aggregator", "serve", "--config", str(tmp_path / "aggregator.toml"))
    try:
        devices = [LoggedFedge("device", "--config", str(tmp_path / f"{name}.toml"))
                   for name in ("pi-kitchen", "pi-hall")]
        serve.wait_for("round 1 opened", 60)
        serve.wait_for("version 3 made from 2 updates of round 3", 120)
        serve.wait_for("training finished at version 3", 60)
        for device in devices:
            device.wait_for("model version 3 installed", 60)
            assert device.process.wait(60) == 0  # told the federation is done
            assert "accepted by the aggregator" in device.text
        assert serve.process.poll() is None  # the gateway serves on after its last round
        status = subprocess.run([sys.executable, "-m", "fedge.cli", "status", "--config",
                                 str(tmp_path / "aggregator.toml")],
                                capture_output=True, text=True, timeout=60)
        assert "model       version 3 (3 made" in status.stdout, status.stderr
        assert "training    finished" in status.stdout
    finally:
        for device in devices:
            device.stop()
        assert serve.stop() == 0
        broker.stop()
    assert "Traceback" not in serve.text
