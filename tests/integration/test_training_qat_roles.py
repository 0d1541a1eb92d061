"""A QAT 1D-CNN federated by `fedge aggregator serve` and `fedge device` over mosquitto.

The real path of [model] kind = "sequential" with qat = true: TOML configs, (samples,
length, channels) .npz data, activation ranges averaged into the stored global model.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from edge_client.shared.protocol.messages import Model, decode
from edge_client.training import NumpyTrainer, build_model
from tests.integration.sine_windows import sine_windows

pytestmark = pytest.mark.integration

MODEL_TOML = """[model]
kind = "sequential"
input_shape = [32, 2]
qat = true
layers = [
  {type = "conv1d", filters = 4, kernel = 5, stride = 2}, {type = "relu"},
  {type = "maxpool1d", size = 2}, {type = "flatten"}, {type = "dense", units = 2},
]
"""
ARCH = {"kind": "sequential", "input_shape": [32, 2], "qat": True, "layers": [
    {"type": "conv1d", "filters": 4, "kernel": 5, "stride": 2}, {"type": "relu"},
    {"type": "maxpool1d", "size": 2}, {"type": "flatten"}, {"type": "dense", "units": 2}]}


def _fedge(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "fedge.cli", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_a_qat_1d_cnn_federates_from_toml(mosquitto, tmp_path):
    for i in range(2):
        x, y = sine_windows(300, seed=i)
        np.savez(tmp_path / f"data{i}.npz", x=x, y=y)
        (tmp_path / f"device{i}.toml").write_text(
            f'device_id = "dev-{i}"\nfederation = "qat"\nport = {mosquitto.port}\n'
            f'state_dir = "{tmp_path / f"state{i}"}"\n{MODEL_TOML}'
            f'[data]\npath = "{tmp_path / f"data{i}.npz"}"\n[eligibility]\nenabled = false\n')
    x_test, y_test = sine_windows(300, seed=9)
    np.savez(tmp_path / "heldout.npz", x=x_test, y=y_test)
    (tmp_path / "aggregator.toml").write_text(
        f'federation = "qat"\nport = {mosquitto.port}\nrounds = 3\n'
        f'db_path = "{tmp_path / "agg.sqlite3"}"\n{MODEL_TOML}'
        f'[train]\nepochs = 2\nlr = 0.05\nmomentum = 0.5\n'
        f'[sync]\ntarget_updates = 2\n[evaluation]\ndata = "{tmp_path / "heldout.npz"}"\n')
    procs = [_fedge("aggregator", "serve", "--exit-when-done", "--config",
                    str(tmp_path / "aggregator.toml"))]
    procs += [_fedge("device", "--config", str(tmp_path / f"device{i}.toml"))
              for i in range(2)]
    outputs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], [o[1][-2000:] for o in outputs]

    from aggregator.store import Store
    store = Store(tmp_path / "agg.sqlite3")
    history = store.model_history()
    assert [h.version for h in history] == [0, 1, 2, 3]
    latest = decode(store.latest_model().blob, expect=Model)
    assert latest.arch == ARCH
    ranges = {k: v for k, v in latest.tensors.items() if k.endswith(".range")}
    assert sorted(ranges) == ["aq0.range", "aq1.range", "aq2.range"]
    assert all(r[0] < r[1] for r in ranges.values())  # seen by devices, averaged, stored
    # After the fused ReLU every device sees min 0; the lossy update codec may add a sliver.
    assert abs(ranges["aq1.range"][0]) < 0.01 * ranges["aq1.range"][1]
    scorer = NumpyTrainer(build_model(ARCH))
    scorer.set_weights(latest.tensors)
    accuracy = scorer.evaluate(x_test, y_test)["accuracy"]
    assert accuracy == pytest.approx(history[-1].accuracy)  # the gateway's own score
    assert accuracy > 0.8
