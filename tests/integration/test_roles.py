"""The gateway and device commands as a user runs them, and a user's own Trainer."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from examples.custom_trainer import SoftmaxRegressionTrainer
from fedge.datasets import load_digits
from tests.integration.fleet import Digits, make_aggregator, make_client, start_all

pytestmark = pytest.mark.integration


def _fedge(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "fedge.cli", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_aggregator_and_devices_from_toml(mosquitto, tmp_path):
    x, y = load_digits()
    for i in range(2):
        np.savez(tmp_path / f"data{i}.npz", x=x[i::2], y=y[i::2])
        (tmp_path / f"device{i}.toml").write_text(
            f'device_id = "dev-{i}"\nfederation = "toml"\nport = {mosquitto.port}\n'
            f'state_dir = "{tmp_path / f"state{i}"}"\n'
            f'[model]\nsizes = [64, 16, 10]\n[data]\npath = "{tmp_path / f"data{i}.npz"}"\n'
            f'[eligibility]\nenabled = false\n')
    np.savez(tmp_path / "heldout.npz", x=x[-300:], y=y[-300:])
    (tmp_path / "aggregator.toml").write_text(
        f'federation = "toml"\nport = {mosquitto.port}\nrounds = 2\n'
        f'db_path = "{tmp_path / "agg.sqlite3"}"\n[model]\nsizes = [64, 16, 10]\n'
        f'[sync]\ntarget_updates = 2\n[evaluation]\ndata = "{tmp_path / "heldout.npz"}"\n')
    procs = [_fedge("aggregator", "serve", "--exit-when-done", "--config",
                    str(tmp_path / "aggregator.toml"))]
    procs += [_fedge("device", "--config", str(tmp_path / f"device{i}.toml"))
              for i in range(2)]
    outputs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], [o[1][-2000:] for o in outputs]
    assert "federation 'toml', sync mode" in outputs[0][1]
    from aggregator.store import Store
    history = Store(tmp_path / "agg.sqlite3").model_history()
    assert [h.version for h in history] == [0, 1, 2]
    assert all(0.0 <= h.accuracy <= 1.0 for h in history[1:])  # scored on the held-out set
    assert all("device_accuracy" in h.metrics for h in history[1:])  # and on the devices' own data


def test_serve_with_the_dashboard_answers_the_api_during_a_federation(mosquitto, tmp_path):
    import json
    import time
    import urllib.request

    from fedge.broker import free_port

    x, y = load_digits()
    np.savez(tmp_path / "data.npz", x=x, y=y)
    port = free_port()
    (tmp_path / "token").write_text("read-secret\n")
    (tmp_path / "aggregator.toml").write_text(
        f'federation = "web"\nport = {mosquitto.port}\nrounds = 0\n'
        f'db_path = "{tmp_path / "agg.sqlite3"}"\n[model]\nsizes = [64, 16, 10]\n'
        f'[sync]\ntarget_updates = 1\n[dashboard]\nenabled = true\nport = {port}\n'
        f'read_token_file = "{tmp_path / "token"}"\n')
    (tmp_path / "device.toml").write_text(
        f'device_id = "dev-0"\nfederation = "web"\nport = {mosquitto.port}\n'
        f'state_dir = "{tmp_path / "state"}"\nexit_when_done = false\n'
        f'[model]\nsizes = [64, 16, 10]\n[data]\npath = "{tmp_path / "data.npz"}"\n'
        f'[eligibility]\nenabled = false\n')
    procs = [_fedge("aggregator", "serve", "--exit-when-done", "--config",
                    str(tmp_path / "aggregator.toml")),
             _fedge("device", "--config", str(tmp_path / "device.toml"))]
    request = urllib.request.Request(f"http://127.0.0.1:{port}/api/overview",
                                     headers={"Authorization": "Bearer read-secret"})
    try:
        deadline, overview = time.monotonic() + 60, {}
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(request, timeout=2) as reply:
                    overview = json.load(reply)
                if (overview.get("model_version") or 0) >= 2:
                    break
            except OSError:
                pass
            time.sleep(0.3)
        assert (overview.get("model_version") or 0) >= 2, overview
    finally:
        for proc in procs:
            proc.terminate()  # SIGTERM: both stop cleanly
        codes = [proc.wait(30) for proc in procs]
    assert codes == [0, 0]


def test_a_bad_config_exits_2_with_the_reason(tmp_path):
    (tmp_path / "a.toml").write_text("rouns = 3\n")
    proc = _fedge("aggregator", "serve", "--exit-when-done", "--config", str(tmp_path / "a.toml"))
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 2 and "unknown key 'rouns'" in err
    assert "'evaluation'" in err and "'model'" in err  # read apart, still listed


def test_a_custom_trainer_federates(mosquitto, tmp_path):
    data = Digits(devices=2)
    trainers = [SoftmaxRegressionTrainer(64, 10) for _ in range(2)]
    agg = make_aggregator(mosquitto, tmp_path, data, rounds=3,
                          initial=trainers[0].get_weights(),
                          arch={"kind": "softmax-regression"})
    clients = [make_client(mosquitto, tmp_path, data, i, trainer=t)
               for i, t in enumerate(trainers)]
    runs = start_all(agg, clients)
    for run in runs:
        run.join(60)
    final = SoftmaxRegressionTrainer(64, 10)
    final.set_weights(agg.global_weights)
    assert final.evaluate(data.x_test, data.y_test)["accuracy"] > 0.8
