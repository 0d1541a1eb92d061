"""`fedge bridge` as a user runs it: a subprocess on one pty, the C simulator on the other."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import numpy as np
import pytest

from edge_client.training import mlp_trainer
from tests.integration.bridge_harness import (
    McuSim,
    NullModem,
    build_or_skip,
    wait_until,
    write_samples,
)
from tests.integration.fleet import FEDERATION, Digits, Running, make_aggregator

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def sim_binary(tmp_path_factory) -> Path:
    return build_or_skip("mcu_sim", tmp_path_factory.mktemp("firmware"))


def _fedge(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "fedge.cli", "-v", "bridge", *args],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def _interrupt(process: subprocess.Popen, timeout: float = 30) -> tuple[str, str]:
    process.send_signal(signal.SIGINT)
    try:
        return process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        raise


def _events(data_dir: Path) -> list[dict]:
    path = data_dir / "events.jsonl"
    if not path.exists():
        return []
    events = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(json.JSONDecodeError):  # a line being written right now
            events.append(json.loads(line))
    return events


def _confirmed(data_dir: Path) -> list[int]:
    return [e["version"] for e in _events(data_dir) if e["kind"] == "model" and e["confirmed"]]


def test_fedge_bridge_collects_pushes_and_exports(sim_binary, tmp_path):
    rows = [(i % 3, [i, 2 * i]) for i in range(25)]
    samples = write_samples(tmp_path / "samples.txt", rows)
    model = tmp_path / "model.tflite"
    model.write_bytes(os.urandom(1500))
    wire = NullModem()
    sim = McuSim(sim_binary, wire.mcu_port, "--samples", str(samples), "--shape", "2")
    data_dir = tmp_path / "mcu"
    process = _fedge("--port", wire.bridge_port, "--data-dir", str(data_dir),
                     "--push-model", str(model), "--model-version", "5",
                     "--export-npz", str(tmp_path / "out.npz"))
    try:
        crc = zlib.crc32(model.read_bytes())
        assert sim.wait_for("model-installed") == \
            f"model-installed version=5 size=1500 crc32={crc:08x}"
        wait_until(lambda: any(e.get("text") == "all 25 samples sent"
                               for e in _events(data_dir)), 20, "the MCU's last log")
        wait_until(lambda: _confirmed(data_dir) == [5], 20, "the bridge to see the ACK")
        out, err = _interrupt(process)
    finally:
        if process.poll() is None:
            process.kill()
        sim.stop()
        wire.close()
    assert process.returncode == 0, err
    assert "wrote 25 labelled samples" in out
    assert "device sim-mcu; samples 25" in out and "models confirmed [5]" in out
    with np.load(tmp_path / "out.npz", allow_pickle=False) as npz:
        assert npz["x"].tolist() == [[float(v) for v in values] for _, values in rows]
        assert npz["y"].tolist() == [label for label, _ in rows]
    model_events = [e for e in _events(data_dir) if e["kind"] == "model"]
    assert model_events == [{**model_events[0], "version": 5, "confirmed": True,
                             "crc32": f"{crc:08x}", "size": 1500}]


def test_fedge_bridge_refuses_a_port_it_cannot_open(tmp_path):
    done = subprocess.run([sys.executable, "-m", "fedge.cli", "bridge", "--port",
                           str(tmp_path / "no-such-tty"), "--data-dir", str(tmp_path / "d")],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "cannot open serial port" in done.stderr
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize(("content", "version", "problem"), [
    (b"", "1", "non-empty"),
    (b"model", "-1", "version -1"),
])
def test_fedge_bridge_refuses_a_model_it_could_never_push(tmp_path, content, version, problem):
    """At once, with the reason, before anything is opened: not a traceback, and not a
    bridge thread that dies while the command waits on for Ctrl-C."""
    model = tmp_path / "model.tflite"
    model.write_bytes(content)
    done = subprocess.run([sys.executable, "-m", "fedge.cli", "bridge", "--port", "loop://",
                           "--data-dir", str(tmp_path / "d"), "--push-model", str(model),
                           "--model-version", version],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert problem in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "d").exists()


def test_fedge_bridge_joins_a_federation_on_the_mcus_data(sim_binary, tmp_path, mosquitto):
    digits = Digits(devices=1)
    x, y = digits.shards[0]
    x, y = x[:300], y[:300]
    rows = [(int(label), [int(v) for v in np.rint(row * 16)])
            for row, label in zip(x, y, strict=True)]
    samples = write_samples(tmp_path / "digits.txt", rows)
    agg = make_aggregator(mosquitto, tmp_path, digits, rounds=2,
                          arch={"kind": "mlp", "sizes": digits.sizes, "qat": True},
                          initial=_qat_initial(digits.sizes))
    config = tmp_path / "device.toml"
    config.write_text(textwrap.dedent(f"""\
        device_id = "mcu-gateway"
        federation = "{FEDERATION}"
        host = "{mosquitto.host}"
        port = {mosquitto.port}
        state_dir = "{tmp_path / 'state'}"

        [eligibility]
        enabled = false

        [model]
        kind = "mlp"
        sizes = {digits.sizes}
        qat = true
        """))
    wire = NullModem()
    sim = McuSim(sim_binary, wire.mcu_port, "--samples", str(samples), "--shape", "64")
    process = _fedge("--port", wire.bridge_port, "--data-dir", str(tmp_path / "mcu"),
                     "--device-config", str(config), "--min-samples", "300",
                     "--scale", "0.0625")
    # A newer model replaces one still on its way to the MCU, so version 2 must not exist
    # before version 1 is confirmed: training pauses at version 1 (queued on the loop
    # before any update for round 2 is taken) until the MCU has it.
    agg.on_version = lambda report: agg.set_training(False) if report.version == 1 else None
    run = Running(agg.run, "aggregator")
    try:
        wait_until(lambda: 1 in _confirmed(tmp_path / "mcu"), 60, "the MCU to confirm v1")
        agg.set_training(True)
        run.join(90)
        assert agg.version == 2
        sim.wait_for("model-installed version=2 ", timeout=30)
        wait_until(lambda: 2 in _confirmed(tmp_path / "mcu"), 20, "the bridge to see the ACK")
        out, err = _interrupt(process)
    finally:
        if process.poll() is None:
            process.kill()
        sim.stop()
        wire.close()
    assert process.returncode == 0, err
    assert "models confirmed [1, 2]" in out
    assert agg.history[-1].updates == 1  # the MCU gateway's update made version 2


def _qat_initial(sizes: list[int]) -> dict:
    return mlp_trainer(sizes, seed=0, qat=True).get_weights()
