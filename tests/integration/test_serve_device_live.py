"""`fedge device` with [serve] through the real mosquitto (docs/configuration.md, [serve]):
the device serves the production model to a watch folder of .npy batches, and the drift
of those inputs against its training inputs reaches the aggregator's /api/drift."""

from __future__ import annotations

import time

import numpy as np
import pytest

from fedge.datasets import load_digits
from fedge.demo_drift import shifted
from tests.integration.fedge_process import LoggedFedge

pytestmark = pytest.mark.integration


def _drift_rows(db) -> dict[str, dict]:
    from aggregator.web import create_app

    try:
        body = create_app(db, None, None).test_client().get("/api/drift").get_json()
    except Exception:  # the gateway is still creating its store
        return {}
    return {row["device_id"]: row for row in (body or {}).get("devices", [])}


def test_a_cli_device_serves_its_watch_folder_and_reports_drift(mosquitto, tmp_path):
    x, y = load_digits()
    np.savez(tmp_path / "data.npz", x=x[::2], y=y[::2])
    watch = tmp_path / "inputs"
    (tmp_path / "aggregator.toml").write_text(
        f'federation = "serve"\nport = {mosquitto.port}\nrounds = 2\n'
        f'db_path = "{tmp_path / "agg.sqlite3"}"\n[model]\nsizes = [64, 16, 10]\n'
        f'[sync]\ntarget_updates = 1\n')
    (tmp_path / "device.toml").write_text(
        f'device_id = "cam-1"\nfederation = "serve"\nport = {mosquitto.port}\n'
        f'state_dir = "{tmp_path / "state"}"\nexit_when_done = false\n'
        f'[model]\nsizes = [64, 16, 10]\n[data]\npath = "{tmp_path / "data.npz"}"\n'
        f'[eligibility]\nenabled = false\n'
        f'[serve]\nenabled = true\nruntime = "numpy"\nwatch = "{watch}"\npoll_s = 0.1\n')
    aggregator = LoggedFedge("aggregator", "serve", "--config", str(tmp_path / "aggregator.toml"))
    device = LoggedFedge("device", "--config", str(tmp_path / "device.toml"))
    try:
        device.wait_for("[serve] serves each production model with the numpy runtime", 30)
        aggregator.wait_for("federation 'serve'", 30)
        device.wait_for("serve: now serving version 2 (numpy); was version 1", 90)
        held_out = x[1::2]
        for i in range(3):  # another process drops batches: the changed sensor's inputs
            tmp = watch / f".batch{i}.npy"  # a dot name is not read: rename it when written
            np.save(tmp, shifted(held_out[i * 200:(i + 1) * 200]))
            tmp.rename(watch / f"batch{i}.npy")
        device.wait_for("batch2.npy: 200 inputs predicted by version 2", 30)
        for i in range(3):
            predicted = np.load(watch / f"batch{i}.pred.npy")
            assert predicted.shape == (200,) and 0 <= predicted.min() <= predicted.max() < 10
        deadline, rows = time.monotonic() + 60, {}
        while time.monotonic() < deadline:
            rows = _drift_rows(tmp_path / "agg.sqlite3")
            if (rows.get("cam-1") or {}).get("psi_max") is not None:
                break
            time.sleep(0.5)
        row = rows.get("cam-1")
        assert row is not None and row["psi_max"] is not None, (rows, device.text[-3000:])
        assert row["psi_max"] > 0.25 and row["seen"] >= 200
    finally:
        codes = [device.stop(), aggregator.stop()]
    assert codes == [0, 0], device.text[-3000:]
    assert "Traceback" not in device.text + aggregator.text
