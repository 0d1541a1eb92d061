"""examples/vibration_cnn: a QAT 1D-CNN federated over mosquitto, served as int8 ONNX.

A small run of the example (4 machines, 6 rounds) through the real path: EdgeClients
and the Aggregator over the test's mosquitto, one device hot-swapping an onnxruntime
int8 Predictor, the final model exported and served. The script itself runs once as
a subprocess. The synthetic data's physics is checked on its own first.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edge_client.export.runtimes import OnnxModel
from examples.vibration_cnn.run import ExampleConfig, make_data, run_example
from examples.vibration_cnn.synthetic import (
    CLASSES,
    SAMPLE_RATE_HZ,
    Machine,
    balanced_labels,
    make_fleet,
    windows,
)

pytestmark = pytest.mark.integration

RUN_PY = Path(__file__).resolve().parents[2] / "examples" / "vibration_cnn" / "run.py"
MACHINE = Machine(name="m", rpm=(1500.0, 1500.0), gain=(1.0, 1.0, 1.0), noise_g=0.05,
                  resonance_hz=300.0, bpfo_ratio=3.3, class_mix=(0.25, 0.25, 0.25, 0.25))


def _band_energy(x: np.ndarray, axis: int, low_hz: float, high_hz: float) -> float:
    """Mean spectral energy of one axis between two frequencies, over the windows."""
    spectrum = np.abs(np.fft.rfft(x[:, :, axis], axis=1)) ** 2
    freqs = np.fft.rfftfreq(x.shape[1], 1 / SAMPLE_RATE_HZ)
    return float(spectrum[:, (freqs >= low_hz) & (freqs <= high_hz)].mean())


def _class_windows(label: int, seed: int = 0) -> np.ndarray:
    return windows(MACHINE, 200, np.random.default_rng(seed), np.full(200, label))[0]


def test_each_fault_has_its_signature():
    normal, imbalance, misalignment, bearing = (_class_windows(c) for c in range(4))
    shaft_hz = 1500.0 / 60  # 25 Hz: 1x, 2x and the housing resonance are far apart
    # imbalance: more radial energy at 1x than a healthy machine
    assert _band_energy(imbalance, 0, 15, 35) > 4 * _band_energy(normal, 0, 15, 35)
    # misalignment: 2x radially, and more axial (z) vibration than imbalance
    assert (_band_energy(misalignment, 1, 2 * shaft_hz - 8, 2 * shaft_hz + 8)
            > 4 * _band_energy(imbalance, 1, 2 * shaft_hz - 8, 2 * shaft_hz + 8))
    assert _band_energy(misalignment, 2, 10, 70) > 4 * _band_energy(imbalance, 2, 10, 70)
    # bearing fault: the resonance rings, strongest along y
    assert _band_energy(bearing, 1, 250, 350) > 10 * _band_energy(normal, 1, 250, 350)
    assert _band_energy(bearing, 1, 250, 350) > _band_energy(bearing, 0, 250, 350)
    for x in (normal, imbalance, misalignment, bearing):
        assert x.shape == (200, 128, 3) and x.dtype == np.float32
        assert np.abs(x.mean(axis=1)).max() < 1e-5  # the mean is removed per window


def test_the_data_comes_from_the_seed_alone_and_machines_differ():
    a, b = make_fleet(4, np.random.default_rng(7)), make_fleet(4, np.random.default_rng(7))
    assert a == b
    assert len({m.rpm for m in a}) == 4 and len({m.class_mix for m in a}) == 4
    xa, ya = windows(a[0], 50, np.random.default_rng(1))
    xb, yb = windows(b[0], 50, np.random.default_rng(1))
    assert np.array_equal(xa, xb) and np.array_equal(ya, yb)
    assert not np.array_equal(xa, windows(a[0], 50, np.random.default_rng(2))[0])
    labels = balanced_labels(10, np.random.default_rng(0))
    assert sorted(np.bincount(labels, minlength=len(CLASSES))) == [2, 2, 3, 3]


def test_bad_settings_are_clear_errors():
    with pytest.raises(ValueError, match="class_mix"):
        Machine("m", (1000.0, 1200.0), (1.0, 1.0, 1.0), 0.05, 300.0, 3.3, (0.5, 0.5, 0.5, 0.5))
    with pytest.raises(ValueError, match="Nyquist"):
        Machine("m", (1000.0, 1200.0), (1.0, 1.0, 1.0), 0.05, 600.0, 3.3, MACHINE.class_mix)
    with pytest.raises(ValueError, match="labels"):
        windows(MACHINE, 3, np.random.default_rng(0), np.array([0, 1, 4]))
    with pytest.raises(ValueError, match="devices"):
        ExampleConfig(devices=0)


def test_a_small_federation_learns_and_int8_serves_as_float(mosquitto, tmp_path):
    cfg = ExampleConfig(devices=4, rounds=6, seed=0, windows_per_device=300,
                        test_windows_per_machine=100, check_windows=60,
                        out=tmp_path / "out", workdir=tmp_path / "work")
    summary = run_example(cfg, broker=mosquitto)
    final = summary["final"]

    assert len(summary["accuracy_per_round"]) == 6 and final["model_version"] == 6
    # the exported model is the gateway's last version: its QAT forward scores the same
    assert final["qat_numpy_accuracy"] == pytest.approx(summary["accuracy_per_round"][-1],
                                                        abs=1e-4)
    assert final["int8_onnxruntime_accuracy"] > 2 * summary["chance_accuracy"]
    assert abs(final["int8_onnxruntime_accuracy"] - final["float_accuracy"]) <= 0.03
    assert final["int8_vs_qat_numpy_argmax_agreement"] >= 0.98
    assert final["sizes_bytes"]["onnx_int8"] < final["sizes_bytes"]["onnx_float32"] / 2

    # the file on disk, loaded on its own, scores what the Predictor scored
    data = make_data(cfg)
    int8_file = Path(final["files"]["vibration_cnn_int8.onnx"])
    model = OnnxModel(int8_file.read_bytes(), True, (128, 3))
    accuracy = float((model.logits(data.x_test).argmax(axis=1) == data.y_test).mean())
    assert accuracy == pytest.approx(final["int8_onnxruntime_accuracy"], abs=1e-4)
    assert final["int8_file_matches_predictor"] is True

    # device 0 swapped its Predictor to every trained version; version 0 had no ranges
    serving = summary["device_serving"]
    assert serving["versions_served"] == [1, 2, 3, 4, 5, 6] and serving["swaps"] == 6
    assert "[0, 0]" in serving["not_served"]["0"]
    assert len(serving["local_accuracy_per_version"]) == 6
    assert [m["windows"] for m in summary["machines"]] == [300] * 4
    assert (tmp_path / "work" / "aggregator.sqlite3").is_file()


def test_the_script_prints_json_and_keeps_the_onnx(tmp_path):
    done = subprocess.run(
        [sys.executable, str(RUN_PY), "--devices", "2", "--rounds", "2", "--seed", "3",
         "--json", "--broker", "mosquitto", "--out", str(tmp_path / "out"),
         "--workdir", str(tmp_path / "work")],
        capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads(done.stdout)  # stdout holds the JSON alone; progress went to stderr
    assert "round   2" in done.stderr
    assert summary["devices"] == 2 and summary["seed"] == 3
    assert len(summary["accuracy_per_round"]) == 2
    for name in ("vibration_cnn_float32.onnx", "vibration_cnn_int8.onnx"):
        assert (tmp_path / "out" / name).stat().st_size > 1000


def test_the_script_refuses_bad_options(tmp_path):
    done = subprocess.run([sys.executable, str(RUN_PY), "--devices", "0"],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert done.returncode == 1
    assert "devices must be 1 to 64" in done.stderr
