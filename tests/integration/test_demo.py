"""`fedge demo` as a user runs it: a subprocess, its JSON summary on the last line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
REQUIRED = {"final_accuracy", "rounds", "model_versions", "devices", "bytes_up", "bytes_down",
            "wall_s", "round_wall_s_median", "train_s_median", "broker", "mode"}


def _demo(*args: str, tmp_path) -> dict:
    done = subprocess.run(
        [sys.executable, "-m", "fedge.cli", "demo", "--json", "--workdir", str(tmp_path),
         *args], capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary.keys() >= REQUIRED
    assert "[" in done.stderr and "final accuracy" in done.stderr  # progress bar and summary
    return summary


DENSE_UPDATE = 99_985 * 4  # bytes of one float32 update of the demo's MLP


def test_demo_sync_on_mosquitto_compresses_both_ways(tmp_path):
    s = _demo("--devices", "3", "--rounds", "3", "--broker", "mosquitto", tmp_path=tmp_path)
    assert (s["broker"], s["mode"], s["devices"], s["model_versions"]) == (
        "mosquitto", "sync", 3, 3)
    assert s["final_accuracy"] > 0.85
    assert s["uplink_codec"].startswith("topk") and s["uplink_compression"] > 100
    assert s["update_bytes"] < 9 * DENSE_UPDATE / 100  # 9 updates, each >100x smaller
    # Version 0 comes whole; versions 1-3 reach each device as q8 deltas, rebuilt bit for
    # bit (a mismatch would make the device fetch the full model instead).
    assert s["models_via_delta"] == 3 * 3
    assert s["bytes_down"] < 3 * (DENSE_UPDATE + 3 * DENSE_UPDATE / 3.5)


def test_demo_dense_sends_float32_both_ways(tmp_path):
    s = _demo("--devices", "3", "--rounds", "2", "--uplink", "dense", "--downlink", "full",
              tmp_path=tmp_path)
    assert s["uplink_codec"] == "dense-f32" and s["models_via_delta"] == 0
    assert s["bytes_up"] > 6 * DENSE_UPDATE  # 2 rounds x 3 devices of float32 deltas
    assert s["bytes_down"] >= 3 * 3 * DENSE_UPDATE  # 3 versions to 3 devices


def test_demo_async_on_the_embedded_broker(tmp_path):
    s = _demo("--devices", "3", "--rounds", "2", "--mode", "async", "--buffer-size", "2",
              "--broker", "embedded", tmp_path=tmp_path)
    assert (s["broker"], s["mode"], s["model_versions"]) == ("embedded", "async", 3)
    assert s["final_accuracy"] > 0.7


def test_demo_reports_bad_arguments_clearly(tmp_path):
    done = subprocess.run([sys.executable, "-m", "fedge.cli", "demo", "--devices", "0"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode != 0 and "devices" in done.stderr


def test_demo_secure_runs_over_tls_with_acls_and_signatures(tmp_path):
    s = _demo("--devices", "2", "--rounds", "2", "--secure", tmp_path=tmp_path)
    assert s["secure"] is True and s["broker"] == "mosquitto"
    assert s["model_versions"] == 2 and s["rejected_updates"] == 0
    conf = Path(s["broker_config"]).read_text()
    assert "allow_anonymous false" in conf and "certfile" in conf and "acl_file" in conf
