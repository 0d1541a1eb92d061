"""benchmarks/fleet.py at a tiny size: it runs end to end, reports every field the sizing
section of docs/gateway.md quotes, and loses nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
FIELDS = ("devices", "invited_per_round", "mode", "payload", "updates_stored_per_s",
          "raw_broker_msgs_per_s", "ingest_ratio", "round_s_median",
          "aggregator_rss_mb_peak", "acked", "stored", "lost", "rejected_stale",
          "task_bytes", "ingest_workers", "loadavg", "updates_per_s_from_task_open",
          "reply_floor_msgs_per_s", "reply_floor_ratio", "aggregator_cpu_ms_per_update")


@pytest.mark.parametrize("flags", [[], ["--sign"]], ids=["plain", "signed"])
def test_a_tiny_fleet_loses_nothing_and_reports_every_field(tmp_path, flags):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "benchmarks.fleet", "--devices", "20",
                           "--invited", "10", "--rounds", "1", "--raw-updates", "200",
                           "--time-limit-s", "60", "--keep", str(tmp_path), *flags],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout)
    assert [f for f in FIELDS if f not in result] == []
    assert (result["devices"], result["invited_per_round"]) == (20, 10)
    assert (result["mode"], result["payload"]) == ("sync", "compressed")
    assert result["signed"] == bool(flags)
    assert result["connected"] == 20
    assert result["versions_made"] == 1
    assert result["lost"] == 0
    assert result["acked"] >= 10
    assert result["stored"] == result["acked"]
    assert result["updates_stored_per_s"] > 0 and result["raw_broker_msgs_per_s"] > 0
    assert result["aggregator_rss_mb_peak"] > 0
    assert result["reply_floor_msgs_per_s"] > 0 and result["aggregator_cpu_ms_per_update"] > 0
    # the burst window is inside the window from the task's opening
    assert result["updates_stored_per_s"] >= result["updates_per_s_from_task_open"]
    assert result["task_bytes"] > 0
