"""`fedge demo` as a user runs it: a subprocess, its JSON summary on the last line."""

from __future__ import annotations

import json
import subprocess
import sys

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


def test_demo_sync_on_mosquitto(tmp_path):
    s = _demo("--devices", "3", "--rounds", "3", "--broker", "mosquitto", tmp_path=tmp_path)
    assert (s["broker"], s["mode"], s["devices"], s["model_versions"]) == (
        "mosquitto", "sync", 3, 3)
    assert s["final_accuracy"] > 0.85
    # 3 rounds x 3 devices x ~400 KB of float32 deltas went up
    assert s["bytes_up"] > 9 * 99_985 * 4
    assert s["bytes_down"] >= 4 * 3 * 99_985 * 4 * 0.99  # 4 versions to 3 devices


def test_demo_async_on_the_embedded_broker(tmp_path):
    s = _demo("--devices", "3", "--rounds", "2", "--mode", "async", "--buffer-size", "2",
              "--broker", "embedded", tmp_path=tmp_path)
    assert (s["broker"], s["mode"], s["model_versions"]) == ("embedded", "async", 3)
    assert s["final_accuracy"] > 0.7


def test_demo_reports_bad_arguments_clearly(tmp_path):
    done = subprocess.run([sys.executable, "-m", "fedge.cli", "demo", "--devices", "0"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode != 0 and "devices" in done.stderr
